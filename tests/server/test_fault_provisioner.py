"""A provisioner crashing, in a real server process: its site goes offline, then back.

Kind (an exception that is not a ``ProvisionerError`` ending a site's loop: the site would
silently never get pilots again); its members at the provisioner's level (a bug's
``KeyError``, a failing ``adopt``, the store unreachable) are in
tests/provisioners/test_provisioner_crash.py.  Here the member a real server meets: the
Python its local pilots are started with is gone (``FileNotFoundError`` from starting
the process).  The site is offline with that reason, the traceback is in the server's
log once, and when the Python is back the site gets its pilot again and a task
submitted meanwhile ends with its exact result.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
from harness import ServerProcess, site_in_state, wait_for

from panda_lab.model.states import JobState, TaskState

SITE = """
[sites.ONE]
provisioner = "local"
pilots = 1
slots = 2
"""


def python_at(where: Path) -> Path:
    """An interpreter at ``where/bin/python`` that runs as this test's (the same
    environment: a venv's ``pyvenv.cfg`` and libraries beside it), so that removing
    that one link takes the Python away from a server started with it."""
    (where / "bin").mkdir(parents=True)
    prefix = Path(sys.prefix)
    if (prefix / "pyvenv.cfg").exists():
        shutil.copy(prefix / "pyvenv.cfg", where / "pyvenv.cfg")
        for lib in ("lib", "lib64"):
            if (prefix / lib).exists():
                (where / lib).symlink_to(prefix / lib)
    python = where / "bin" / "python"
    python.symlink_to(os.path.realpath(sys.executable))
    return python


def square(x):
    return x * x


@pytest.mark.slow
def test_a_site_whose_pilot_python_is_gone_goes_offline_and_comes_back(home, tmp_path):
    python = python_at(tmp_path / "py")
    (home / "sites.toml").write_text(SITE)
    server = ServerProcess(home, extra=["--sites", str(home / "sites.toml")],
                           python=str(python)).start()
    try:
        lab = server.lab()
        pilots = wait_for(server.pilot_pids, 30, what="the site's pilot")
        target = python.readlink()
        python.unlink()  # the Python of the site's pilots is gone...
        for pid in pilots:
            os.kill(pid, signal.SIGKILL)  # ...when the provisioner must start another
        offline = site_in_state(lab, "ONE", "offline", 30)
        assert "failed unexpectedly: FileNotFoundError" in offline["reason"]
        assert str(python) in offline["reason"]
        task = lab.submit(square, [(i,) for i in range(6)], name="meanwhile", site="ONE")
        python.symlink_to(target)
        site_in_state(lab, "ONE", "online", 30)
        info = lab.wait(task, timeout=60)
        assert info["state"] == TaskState.DONE
        assert lab.results(task) == {i: i * i for i in range(6)}
        attempts = lab.jobs(task, all_attempts=True)
        assert [(a["job_index"], a["state"]) for a in attempts] == [
            (i, JobState.FINISHED) for i in range(6)]
        log = server.log_tail(10**6)
        assert log.count("Traceback") == 1 and "FileNotFoundError" in log
        lab.close()
    finally:
        server.stop()
