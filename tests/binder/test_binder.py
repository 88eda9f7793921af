"""The Binder image: repo2docker picks what ``binder/`` means, and what the image would do
works when replayed here.

There is no Docker engine here, so the image is checked in two halves:

* ``jupyter-repo2docker --no-build`` (the real tool) prints the Dockerfile it would build:
  the Python build pack with Python 3.11 from ``runtime.txt``, the pinned
  ``requirements.txt`` installed, ``postBuild`` run and ``start`` as the entrypoint;
* the replay does what that Dockerfile does, from ``binder/``'s files only: a fresh venv
  of that Python, ``pip install -r binder/requirements.txt``, ``postBuild``
  (``tests/binder_image.py``, built once per session: the notebook tests run their
  kernels with the same image), then ``start`` running, under a 2 GB memory limit as
  mybinder.org gives (a memory cgroup where this machine lets us make one, else an
  address-space limit per process: ``tests/memlimit.py``), what a notebook's first cell
  does (the embedded server, sized to the limit) and ``jupyter labextension list``
  showing the panel enabled.  Every example and teaching notebook runs in this image,
  its kernel started through ``start`` with the image's Python, under the same 2 GB, in
  ``tests/notebooks``, once: running them here too only made the replay slow.

And ``requirements.txt`` is checked against its sources: every dependency
``pyproject.toml`` and ``requirements.in`` name is pinned at a version they allow (kind:
a pin file that fell behind the project).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from binder_image import BINDER, ROOT, run
from memlimit import LIMIT, MemoryLimit
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from panda_lab.text import strip_ansi


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

@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_replay_of_the_binder_image(binder_image, tmp_path):
    image = binder_image
    t = time.monotonic()
    repo, times = image.repo, dict(image.times)
    assert len(list((repo / "example_notebooks" / "data").glob("dimuon_*.root"))) == 4
    opened = json.loads((image.venv / "etc/jupyter/jupyter_server_config.d/"
                         "panda-lab-binder.json").read_text())["ServerApp"]["default_url"]
    assert opened == "/lab/tree/example_notebooks/01-quickstart.ipynb"
    assert (repo / opened.removeprefix("/lab/tree/")).is_file()

    limit = MemoryLimit(LIMIT, f"panda-lab-replay-{os.getpid()}")
    out = tmp_path / "replay.json"
    try:
        times["start + embedded server + labextension list"] = run(
            ["binder/start", "python", "tests/binder/run_notebooks.py", str(out)], repo,
            image.env, 900, preexec_fn=limit.enter)
        memory = limit.report()
    finally:
        limit.close()
    result = json.loads(out.read_text())
    times["checks"] = time.monotonic() - t
    print(f"\nbinder replay ({memory}): " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
          + f"; wall {sum(v for k, v in times.items() if k != 'checks'):.0f} s ("
          + ", ".join(f"{k} {v:.0f} s" for k, v in result["seconds"].items()) + ")")

    assert result["notebooks"] == []  # they run in tests/notebooks, with this image
    listing = strip_ansi(result["labextension_list"])
    assert re.search(r"panda-lab v[\d.]+ enabled\s+OK", listing), listing
    assert result["omp_num_threads"] == str(max(1, math.floor(result["resources"]["cpus"] + .5)))
    if memory["kind"].startswith("cgroup"):
        # the embedded server saw the container's limit, not the host's
        assert result["resources"]["memory"] == LIMIT, result["resources"]
        assert memory["oom_kills"] in (0, None) and memory["peak"] < LIMIT, memory
    assert sorted(s["name"] for s in result["sites"]) == ["LOCAL-CLOUD", "LOCAL-GRID",
                                                          "LOCAL-HPC"]
    # every site's pilot started and registered under the limit
    assert result["pilots_running"] == ["LOCAL-CLOUD", "LOCAL-GRID", "LOCAL-HPC"]
