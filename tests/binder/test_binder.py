"""The Binder image: repo2docker picks what ``binder/`` means, and what the image would do
works when replayed here.

There is no Docker engine here, so the image is checked in two halves:

* ``jupyter-repo2docker --no-build`` (the real tool) prints the Dockerfile it would build:
  the Python build pack with Python 3.11 from ``runtime.txt``, the pinned
  ``requirements.txt`` installed, ``postBuild`` run and ``start`` as the entrypoint;
* the replay does what that Dockerfile does, from ``binder/``'s files only: a fresh venv
  of that Python, ``pip install -r binder/requirements.txt``, ``postBuild``, then
  ``start`` running every example (and teaching) notebook with nbclient under a 2 GB
  memory limit, as mybinder.org gives (a memory cgroup where this machine lets us make
  one, else an address-space limit per process), and ``jupyter labextension list``
  showing the panel enabled.

And ``requirements.txt`` is checked against its sources: every dependency
``pyproject.toml`` and ``requirements.in`` name is pinned at a version they allow (kind:
a pin file that fell behind the project).
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from panda_lab.text import strip_ansi

ROOT = Path(__file__).resolve().parents[2]
BINDER = ROOT / "binder"
LIMIT = 2 * 2**30  # mybinder.org's most


def pins() -> dict[str, str]:
    out = {}
    for line in (BINDER / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and re.fullmatch(r"[\w.+!-]+", version), f"not pinned: {line!r}"
            out[canonicalize_name(name)] = version
    return out


def test_requirements_txt_pins_everything_the_project_and_the_base_ask_for():
    pinned = pins()
    assert "panda-lab" not in pinned  # postBuild installs it from the checkout
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = [*project["dependencies"], *extras["lab"], *extras["notebook"]]
    for line in (BINDER / "requirements.in").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("."):
            wanted.append(line)
    for text in wanted:
        req = Requirement(text)
        if req.name == "panda-lab":
            continue
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req} is not pinned in binder/requirements.txt: " \
                               "run scripts/binder-lock"
        assert req.specifier.contains(pinned[name], prereleases=True), \
            f"binder/requirements.txt pins {name}=={pinned[name]}, outside {req}: " \
            "run scripts/binder-lock"


def test_repo2docker_picks_the_python_build_pack_and_binder_files():
    assert not (ROOT / ".binder").exists(), "binder/ and .binder/ together are an error"
    r2d = Path(sys.executable).with_name("jupyter-repo2docker")
    r = subprocess.run([str(r2d), "--no-build", "--debug", "--user-id", "1000",
                        "--user-name", "jovyan", str(ROOT)],
                       capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "Building conda environment for python=3.11" in out
    assert 'pip install --no-cache-dir -r "binder/requirements.txt"' in out
    assert "RUN ./binder/postBuild" in out
    assert 'ENV R2D_ENTRYPOINT="${REPO_DIR}/binder/start"' in out
    # nothing else: no conda environment.yml, no Dockerfile, no install of the root's
    # pyproject before postBuild (it would pull unpinned dependencies)
    assert "environment.yml" not in out and "pip install --no-cache-dir ." not in out
    assert (BINDER / "start").read_text().rstrip().endswith('exec "$@"')
    for name in ("postBuild", "start"):
        assert os.access(BINDER / name, os.X_OK), f"binder/{name} is not executable"


# ---- the replay --------------------------------------------------------------------------------

class MemoryLimit:
    """A memory cgroup of ``limit`` bytes made under this process's own (v2, then v1);
    where none can be made, an address-space limit on each process (weaker: per process,
    and on virtual memory).  ``enter`` is a ``preexec_fn``; ``report`` gives the kind,
    the peak and whether the kernel killed anything for memory."""

    def __init__(self, limit: int, name: str) -> None:
        self.limit, self.path, self.kind = limit, None, "rlimit-as"
        own = {}
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctl, path = line.split(":", 2)
            for c in ctl.split(",") if ctl else [""]:
                own[c] = path
        base = Path("/sys/fs/cgroup")
        for kind, parent, limit_file in (
                ("cgroup-v2", base / own.get("", "/").lstrip("/"), "memory.max"),
                ("cgroup-v1", base / "memory" / own.get("memory", "/").lstrip("/"),
                 "memory.limit_in_bytes")):
            if kind == "cgroup-v2" and not (base / "cgroup.controllers").exists():
                continue
            try:
                path = parent / name
                path.mkdir()
            except OSError:
                continue
            try:
                (path / limit_file).write_text(str(limit))
                if kind == "cgroup-v1":
                    (path / "memory.swappiness").write_text("0")
            except OSError:
                path.rmdir()
                continue
            self.path, self.kind = path, kind
            break

    def enter(self) -> None:
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))
        else:
            resource.setrlimit(resource.RLIMIT_AS, (self.limit, self.limit))

    def report(self) -> dict:
        if self.path is None:
            return {"kind": self.kind}
        if self.kind == "cgroup-v2":
            peak = (self.path / "memory.peak").read_text() if (
                self.path / "memory.peak").exists() else "0"
            events = (self.path / "memory.events").read_text()
        else:
            peak = (self.path / "memory.max_usage_in_bytes").read_text()
            events = (self.path / "memory.oom_control").read_text()
        kills = re.search(r"oom_kill (\d+)", events)
        return {"kind": self.kind, "peak": int(peak), "oom_kills": int(kills.group(1))
                if kills else None}

    def close(self) -> None:
        """End what is left in the cgroup (the processes the replay started) and remove it."""
        if self.path is None:
            return
        for _ in range(50):
            pids = [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        try:
            self.path.rmdir()
        except OSError:
            pass


def _copy_checkout(dest: Path) -> None:
    """The checkout's files as a clone would have them (tracked and new, not ignored),
    and the panel as this checkout built it when it is there and current (hatch_build.py
    then skips ``npm install`` and the build: the panel's build has its own tests, and
    npm is what made the replay slow); else the panel's ``node_modules`` linked, as a
    warm npm cache would be."""
    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    built = ROOT / "panda_lab" / "labextension"
    sources = [p for p in (ROOT / "extension").glob("src/**/*") if p.is_file()]
    if (built / "package.json").is_file() and all(
            p.stat().st_mtime <= (built / "package.json").stat().st_mtime for p in sources):
        shutil.copytree(built, dest / "panda_lab" / "labextension")
    elif (ROOT / "extension" / "node_modules").is_dir():
        (dest / "extension" / "node_modules").symlink_to(ROOT / "extension" / "node_modules")


def _clean_env(venv: Path, tmp: Path) -> dict[str, str]:
    """This machine's environment without the test venv, panda-lab's or Jupyter's
    settings: the image's venv first on PATH, Jupyter's user dirs empty."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PANDA_LAB_", "JUPYTER", "VIRTUAL_ENV", "PYTHON", "OMP_",
                                "DASK_"))}
    path = [p for p in env.get("PATH", "").split(os.pathsep)
            if p and not Path(p).parent.joinpath("pyvenv.cfg").exists()]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *path])
    for var, sub in (("PANDA_LAB_HOME", "panda-home"), ("JUPYTER_CONFIG_DIR", "jconfig"),
                     ("JUPYTER_DATA_DIR", "jdata"), ("JUPYTER_RUNTIME_DIR", "jruntime"),
                     ("IPYTHONDIR", "ipython"), ("MPLCONFIGDIR", "mpl")):
        env[var] = str(tmp / sub)
    return env


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float, **kw) -> float:
    t = time.monotonic()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout, **kw)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{(r.stdout + r.stderr)[-4000:]}"
    return time.monotonic() - t


#: Where CI may keep the replay's venv between runs (opt-in): one per requirements.txt.
VENV_CACHE = "PANDA_LAB_BINDER_VENV_CACHE"


def _venv_place(tmp: Path, version: str) -> tuple[Path, bool]:
    """The image's venv: a new one in ``tmp``, or with ``$PANDA_LAB_BINDER_VENV_CACHE``
    set, the one kept there for this exact requirements.txt and Python (``True``: it
    exists already and only postBuild runs again)."""
    base = os.environ.get(VENV_CACHE)
    if not base:
        return tmp / "image", False
    import hashlib

    text = (BINDER / "requirements.txt").read_text()
    key = hashlib.sha256(f"{version}\n{text}".encode()).hexdigest()[:16]
    venv = Path(base) / f"binder-{key}"
    return venv, (venv / "requirements.txt").is_file() and \
        (venv / "requirements.txt").read_text() == text


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_replay_of_the_binder_image(tmp_path):
    version = (BINDER / "runtime.txt").read_text().strip().removeprefix("python-")
    python = shutil.which(f"python{version}")
    assert python, f"binder/runtime.txt asks for Python {version}: python{version} is not here"
    repo = tmp_path / "repo"
    _copy_checkout(repo)
    venv, cached = _venv_place(tmp_path, version)
    times: dict[str, float] = {}
    t = time.monotonic()
    env = _clean_env(venv, tmp_path)
    if not cached:
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        # --no-compile: bytecode is written on first import anyway; compiling 140
        # packages up front was most of this step's time
        _run([str(venv / "bin/pip"), "install", "-q", "--no-compile", "-r",
              "binder/requirements.txt"], repo, env, 900)
        (venv / "requirements.txt").write_text((BINDER / "requirements.txt").read_text())
    times["venv and pip install -r binder/requirements.txt"
          + (" (cached)" if cached else "")] = time.monotonic() - t
    times["postBuild"] = _run(["binder/postBuild"], repo, env, 600)
    assert len(list((repo / "example_notebooks" / "data").glob("dimuon_*.root"))) == 4
    opened = json.loads((venv / "etc/jupyter/jupyter_server_config.d/panda-lab-binder.json")
                        .read_text())["ServerApp"]["default_url"]
    assert opened == "/lab/tree/example_notebooks/01-quickstart.ipynb"
    assert (repo / opened.removeprefix("/lab/tree/")).is_file()

    limit = MemoryLimit(LIMIT, f"panda-lab-replay-{os.getpid()}")
    out = tmp_path / "replay.json"
    try:
        times["start + notebooks"] = _run(
            ["binder/start", "python", "tests/binder/run_notebooks.py", str(out)], repo, env,
            900, preexec_fn=limit.enter)
        memory = limit.report()
    finally:
        limit.close()
    result = json.loads(out.read_text())
    print(f"\nbinder replay ({memory}): " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
          + "; " + ", ".join(f"{n['notebook']} {n['seconds']} s" for n in result["notebooks"]))

    ran = [n["notebook"] for n in result["notebooks"]]
    assert "example_notebooks/01-quickstart.ipynb" in ran and len(ran) >= 4
    failed = [n for n in result["notebooks"] if n["error"]]
    assert not failed, failed
    listing = strip_ansi(result["labextension_list"])
    assert re.search(r"panda-lab v[\d.]+ enabled\s+OK", listing), listing
    assert result["omp_num_threads"] == str(max(1, math.floor(result["resources"]["cpus"] + .5)))
    if memory["kind"].startswith("cgroup"):
        # the embedded server saw the container's limit, not the host's
        assert result["resources"]["memory"] == LIMIT, result["resources"]
        assert memory["oom_kills"] in (0, None) and memory["peak"] < LIMIT, memory
    assert sorted(s["name"] for s in result["sites"]) == ["LOCAL-CLOUD", "LOCAL-GRID",
                                                          "LOCAL-HPC"]
