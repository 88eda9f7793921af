"""``panda-lab server stop`` returns when the server has exited, whoever started it.

Kind: a process that exited but is not reaped (a zombie) looks alive to ``kill(pid, 0)``.
A server started by a notebook's ``connect()`` is the kernel's child; stopped from a
terminal (or by the Binder replay's ``panda-lab server stop``), it stayed a zombie until
the kernel reaped it, and the stop waited its whole timeout (30 s) before a useless
SIGKILL.  Members: the server's parent is another, living process (its zombie is seen as
gone), the caller is the parent (reaped), no such process (gone).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from panda_lab import runtime
from panda_lab.server.main import _gone, stop_detached

#: A parent that starts a "server" (a sleeping child) and never reaps it.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_server_another_process_started_is_stopped_once_it_exited(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE,
                              text=True)
    try:
        pid = int(parent.stdout.readline())
        runtime.write_connection(tmp_path, {"url": "http://127.0.0.1:1", "pid": pid})
        t = time.monotonic()
        assert stop_detached(tmp_path, timeout=10) is True
        assert time.monotonic() - t < 5  # not the whole timeout: it is a zombie now
        assert _gone(pid) and runtime.read_connection(tmp_path) is None
        os.kill(pid, 0)  # still there, unreaped: what the old check took for alive
    finally:
        parent.kill()
        parent.wait(10)


def test_our_own_child_is_reaped_and_a_missing_process_is_gone(tmp_path):
    assert not _gone(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    runtime.write_connection(tmp_path, {"url": "http://127.0.0.1:1", "pid": child.pid})
    assert stop_detached(tmp_path, timeout=10) is True
    assert child.poll() is not None or _gone(child.pid)
    assert stop_detached(tmp_path) is False  # nothing runs any more
