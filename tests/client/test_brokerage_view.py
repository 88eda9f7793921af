"""What a user sees of brokerage and the network: ``task.brokerage()`` (one row per job
and candidate), ``task.job(i).brokerage`` (one sentence), the task's filter summary,
``lab.links()`` and ``panda-lab links``; and links learned from a real analysis's reads.

The kind of fault: a decision the user cannot see whole (a candidate missing, a factor
lost on the way, a link shown without what it rests on).  One server for the module:
sites A (endpoint ``disk-a``) and B, a declared link, one analysis reading over HTTP.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from harness import RangeFileServer, ServerProcess

from panda_lab.analysis.sample import make_sample
from panda_lab.client.brokerage import BROKERAGE_COLUMNS

SITES = """
[endpoints.disk-a]
[[links]]
endpoint = "disk-a"
site = "B"
throughput = 25.0
latency = 4.0

[sites.A]
provisioner = "local"
pilots = 1
endpoint = "disk-a"

[sites.B]
provisioner = "local"
pilots = 1
"""


def square(x):
    return x * x


def count(events):
    return {"n": len(events)}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("view")
    (tmp / "sites.toml").write_text(SITES)
    home = tmp / "home"
    home.mkdir()
    server = ServerProcess(home, extra=["--sites", str(tmp / "sites.toml")]).start()
    yield server, tmp
    server.stop()


def test_a_tasks_decisions_as_a_table_and_in_words(served):
    server, _ = served
    lab = server.lab()
    task = lab.task(lab.submit(square, [(i,) for i in range(4)], name="pinned", site="B"))
    task.wait(timeout=60)
    rows = task.brokerage()
    assert list(rows.columns) == BROKERAGE_COLUMNS
    assert len(rows) == 4 * 2                                  # every job, every candidate
    a, b = rows[rows["site"] == "A"], rows[rows["site"] == "B"]
    assert (~a["passed"]).all() and set(a["filter"]) == {"task"}
    assert b["passed"].all() and b["picked"].all() and (b["weight"] > 0).all()
    assert b[["free", "speed", "reliability", "total_s"]].notna().all().all()
    assert task.info()["brokerage"] == {"task": 4}             # JEDI's task diagnostics
    job = task.job(2)
    assert job.site == "B" and job.brokerage.startswith("sent to B")
    assert "not accepted by the task: A" in job.brokerage
    with pytest.raises(KeyError, match="no job 9"):
        task.job(9)


def test_links_declared_then_learned_from_an_analysis_over_http(served):
    server, tmp = served
    lab = server.lab()
    declared = lab.links().loc[("disk-a", "B")]
    assert (declared["source"], declared["mbps"], declared["latency_ms"]) == \
        ("declared", 25.0, 4.0)
    data = make_sample(tmp / "data", files=1, events=4_000, basket_events=2_000,
                       compression=None)
    web = RangeFileServer(data[0].parent)
    try:
        ds = lab.datasets.register("over-http", [f"{web.url}/{data[0].name}"],
                                   endpoint="disk-a")
        task = lab.analyze(count, ds, events_per_job=2_000, columns=["nMuon"], site="A")
        assert task.result(timeout=120)["n"] == 4_000
    finally:
        web.stop()
    learned = lab.links().loc[("disk-a", "A")]
    assert learned["source"] == "learned" and learned["observations"] == 2
    assert learned["bytes"] > 2 * 2_000 * 4 and learned["mbps"] > 0
    assert learned["age_s"] >= 0
    job = lab.task(task.id).brokerage()
    assert set(job["site"]) == {"A", "B"}


def test_panda_lab_links_on_the_command_line(served):
    server, _ = served
    env = {"PANDA_LAB_HOME": str(server.home), "PATH": "", "COLUMNS": "200"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "panda_lab.cli.main", "links", *args],
                              capture_output=True, text=True, env=env, timeout=60)

    plain = cli()
    assert plain.returncode == 0, plain.stderr
    assert "disk-a" in plain.stdout and "declared" in plain.stdout
    rows = json.loads(cli("--json").stdout)
    assert {(r["endpoint"], r["site"]) for r in rows} >= {("disk-a", "B")}
