"""A job's traceback folds the frames that are not the user's.

Kind tested: a traceback that points at panda-lab or the libraries reading the data
instead of the user's code.  Members: panda-lab's own frames, uproot's, fsspec's and
cloudpickle's (folded, counted, named), the user's frames and the raising frame (kept),
a chained exception (each traceback folded on its own), exception groups (left as they
are), and the switch that keeps every frame.
"""

from __future__ import annotations

import os

import panda_lab
from panda_lab.remote_errors import FULL_TRACEBACKS, fold_frames

PKG = os.path.dirname(panda_lab.__file__)
SITE = "/usr/lib/python3/site-packages"


def frame(path: str, name: str, code: str = "x = 1") -> str:
    return f'  File "{path}", line 3, in {name}\n    {code}\n'


def test_internal_frames_are_folded_and_the_users_and_the_raising_frame_kept(monkeypatch):
    monkeypatch.delenv(FULL_TRACEBACKS, raising=False)
    tb = ("Traceback (most recent call last):\n"
          + frame(f"{PKG}/payload.py", "run_call", "value = fn(*args)")
          + frame(f"{PKG}/analysis/runner.py", "run_chunks")
          + frame("/home/me/ana.py", "process", "return events.Muon.pt / 0")
          + frame(f"{SITE}/uproot/behaviors/TBranch.py", "arrays")
          + frame(f"{SITE}/fsspec/core.py", "open")
          + frame(f"{SITE}/uproot/source/file.py", "chunk", "raise OSError('gone')")
          + "OSError: gone\n\nThe above exception was the direct cause of the following "
            "exception:\n\nTraceback (most recent call last):\n"
          + frame(f"{PKG}/payload.py", "run_call")
          + frame(f"{SITE}/cloudpickle/cloudpickle.py", "dumps", "raise TypeError('x')")
          + "TypeError: x\n")
    out = fold_frames(tb)
    assert "  [... 2 internal frames (panda_lab) hidden]\n" in out
    assert "/home/me/ana.py\", line 3, in process\n    return events.Muon.pt / 0" in out
    assert "  [... 2 internal frames (fsspec, uproot) hidden]\n" in out
    assert "uproot/source/file.py" in out and "raise OSError('gone')" in out  # it raised
    assert "  [... 1 internal frame (panda_lab) hidden]\n" in out  # the second traceback
    assert "cloudpickle.py" in out and out.endswith("TypeError: x\n")
    assert "TBranch.py" not in out and "runner.py" not in out
    monkeypatch.setenv(FULL_TRACEBACKS, "1")
    assert fold_frames(tb) == tb


def test_exception_groups_and_user_only_tracebacks_are_left_alone(monkeypatch):
    monkeypatch.delenv(FULL_TRACEBACKS, raising=False)
    group = ("  + Exception Group Traceback (most recent call last):\n"
             f'  |   File "{PKG}/payload.py", line 3, in run_call\n'
             "  | ExceptionGroup: two (2 sub-exceptions)\n")
    assert fold_frames(group) == group
    mine = "Traceback (most recent call last):\n" + frame("/home/me/a.py", "f") + "E: x\n"
    assert fold_frames(mine) == mine


def test_a_cells_function_keeps_its_file_and_lines_where_it_runs(tmp_path):
    """cloudpickle names a function's file ``<dynamic-code>``; a notebook cell's lines are
    only in the notebook's ``linecache``.  Both travel with the function."""
    import linecache
    import pickle
    import traceback

    from panda_lab.payload import dumps_fn

    name = "/tmp/ipykernel_0/4242.py"  # as IPython names a cell: no such file
    src = "def fit(x):\n    scale = 1.0\n    return scale / x  # the user's line\n"
    linecache.cache[name] = (len(src), None, src.splitlines(True), name)
    ns = {"__name__": "__main__"}
    exec(compile(src, name, "exec"), ns)
    data = dumps_fn(ns["fit"])
    del linecache.cache[name]  # as on a pilot, which never saw the cell
    try:
        pickle.loads(data)(0)
    except ZeroDivisionError as exc:
        text = "".join(traceback.format_exception(exc))
    assert f'File "{name}", line 3, in fit' in text
    assert "return scale / x  # the user's line" in text


def test_jobs_run_in_the_clients_directory_on_its_machine(tmp_path):
    import socket

    from panda_lab.payload import dumps_call, dumps_fn, job_directory, run_call, workdir

    here = socket.gethostname()
    assert job_directory({"host": here, "path": str(tmp_path)}) == str(tmp_path)
    assert job_directory({"host": here + "-elsewhere", "path": str(tmp_path)}) is None
    assert job_directory({"host": here, "path": str(tmp_path / "gone")}) is None
    assert job_directory(None) is None and workdir()["path"] == os.getcwd()
    out = run_call(dumps_call(None, ("no-such-input.txt",)), pickle_loads(dumps_fn(open)))
    assert out.error["message"].startswith("FileNotFoundError")
    assert f"this job ran in {os.getcwd()}" in out.error["traceback"]


def pickle_loads(data: bytes):
    import pickle

    return pickle.loads(data)
