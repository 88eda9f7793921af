"""What the Binder replay runs through ``binder/start``: the notebooks named, if any, with
nbclient; then what a notebook's first cell does (``panda_lab.connect()``: the embedded
server, started sized to the container), the sites it made and their pilots once they
run, and ``jupyter labextension list``; one JSON line of results.

Run as ``binder/start python tests/binder/run_notebooks.py OUT.json [NOTEBOOK...]`` from a
checkout whose panda-lab was installed by ``binder/postBuild``.  The notebooks run in place
(``example_notebooks/`` and its ``teaching/``) against the embedded server their
``panda_lab.connect()`` starts, which is stopped at the end.  (The test suite runs every
notebook in ``tests/notebooks``, with this image's kernel: the replay names none.)  Not a
test module: the test in ``test_binder.py`` reads what this writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path.cwd()


def run(path: Path) -> dict:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    t = time.monotonic()
    try:
        client.execute()
        error = None
    except Exception as exc:  # a failing cell: reported with the notebook's name
        error = f"{type(exc).__name__}: {str(exc)[-1500:]}"
    return {"notebook": str(path.relative_to(ROOT)), "seconds": round(time.monotonic() - t, 1),
            "error": error}


def main(out: str, names: list[str]) -> int:
    from panda_lab.resources import detect

    res = detect()
    steps: dict[str, float] = {}
    t = time.monotonic()
    result: dict = {"resources": {"cpus": res.cpus, "memory": res.memory,
                                  "source": res.source},
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                    "notebooks": [run(ROOT / n) for n in names], "seconds": steps}
    import panda_lab

    lab = panda_lab.connect()  # as a notebook's first cell: the embedded server
    steps["connect (embedded server)"] = time.monotonic() - t
    # its pilots started and registered, inside the limit (and a server is stopped at
    # once only when they are not still starting)
    t = time.monotonic()
    while time.monotonic() - t < 120:
        running = sorted(p["site"] for p in lab.pilots() if p["state"] == "running")
        if len(running) >= len(lab.sites()):
            break
        time.sleep(0.2)
    result["pilots_running"] = running
    steps["pilots registered"] = time.monotonic() - t
    t = time.monotonic()
    ext = subprocess.run(["jupyter", "labextension", "list"], capture_output=True, text=True)
    result["labextension_list"] = ext.stdout + ext.stderr
    steps["jupyter labextension list"] = time.monotonic() - t
    t = time.monotonic()
    sites = subprocess.run(["panda-lab", "sites", "--json"], capture_output=True, text=True)
    result["sites"] = json.loads(sites.stdout) if sites.returncode == 0 else sites.stderr
    steps["panda-lab sites"] = time.monotonic() - t
    t = time.monotonic()
    subprocess.run(["panda-lab", "server", "stop"], capture_output=True, text=True)
    steps["panda-lab server stop"] = time.monotonic() - t
    Path(out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
