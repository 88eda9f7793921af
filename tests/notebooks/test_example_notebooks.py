"""Every example notebook runs top to bottom on the embedded default, through nbclient and
a real kernel of the Binder image, and says what it should (not only 'no error').

The kernel is the replayed Binder image's (``tests/binder_image.py``: a venv from
``binder/``'s files only and ``postBuild``), started through ``binder/start``, so each
notebook is also proved to run in the image.  Each kernel runs under mybinder.org's 2 GB
(``tests/memlimit.py``): in a memory cgroup where this machine lets the tests make one,
and the cgroup's peak is asserted under 2 GB after each notebook; else (no cgroup can be
made) with an address-space limit of 2 GB set on the kernel, so an allocation past it
fails the notebook.  The server and its
pilots are the test's own processes, outside the limit."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from memlimit import LIMIT, MemoryLimit, execute

#: The first test to need the Binder image builds it (a pip install): more than the
#: default timeout when these tests run alone.
pytestmark = pytest.mark.timeout(1200)

NOTEBOOKS = Path(__file__).resolve().parents[2] / "example_notebooks"
WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def nb_home(module_server):
    """The local server a notebook's ``panda_lab.connect()`` finds (PANDA_LAB_HOME)."""
    return module_server.home


@pytest.fixture(scope="module")
def memory():
    """The 2 GB limit the module's kernels run under."""
    limit = MemoryLimit(LIMIT, f"panda-lab-notebooks-{os.getpid()}")
    yield limit
    limit.close()


def run(name: str, home: Path, workdir: Path, monkeypatch, memory: MemoryLimit,
        image) -> tuple[nbformat.NotebookNode, float]:
    monkeypatch.setenv("PANDA_LAB_HOME", str(home))
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    took = execute(nb, workdir, memory, image=image)
    print(f"{name}: {took:.1f} s ({memory.report()})")
    return nb, took


def texts(cell) -> str:
    """Everything a cell printed or showed as text."""
    out = []
    for o in cell.get("outputs", []):
        if o["output_type"] == "stream":
            out.append(o["text"])
        elif o["output_type"] in ("execute_result", "display_data"):
            out.append(o["data"].get("text/plain", ""))
        elif o["output_type"] == "error":
            out.append(f"{o['ename']}: {o['evalue']}")
    return "".join(out)


def cell_with(nb, needle: str):
    return next(c for c in nb.cells if c.cell_type == "code" and needle in c.source)


def test_every_example_notebook_has_its_test():
    """So that every example notebook is executed in the image, under 2 GB, here."""
    tested = {n.removeprefix("test_").replace("_", "-") for n in globals()
              if re.fullmatch(r"test_\d\d_\w+", n)}
    assert tested == {p.stem for p in NOTEBOOKS.glob("*.ipynb")}


def test_01_quickstart(nb_home, tmp_path, monkeypatch, memory, binder_image):
    nb, _ = run("01-quickstart", nb_home, tmp_path, monkeypatch, memory, binder_image)
    assert "LOCAL-GRID" in texts(nb.cells[1])
    out = texts(cell_with(nb, "with lab.executor"))
    assert re.search(r"pt = 5\.0 GeV, computed at LOCAL-(GRID|CLOUD|HPC)", out)
    assert "map: [1.414, 10.0, 13.0]" in out
    assert "sum of squares below 100: 328350" in texts(cell_with(nb, "total.compute"))
    assert "quickstart" in texts(cell_with(nb, "lab.tasks()"))


def test_02_dimuon_analysis(nb_home, tmp_path, monkeypatch, memory, binder_image):
    """Also run again ("Restart and run all"), as far as its data goes: the cells that
    write the sample and register it, which failed (HTTP 409) after writing 120 MB again."""
    nb, _ = run("02-dimuon-analysis", nb_home, tmp_path, monkeypatch, memory, binder_image)
    written = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "data").glob("*.root")}
    register = next(i for i, c in enumerate(nb.cells) if "datasets.register" in c.source)
    again = nbformat.read(NOTEBOOKS / "02-dimuon-analysis.ipynb", as_version=4)
    again.cells = again.cells[: register + 1]
    execute(again, tmp_path, memory, image=binder_image)
    shown = texts(again.cells[register])  # the dataset given back (no HTTP 409 raised)
    assert "1000000" in shown and "size_bytes" in shown, shown
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "data").glob("*.root")} \
        == written, "the sample was written again"
    shown = cell_with(nb, "task = lab.analyze").outputs[0]["data"]
    assert WIDGET in shown and "dimuon-notebook" in shown["text/plain"]
    assert "4,000,000 events" in texts(cell_with(nb, "result = task.result()"))
    fit = texts(cell_with(nb, "curve_fit"))
    mass = float(re.search(r"Z mass: ([\d.]+) ±", fit).group(1))
    assert abs(mass - 91.19) < 0.3, fit
    plot = cell_with(nb, "plt.subplots")
    assert any("image/png" in o.get("data", {}) for o in plot.outputs)
    assert "done" in texts(cell_with(nb, "task.report()"))


def test_03_cells_as_jobs(nb_home, tmp_path, monkeypatch, memory, binder_image):
    nb, _ = run("03-cells-as-jobs", nb_home, tmp_path, monkeypatch, memory, binder_image)
    out = texts(cell_with(nb, "%%panda --name count-muons"))
    assert "dimuon_000.root:" in out and "dimuon_001.root:" in out
    back = texts(cell_with(nb, "back in the notebook"))
    n_pass = int(re.search(r"back in the notebook: (\d+)", back).group(1))
    assert n_pass > 1000
    par = texts(cell_with(nb, "--parallel 2"))
    assert "[0] job 0 of 2: 1 file(s)" in par and "[1] job 1 of 2: 1 file(s)" in par
    assert "same as before: True" in texts(cell_with(nb, "same as before"))
    oops = cell_with(nb, "no-such-file.root")
    error = next(o for o in oops.outputs if o["output_type"] == "error")
    assert error["ename"] == "FileNotFoundError"
    assert "<panda cell>" in "\n".join(error["traceback"])
    assert "slow_answer = 42" in texts(cell_with(nb, "%panda_attach slow-cell"))


def test_04_sites_and_failures(nb_home, tmp_path, monkeypatch, memory, binder_image):
    nb, _ = run("04-sites-and-failures", nb_home, tmp_path, monkeypatch, memory, binder_image)
    sites = texts(nb.cells[1])
    for kind in ("grid", "cloud", "hpc"):
        assert kind in sites
    assert "killed pilot" in texts(cell_with(nb, "os.kill"))
    assert "done - 30 results, all correct: True" in texts(cell_with(nb, "task.wait"))
    attempts = texts(cell_with(nb, "mine = attempts"))
    assert "ended (killed by signa" in attempts                   # pandas cuts the text
    why = texts(cell_with(nb, "retry.brokerage"))                 # the Python way, in words
    assert "retried at" in why and "avoided, an earlier attempt failed there" in why
    assert "lost" in texts(cell_with(nb, "pd.DataFrame(lab.pilots())"))
