"""``panda-lab teach reset`` leaves a room as a fresh start leaves it; ``teach check`` says
one line per check and fails when a check fails.

Kind tested for reset: something a class left behind surviving the reset.  Members: a
task, a registered dataset, a stored result and pilot logs in the server's home, a
server still running, notebook outputs and execution counts (also in a sub-folder), a
saved checkpoint, a second generated data folder, sample files of another size.  The
state compared: what the API shows of a server started afterwards (tasks, datasets,
sites, pilots), the files of the home, the notebooks' JSON, the data's files and entries.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
import uproot

from panda_lab import runtime
from panda_lab.analysis.sample import make_sample
from panda_lab.cli import teach
from panda_lab.cli.main import main
from panda_lab.client.session import Lab
from panda_lab.server.main import start_detached, stop_detached

NOTEBOOKS = Path(__file__).resolve().parents[2] / "example_notebooks"
EVENTS = 2000


def course(dest: Path) -> Path:
    """A course folder: two of the example notebooks, one of them also in a sub-folder."""
    dest.mkdir()
    for name in ("01-quickstart.ipynb", "04-sites-and-failures.ipynb"):
        shutil.copy(NOTEBOOKS / name, dest / name)
    (dest / "teaching").mkdir()
    shutil.copy(NOTEBOOKS / "01-quickstart.ipynb", dest / "teaching" / "01-course.ipynb")
    return dest


def files(home: Path, folder: Path) -> dict:
    """The home's files, the notebooks, the folders, the data (files and entries: ROOT
    files carry their write time, so not bytes)."""
    return {
        "home": sorted(str(p.relative_to(home)) for p in home.rglob("*")
                       if p.is_file() and p.parent.name != "logs"),
        "notebooks": {str(p.relative_to(folder)): p.read_text()
                      for p in sorted(folder.rglob("*.ipynb"))},
        "folders": sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_dir()),
        "data": {p.name: uproot.open(p)["Events"].num_entries
                 for p in sorted((folder / "data").glob("*.root"))},
    }


def snapshot(home: Path, folder: Path) -> dict:
    """What a class would find: the server's contents (a server started on the home),
    then :func:`files`."""
    info = start_detached(home, ["--no-pilots"])
    try:
        lab = Lab(info["url"], info["user_token"], home=home)
        state = {
            "tasks": lab.list_tasks(),
            "datasets": lab.api.get("/api/datasets"),
            "sites": sorted((s["name"], s["kind"], s["pilots"]) for s in lab.sites()),
            "pilots": lab.pilots(),
        }
        lab.close()
    finally:
        stop_detached(home)
    return {**state, **files(home, folder)}


def test_reset_leaves_the_state_of_a_fresh_start(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a fresh start: a new home, the course as shipped, its data generated
    fresh_home, fresh = tmp_path / "fresh-home", course(tmp_path / "fresh")
    make_sample(fresh / "data", **{**teach.SAMPLE, "events": EVENTS})
    # a room after a class
    used_home, used = tmp_path / "used-home", course(tmp_path / "used")
    info = start_detached(runtime.home(used_home), ["--no-pilots"])
    lab = Lab(info["url"], info["user_token"], home=used_home)
    lab.submit(abs, [(-1,)], name="homework")  # no pilots: it stays queued
    other = make_sample(used / "data-cells", files=1, events=500, basket_events=100)
    lab.datasets.register("class.dimuon", [str(p) for p in other], tree="Events")
    (used_home / "results").mkdir(exist_ok=True)
    (used_home / "results" / "1.pkl").write_bytes(b"result")
    (used_home / "logs" / "pilot-LOCAL-GRID-1.log").write_text("ran")
    make_sample(used / "data", files=2, events=700, basket_events=100)
    nb = nbformat.read(used / "teaching" / "01-course.ipynb", as_version=4)
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.execution_count = 3
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="LOCAL-GRID\n")]
    code.metadata["execution"] = {"iopub.status.idle": "2026-12-01T00:00:00Z"}
    nbformat.write(nb, used / "teaching" / "01-course.ipynb")
    (used / ".ipynb_checkpoints").mkdir()
    (used / ".ipynb_checkpoints" / "01-quickstart-checkpoint.ipynb").write_text("{}")
    fresh_state = snapshot(fresh_home, fresh)
    before = files(used_home, used)
    for key in ("home", "notebooks", "folders", "data"):  # the comparison can fail
        assert before[key] != fresh_state[key], key
    assert lab.list_tasks() and len(lab.datasets.list()) == 1

    rc = main(["--home", str(used_home), "teach", "reset", "--notebooks", str(used), "--yes",
               "--events", str(EVENTS)])

    lab.close()
    assert rc == 0
    assert runtime.read_connection(used_home) is None  # the running server was stopped
    assert snapshot(used_home, used) == fresh_state


def test_reset_refuses_bad_input_and_a_database_outside_the_home(tmp_path, capsys):
    home = runtime.home(tmp_path / "home")
    assert main(["--home", str(home), "teach", "reset", "--notebooks",
                 str(tmp_path / "nowhere"), "--yes"]) == 2
    assert "--notebooks" in capsys.readouterr().err
    folder = course(tmp_path / "c")
    assert main(["--home", str(home), "teach", "reset", "--notebooks", str(folder), "--yes",
                 "--events", "0"]) == 2
    runtime.write_connection(home, {"url": "http://127.0.0.1:9", "pid": 0,
                                    "database": "postgresql+psycopg://room@db/lab"})
    assert main(["--home", str(home), "teach", "reset", "--notebooks", str(folder),
                 "--yes"]) == 2
    err = capsys.readouterr().err
    assert "postgresql+psycopg://room@db/lab" in err and "its own tools" in err
    assert runtime.read_connection(home) is not None  # nothing removed


def test_clear_outputs_changes_only_what_was_run(tmp_path):
    path = tmp_path / "n.ipynb"
    shutil.copy(NOTEBOOKS / "01-quickstart.ipynb", path)
    assert teach.clear_outputs(path) is False  # shipped unrun: left byte for byte
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "1"},
                                                  execution_count=1)]
    nb.cells[1].execution_count = 1
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    nbformat.write(nb, path)
    assert teach.clear_outputs(path) is True
    assert path.read_text() == (NOTEBOOKS / "01-quickstart.ipynb").read_text()


@pytest.mark.slow
def test_check_passes_here_and_a_failing_check_says_which(tmp_path, monkeypatch, capsys):
    """Every check runs for real (a server of its own, pilots, jobs, an analysis); with the
    course's data missing, that line fails, the others still run, and the exit code is 1."""
    folder = course(tmp_path / "c")
    make_sample(folder / "data", **{**teach.SAMPLE, "events": EVENTS})
    monkeypatch.setenv("PANDA_LAB_HOME", str(tmp_path / "room"))
    assert main(["teach", "check", "--notebooks", str(folder)]) == 0
    out = capsys.readouterr().out
    for name in ("python", "packages", "resources", "panel", "server-ext", "data",
                 "notebooks", "server", "jobs", "analysis"):
        assert any(line.startswith(f"ok   {name} ") for line in out.splitlines()), (name, out)
    assert "all checks passed" in out
    assert not (tmp_path / "room").exists()  # the room's own server was not touched
    shutil.rmtree(folder / "data")
    monkeypatch.setattr(teach, "_on_server", lambda checks, deadline: None)
    assert main(["teach", "check", "--notebooks", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "FAIL data" in out and "panda-lab teach reset" in out
    assert "1 check(s) failed: data" in out
