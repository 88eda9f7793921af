"""The site keys as the provisioners declare them: the registry, the errors that name the
site and the key, the README's table and example, and the layering (provisioners never
import the server) and thread rule (the server's callbacks run on the event loop).

A fault here lets a typo in ``sites.toml`` silently mean "default", documents keys that do
not exist, or reads the store from a provisioner's thread.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from panda_lab.model.scaling import Mode, ScalingPolicy
from panda_lab.provisioners import (
    DaskProvisioner,
    GatewayProvisioner,
    LocalProvisioner,
    Provisioner,
    SlurmProvisioner,
    make_provisioner,
)
from panda_lab.provisioners.base import PilotSpec
from panda_lab.provisioners.config import (
    TABLE_HEADER,
    ConfigError,
    DaskSite,
    GatewaySite,
    LocalSite,
    ManualSite,
    SiteConfig,
    SlurmSite,
    keys_table,
    kinds,
    parse_sites,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def site(body: dict, name: str = "UNI-HPC") -> SiteConfig:
    return parse_sites({"sites": {name: body}})[0]


def test_the_registry_names_each_provisioner_with_its_keys_and_class():
    expected = {"local": (LocalSite, LocalProvisioner), "slurm": (SlurmSite, SlurmProvisioner),
                "dask": (DaskSite, DaskProvisioner),
                "gateway": (GatewaySite, GatewayProvisioner), "none": (ManualSite, None)}
    assert {k: (v.settings, v.make) for k, v in kinds().items()} == expected


def test_make_provisioner_builds_the_class_the_registry_names(tmp_path):
    bodies = {"local": {"pilots": 2}, "slurm": {"max_jobs": 2},
              "dask": {"scheduler": "tcp://x:1"}, "gateway": {"address": "http://gw"}}
    for prov, body in bodies.items():
        spec = PilotSpec("http://server", "token", site({"provisioner": prov, **body}))
        made = make_provisioner(spec, tmp_path, [])
        assert type(made) is kinds()[prov].make, prov
    manual = PilotSpec("http://server", "token", site({"provisioner": "none"}))
    assert make_provisioner(manual, tmp_path, []) is None
    idle = PilotSpec("http://server", "token", site({"pilots": 0}))
    assert make_provisioner(idle, tmp_path, []) is None


def test_defaults_come_from_the_models():
    hpc = site({"provisioner": "slurm"})
    assert isinstance(hpc.settings, SlurmSite)
    assert (hpc.pilots, hpc.settings.min_jobs, hpc.settings.idle_exit) == (1, 0, 60.0)
    assert hpc.extra == {}  # only what the file gave is shown as the site's settings
    cloud = site({"provisioner": "gateway", "address": "http://gw"})
    assert cloud.pilots == 4 and cloud.settings.timeout == 30.0


@pytest.mark.parametrize(("body", "words"), [
    ({"provisioner": "slurm", "max_jobs": "4"}, ["max_jobs = '4' must be of type int"]),
    ({"provisioner": "slurm", "max_jobs": True}, ["max_jobs = True must be of type int"]),
    ({"provisioner": "slurm", "idle_exit": "1m"}, ["idle_exit", "int or float"]),
    ({"provisioner": "slurm", "extra_directives": ["--qos=a", 3]},
     ["extra_directives[1] = 3 must be of type str"]),
    ({"provisioner": "slurm", "walltime": "ten minutes"}, ["walltime 'ten minutes'"]),
    ({"provisioner": "slurm", "jobs_per_pilot": 0}, ["jobs_per_pilot = 0 must be at least 1"]),
    ({"provisioner": "gateway", "address": "http://gw", "timeout": 0},
     ["timeout = 0 must be more than 0"]),
    ({"kind": "moon"}, ["kind = 'moon'", "grid", "hpc"]),
    ({"slots": 0}, ["slots = 0 must be at least 1"]),
    ({"provisioner": "local", "queue": "debug"}, ["unknown key 'queue'", "'local'", "slots"]),
])
def test_a_wrong_key_names_the_site_and_the_key(body, words):
    with pytest.raises(ConfigError) as err:
        site(body)
    message = str(err.value)
    assert "[sites.UNI-HPC]" in message
    for word in words:
        assert word in message, message


# ---- the README --------------------------------------------------------------------------

def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def readme_table(text: str) -> list[list[str]] | None:
    """The README's table of site keys, as cells, from its header to its last row."""
    lines = text.splitlines()
    header = _cells(TABLE_HEADER)
    for i, line in enumerate(lines):
        if line.lstrip().startswith("|") and _cells(line) == header:
            rows = []
            for row in lines[i:]:
                if not row.lstrip().startswith("|"):
                    break
                rows.append(_cells(row))
            return rows
    return None


def test_the_readme_table_of_site_keys_is_the_models():
    """Cell by cell (padding and separator dashes aside), so a regenerated table pasted
    into the README passes, and a key added to a model without the README fails."""
    want = readme_table(keys_table())
    got = readme_table(README.read_text())
    assert got is not None, ("README.md has no table of site keys; paste this under the "
                             "sites.toml example:\n" + keys_table())
    same_rule = [re.sub(r"-+", "-", c) for c in got[1]] == [re.sub(r"-+", "-", c)
                                                             for c in want[1]]
    assert same_rule and got[:1] + got[2:] == want[:1] + want[2:], (
        "README.md's table of site keys differs from the models; replace it with:\n"
        + keys_table())


def test_the_readme_sites_toml_example_is_a_valid_site_file():
    import tomllib

    text = README.read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    examples = [b for b in blocks if "[sites." in b]
    assert examples, "README.md has no sites.toml example"
    for block in examples:
        sites = parse_sites(tomllib.loads(block), "README.md")
        assert sites and all(s.settings is not None for s in sites)


# ---- layering and the thread rule ------------------------------------------------------------

def test_provisioners_do_not_import_the_server():
    code = ("import sys, panda_lab.provisioners, panda_lab.provisioners.config; "
            "print(sorted(m for m in sys.modules if m.startswith('panda_lab.server')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"


class _Recorder(Provisioner):
    """A provisioner whose pilots are integers; it notes the thread of every call."""

    polling_interval = 0.01

    def __init__(self, spec: PilotSpec) -> None:
        super().__init__(spec)
        self.policy = ScalingPolicy(Mode.QUEUE, 0, spec.site.pilots)  # reads its queue
        self.threads: dict[str, set[int]] = {}
        self.fail = True

    def _note(self, what: str) -> None:
        self.threads.setdefault(what, set()).add(threading.get_ident())

    def submit(self, n: int) -> list:
        self._note("submit")
        return list(range(n))

    def status(self, handles: list) -> list[bool]:
        self._note("status")
        if self.fail:
            self.fail = False
            from panda_lab.provisioners.base import ProvisionerError

            raise ProvisionerError("refused once")
        return [True] * len(handles)

    def cancel(self, handles: list) -> None:
        self._note("cancel")


def test_the_servers_callbacks_run_on_the_event_loop_and_the_pilots_on_threads():
    spec = PilotSpec("http://server", "token", site({"pilots": 2}))
    prov = _Recorder(spec)
    health: list[tuple[str, str, int]] = []
    prov.on_health = lambda name, state, _reason: health.append(
        (name, str(state), threading.get_ident()))
    prov.demand = lambda: prov._note("demand") or 2  # two jobs queued: two pilots

    async def run() -> int:
        task = asyncio.create_task(prov.keep_alive())
        while len(health) < 2 or not prov.handles:
            await asyncio.sleep(0.01)
        await prov.stop(timeout=0.1)
        await task
        return threading.get_ident()

    loop_thread = asyncio.run(run())
    assert [(n, s) for n, s, _ in health] == [("UNI-HPC", "offline"), ("UNI-HPC", "online")]
    assert {t for _, _, t in health} == {loop_thread}
    assert prov.threads["demand"] == {loop_thread}
    assert loop_thread not in prov.threads["submit"] | prov.threads["status"]


def test_only_a_site_that_follows_its_queue_reads_its_demand():
    """The demand is a store query each look: a fixed site (local pilots) never pays it,
    a site scaled by its queue reads it at every look."""
    spec = PilotSpec("http://server", "token", site({"pilots": 2}))
    fixed, queued = _Recorder(spec), _Recorder(spec)
    fixed.policy = ScalingPolicy(Mode.FIXED, 0, 2)
    reads: list[str] = []
    fixed.demand = lambda: reads.append("fixed") or 5
    queued.demand = lambda: reads.append("queued") or 5
    assert fixed.refresh_demand() is None and fixed.snapshot().demand is None
    assert queued.refresh_demand() == 5 and queued.snapshot().demand == 5
    assert reads == ["queued"]
