"""Shared fixtures: a real PostgreSQL next to SQLite, and real server processes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import ServerProcess
from pg import PostgresServer, find_bindir

IN_CI = bool(os.environ.get("CI"))

#: Modules that share one resource of the machine and so run one after the other, on one
#: worker, when pytest-xdist runs the suite in parallel, by the fixture that gives the
#: resource: the Slurm cluster that scripts/start-slurm starts is the machine's own (its
#: queue is counted by the tests); the Binder image (``binder_image``) is built once per
#: worker, so its users share one.  Listed by path, since the scheduler sees node ids
#: only; :func:`pytest_collection_modifyitems` checks the list against the fixtures used.
SERIAL_GROUPS = {
    "slurm": ("slurm", ["tests/provisioners/test_slurm.py",
                        "tests/provisioners/test_all_kinds.py"]),
    "binder": ("binder_image", ["tests/binder/test_binder.py",
                                "tests/notebooks/test_example_notebooks.py",
                                "tests/notebooks/test_teaching_notebooks.py"]),
}
GROUP_OF_FILE = {path: group for group, (_, paths) in SERIAL_GROUPS.items() for path in paths}


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, absent from some venvs
def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (``scripts/test`` runs ``-n 2 --dist loadscope``) a test module
    runs whole on one worker, so its module-scoped servers start once and its tests keep
    their order, and the modules of a :data:`SERIAL_GROUPS` group share one worker.

    xdist's own ``loadgroup`` would do the latter from ``xdist_group`` marks, but under
    pytest 9.2 it no longer can (it renames ``item._nodeid``, which pytest no longer
    reads), and every module's tests were spread over both workers; ``loadscope`` with
    this grouping (its ``_split_scope``, which xdist's ``loadfile`` overrides likewise)
    does not depend on that."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return GROUP_OF_FILE.get(path, path)

    return ModuleGroups(config, log)


def pytest_collection_modifyitems(config, items):
    """A module that uses a :data:`SERIAL_GROUPS` fixture but is not listed there would
    share the resource with another worker: refuse the run, naming it."""
    root = Path(__file__).resolve().parent.parent
    missing = set()
    for item in items:
        for group, (fixture, paths) in SERIAL_GROUPS.items():
            rel = Path(item.path).resolve().relative_to(root).as_posix()
            if fixture in item.fixturenames and rel not in paths:
                missing.add(f"{rel} (group {group!r}, fixture {fixture!r})")
    if missing:
        raise pytest.UsageError("add to SERIAL_GROUPS in tests/conftest.py: "
                                + ", ".join(sorted(missing)))


def _untracked(root: Path) -> set[str] | None:
    """Files in the working tree that git neither tracks nor ignores; None outside git."""
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "-z",
                              "--untracked-files=all"], capture_output=True, check=True,
                             timeout=60).stdout.decode(errors="replace")
    except (OSError, subprocess.SubprocessError):
        return None
    return {entry[3:] for entry in out.split("\0") if entry.startswith("?? ")}


def pytest_sessionstart(session):
    """Note the working tree's untracked files, for :func:`pytest_sessionfinish`."""
    if not hasattr(session.config, "workerinput"):  # the controller, not an xdist worker
        session.config._untracked_before = _untracked(Path(__file__).resolve().parent.parent)


def pytest_sessionfinish(session, exitstatus):
    """A test writes into its ``tmp_path``, never into the project: a file a run left in
    the working tree (a batch job's ``slurm-N.out`` written to the current directory was
    one) fails the run, named, so it is fixed rather than committed."""
    before = getattr(session.config, "_untracked_before", None)
    if before is None:
        return
    left = sorted((_untracked(Path(__file__).resolve().parent.parent) or set()) - before)
    if left:
        print("\nthe tests left files in the working tree (write them under tmp_path): "
              + ", ".join(left[:20]) + (f" and {len(left) - 20} more" if len(left) > 20 else ""))
        if session.exitstatus == 0:
            session.exitstatus = 1


@pytest.fixture(autouse=True)
def _ship_test_functions_by_value(request):
    """Pilots cannot import test modules: ship their functions by value, as a notebook's."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(request.module)
    yield
    cloudpickle.unregister_pickle_by_value(request.module)


@pytest.fixture(autouse=True)
def _no_read_cache_from_an_earlier_test(monkeypatch):
    """The embedded default's plan sets ``PANDA_LAB_READ_CACHE`` in its own process, for
    its pilots to inherit.  A test that makes the plan in this process would pass it on to
    every server a later test starts, as if a user had set it: unset here, restored after."""
    monkeypatch.delenv("PANDA_LAB_READ_CACHE", raising=False)


@pytest.fixture(scope="session")
def binder_image(tmp_path_factory):
    """The Binder image replayed once for the session (``tests/binder_image.py``): the
    replay checks it, the notebook tests run their kernels with it."""
    from binder_image import build

    image = build(tmp_path_factory.mktemp("binder"))
    print("\nbinder image: " + ", ".join(f"{k} {v:.0f} s" for k, v in image.times.items()))
    return image


@pytest.fixture(scope="session")
def postgres():
    bindir = find_bindir()
    if bindir is None:
        if IN_CI:
            pytest.fail("PostgreSQL is not installed, and CI must test it: run scripts/test")
        pytest.skip("PostgreSQL is not installed here (scripts/test installs it)")
    server = PostgresServer(bindir)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """Each test using this runs twice: on SQLite and on a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'panda-lab.sqlite'}"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("PANDA_LAB_HOME", str(h))
    return h


@pytest.fixture
def server(home):
    """A real server process on SQLite with the three default local sites."""
    s = ServerProcess(home).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory):
    """One real server (three local sites, three pilots) shared by the tests of a module."""
    s = ServerProcess(tmp_path_factory.mktemp("home")).start()
    yield s
    s.stop()


@pytest.fixture
def lab(server):
    lab = server.lab()
    yield lab
    lab.close()


@pytest.fixture
def store(db_url, tmp_path, request):
    """A Store on each backend (SQLite, then PostgreSQL) with the sites of the test's
    module (its ``SITES``, a list of site rows as ``Store.upsert_sites`` takes them)."""
    from panda_lab.store import Store

    s = Store(db_url, tmp_path / "results")
    s.upsert_sites(request.module.SITES)
    yield s
    s.close()
