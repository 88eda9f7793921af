"""The course in ``example_notebooks/teaching``: built from one source per notebook, every
solutions notebook runs with each check saying "right", every exercise notebook as
shipped runs with each check giving its hint (never raising, never "right"), and
``panda-lab teach reset`` brings run notebooks back to what is shipped.

Kind tested: exercise and solutions versions drifting apart.  Members: a committed
notebook edited by hand (the build check fails), a solution that no longer satisfies its
check, an exercise stub that passes its check or makes a check cell raise.

The kernels are the Binder image's and run under mybinder.org's 2 GB as in
``test_example_notebooks.py`` (``tests/binder_image.py``; ``tests/memlimit.py``: a memory
cgroup whose peak is asserted under 2 GB where one can be made here, else an
address-space limit of 2 GB set on the kernel).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from importlib.machinery import SourceFileLoader
from pathlib import Path

import nbformat
import pytest
from memlimit import LIMIT, MemoryLimit, execute

from panda_lab.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
COURSE = ROOT / "example_notebooks" / "teaching"
#: The first test to need the Binder image builds it (a pip install): more than the
#: default timeout when these tests run alone.
pytestmark = pytest.mark.timeout(1200)
BUILD = ROOT / "scripts" / "build-teaching"
NAMES = sorted(p.stem for p in (COURSE / "src").glob("*.py"))


@pytest.fixture(scope="module")
def memory():
    limit = MemoryLimit(LIMIT, f"panda-lab-course-{os.getpid()}")
    yield limit
    limit.close()


@pytest.fixture(scope="module")
def ran(module_server, memory, tmp_path_factory, binder_image):
    """Every notebook of the course executed in the Binder image, by ``(version, name)``:
    ``"exercise"`` or ``"solutions"``; each in a folder of its own, on the module's
    server."""
    old = os.environ.get("PANDA_LAB_HOME")
    os.environ["PANDA_LAB_HOME"] = str(module_server.home)
    out = {}
    try:
        for version, folder in (("solutions", COURSE / "solutions"), ("exercise", COURSE)):
            for name in NAMES:
                nb = nbformat.read(folder / f"{name}.ipynb", as_version=4)
                took = execute(nb, tmp_path_factory.mktemp(f"{version}-{name[:2]}"), memory,
                               image=binder_image)
                print(f"{version}/{name}: {took:.1f} s ({memory.report()})")
                out[version, name] = nb
    finally:
        if old is None:
            os.environ.pop("PANDA_LAB_HOME", None)
        else:
            os.environ["PANDA_LAB_HOME"] = old
    return out


def check_outputs(nb) -> dict[str, str]:
    """What each check cell printed, by the exercise it checks."""
    out = {}
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith("check("):
            exercise = cell.source.split('"')[1]
            assert all(o["output_type"] == "stream" for o in cell.outputs), cell.outputs
            out[exercise] = "".join(o["text"] for o in cell.outputs)
    return out


def test_five_notebooks_each_with_two_or_three_checked_exercises():
    assert len(NAMES) == 5
    for name in NAMES:
        nb = nbformat.read(COURSE / f"{name}.ipynb", as_version=4)
        stubs = [c for c in nb.cells if "solution" in c.metadata.get("tags", [])]
        assert 1 <= len(stubs) <= 3 and all("# your code here" in c.source for c in stubs)
        checks = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("check(")]
        assert 2 <= len(checks) <= 3, name


def build_script():
    """scripts/build-teaching as a module (it has no .py suffix)."""
    loader = SourceFileLoader("build_teaching", str(BUILD))
    module = importlib.util.module_from_spec(
        importlib.util.spec_from_loader("build_teaching", loader))
    loader.exec_module(module)
    return module


def test_committed_notebooks_are_what_the_sources_build(tmp_path, capsys):
    build = build_script()
    assert build.main(["--check"]) == 0, capsys.readouterr().err
    # the check can fail: a committed copy edited by hand
    shutil.copytree(COURSE, tmp_path / "c", ignore=shutil.ignore_patterns("src"))
    edited = tmp_path / "c" / "solutions" / f"{NAMES[0]}.ipynb"
    edited.write_text(edited.read_text().replace("groupby", "value_counts", 1))
    assert build.main(["--check", "--out", str(tmp_path / "c")]) == 1
    assert str(edited) in capsys.readouterr().err
    # and the exercise version is the solutions version with its answers stubbed
    ex = nbformat.read(COURSE / f"{NAMES[0]}.ipynb", as_version=4)
    sol = nbformat.read(COURSE / "solutions" / f"{NAMES[0]}.ipynb", as_version=4)
    assert [c.id for c in ex.cells] == [c.id for c in sol.cells]
    for e, s in zip(ex.cells, sol.cells, strict=True):
        if "solution" in s.metadata.get("tags", []):
            assert e.source != s.source and e.source.splitlines()[0] == s.source.splitlines()[0]
        else:
            assert e.source == s.source


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_solutions_pass_every_check(ran, name):
    checks = check_outputs(ran["solutions", name])
    assert checks and all(text == "right\n" for text in checks.values()), checks


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_exercises_as_shipped_give_a_hint_at_every_check(ran, name):
    checks = check_outputs(ran["exercise", name])
    assert checks, name
    for exercise, text in checks.items():
        assert text.startswith("not yet: ") and text.count("\n") == 1, (exercise, text)


@pytest.mark.slow
def test_teach_reset_restores_the_run_course(ran, tmp_path, monkeypatch):
    folder = tmp_path / "example_notebooks"
    (folder / "teaching" / "solutions").mkdir(parents=True)
    for (version, name), nb in ran.items():
        sub = "teaching" if version == "exercise" else "teaching/solutions"
        nbformat.write(nb, folder / sub / f"{name}.ipynb")
    ran_text = (folder / "teaching" / f"{NAMES[0]}.ipynb").read_text()
    assert ran_text != (COURSE / f"{NAMES[0]}.ipynb").read_text()  # it was run
    monkeypatch.chdir(tmp_path)
    assert main(["--home", str(tmp_path / "room"), "teach", "reset", "--notebooks",
                 str(folder), "--yes", "--events", "1000"]) == 0
    for version_dir in ("", "solutions/"):
        for name in NAMES:
            got = nbformat.read(folder / "teaching" / f"{version_dir}{name}.ipynb", 4)
            want = nbformat.read(COURSE / f"{version_dir}{name}.ipynb", 4)
            # the kernel's language_info (its Python version...) stays, as Jupyter saves it
            for nb in (got, want):
                nb.metadata.pop("language_info")
            assert got == want, name
