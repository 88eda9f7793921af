"""Open tasks whose client goes away without closing them: they end, by a lease.

The kind: every task a client holds open, to add jobs to it later, can lose its client
(a kernel killed, restarted, or ``os._exit``) before ``shutdown`` closes it; it must not
stay open and running for good.  The server grants a lease when a task is opened, the
client renews it in the background while it lives, and the watchdog closes the task
when the lease lapses (``--task-lease`` seconds, 5 s in these tests): the jobs already
submitted run to completion, the task then ends by the usual rule, and its message
says "closed: client gone (lease expired at ...)".  Openers of such tasks: the executor
(``lab.executor``) and everything built on it, ``dask.compute(..., scheduler=lab.get)``
and ``scheduler=executor``.  (An analysis task's scouting keeps its task open too, but
the server holds that one and closes it itself: no client lease, see tests/store.)

Members tested, each with real server, pilot and client processes:

- a client killed with ``os._exit`` after a result: ``lab.task(name).wait(timeout=30)``
  from another process returns, the task is ``done``, the results are readable, and
  the CLI and the monitors say why it ended
  (``test_client_killed_after_a_result_ends_its_task_done``);
- a client killed while its jobs are still queued and running: they run to completion
  (none cancelled), then the task ends ``done``
  (``test_jobs_still_queued_when_the_client_dies_run_to_completion``);
- the same through Dask, a ``dask.compute(scheduler=lab.get)`` killed mid-graph
  (``test_a_dask_compute_killed_mid_graph_ends_its_task``);
- a live client idle for longer than the lease keeps its task open, and can submit
  again (``test_a_live_idle_client_keeps_its_task_open``);
- re-attach from a second process while the first lives: the task stays open and the
  first client closes it normally (``test_reattach_while_the_client_lives``);
- a server restarted while the client lives, down for longer than a lease, does not
  close the task (``test_a_server_restart_does_not_close_a_live_clients_task``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from harness import ServerProcess, wait_for

from panda_lab.widgets.snapshot import take, text

#: The lease of the test servers (tests/harness.py FAST).
LEASE = 5.0
GONE = "closed: client gone (lease expired at "


def square(x):
    return x * x


def nap_square(x, t=0.5):
    time.sleep(t)
    return x * x


def client(home, body: str, **kw) -> subprocess.Popen:
    """A client process (a kernel, for the server) running ``body`` with ``lab``."""
    code = "import os, sys, time\nimport panda_lab\nlab = panda_lab.connect()\n" + \
        textwrap.dedent(body)
    env = dict(os.environ, PANDA_LAB_HOME=str(home))
    return subprocess.Popen([sys.executable, "-c", code], env=env, text=True,
                            stdout=subprocess.PIPE, **kw)


def cli(home, *args: str) -> str:
    env = dict(os.environ, PANDA_LAB_HOME=str(home), COLUMNS="300")
    r = subprocess.run([sys.executable, "-m", "panda_lab.cli.main", *args], env=env,
                       capture_output=True, text=True, timeout=60, check=True)
    return r.stdout


def test_client_killed_after_a_result_ends_its_task_done(mlab, module_server):
    proc = client(module_server.home, """
        ex = lab.executor(name="n")
        print(ex.submit(lambda x: x * x, 7).result(), flush=True)
        os._exit(0)   # no shutdown: the kernel just goes
    """)
    assert proc.stdout.readline().strip() == "49"
    assert proc.wait(30) == 0

    task = mlab.task("n")
    task.wait(timeout=30)                       # did raise TimeoutError: open for good
    info = task.info()
    assert (info["state"], info["open"], info["n_jobs"], info["n_done"]) == \
        ("done", False, 1, 1)
    assert info["message"].startswith(GONE) and info["message"].endswith("; its job finished")
    assert info["ended_at"] >= info["lease_until"], "closed only once the lease lapsed"
    assert task.results() == {0: 49}

    rows = {t["id"]: t for t in json.loads(cli(module_server.home, "tasks", "--json"))}
    assert rows[task.id]["message"] == info["message"]
    table = cli(module_server.home, "tasks")
    assert GONE in table and "its job finished" in table
    assert f"\n  {info['message']}\n" in text(take(mlab, task.id))

    from panda_lab.widgets.monitor import LabMonitor, TaskMonitor

    m = TaskMonitor(mlab, task.id, start=False)
    lm = LabMonitor(mlab, start=False)
    try:
        assert GONE in m.title.value and "done" in m.title.value
        assert GONE in lm.rows[task.id][0].value
    finally:
        m.close()
        lm.close()


def test_jobs_still_queued_when_the_client_dies_run_to_completion(mlab, module_server):
    n = 24
    proc = client(module_server.home, f"""
        import time
        def nap_square(x):
            time.sleep(1.5)
            return x * x
        ex = lab.executor(name="queued-then-gone")
        futs = [ex.submit(nap_square, i) for i in range({n})]
        futs[0].result()
        print(ex.task_id, flush=True)
        os._exit(0)
    """)
    task_id = int(proc.stdout.readline())
    proc.wait(30)
    handle = mlab.task(task_id)
    info = wait_for(lambda: (i := handle.info())["message"].startswith(GONE) and i,
                    30, what="the task closed by its lease")
    # closed while its jobs still ran: they were left to finish
    assert info["state"] == "running" and not info["open"] and info["n_done"] < n
    assert "open: client lease" not in cli(module_server.home, "tasks")
    info = handle.wait(timeout=60).info()
    assert (info["state"], info["n_done"]) == ("done", n)
    assert info["message"].startswith(GONE) and info["message"].endswith(f"all {n} jobs finished")
    assert handle.results() == {i: i * i for i in range(n)}
    jobs = handle.jobs(all_attempts=True)
    assert set(jobs["state"]) == {"finished"}, "no job was cancelled or closed"


def test_a_dask_compute_killed_mid_graph_ends_its_task(mlab, module_server):
    proc = client(module_server.home, """
        import threading, dask
        def nap(x):
            time.sleep(1.0)
            return x
        graph = dask.delayed(sum)([dask.delayed(nap)(i) for i in range(12)])
        threading.Thread(target=lambda: dask.compute(graph, scheduler=lab.get,
                                                     name="dask-gone"), daemon=True).start()
        while True:
            try:
                if lab.task("dask-gone").info()["n_done"]:
                    break
            except Exception:   # not created yet
                pass
            time.sleep(0.1)
        os._exit(0)
    """)
    proc.wait(60)
    task = mlab.task("dask-gone")
    info = task.wait(timeout=30).info()
    assert info["state"] == "done" and info["message"].startswith(GONE)
    # the graph's leaves that were sent ran, and their results are kept
    assert 1 <= info["n_done"] == info["n_jobs"]
    assert len(task.results()) == info["n_jobs"]


def test_a_live_idle_client_keeps_its_task_open(mlab):
    with mlab.executor(name="idle") as ex:
        assert ex.submit(square, 2).result(timeout=30) == 4
        time.sleep(2 * LEASE + 1)                # idle for two leases and more
        info = mlab.task_info(ex.task_id)
        assert info["open"] and info["state"] == "running" and info["message"] == ""
        assert info["lease_until"] > time.time()
        assert ex.submit(square, 3).result(timeout=30) == 9
        assert ex.lease_error is None
    info = mlab.wait(ex.task_id, timeout=30)
    assert (info["state"], info["message"]) == ("done", "all 2 jobs finished")


def test_reattach_while_the_client_lives(mlab, module_server):
    proc = client(module_server.home, """
        def square(x):
            return x * x
        ex = lab.executor(name="shared")
        print(ex.submit(square, 1).result(), ex.task_id, flush=True)
        sys.stdin.readline()                      # idle until the test says go
        print(ex.submit(square, 2).result(), flush=True)
        ex.shutdown()
    """, stdin=subprocess.PIPE)
    first, task_id = proc.stdout.readline().split()
    assert first == "1"
    handle = mlab.task("shared")                   # from this second process, by name
    assert handle.id == int(task_id)
    time.sleep(2 * LEASE + 1)
    info = handle.info()
    assert info["open"] and info["state"] == "running"
    assert handle.results() == {0: 1}
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "4"
    assert proc.wait(30) == 0
    info = handle.wait(timeout=30).info()
    assert (info["state"], info["message"]) == ("done", "all 2 jobs finished")
    assert handle.results() == {0: 1, 1: 4}


@pytest.mark.slow  # two outages of a lease and more, and a server restart
def test_a_server_restart_does_not_close_a_live_clients_task(home):
    server = ServerProcess(home).start()
    try:
        lab = server.lab()
        ex = lab.executor(name="through-a-restart")
        assert ex.submit(square, 5).result(timeout=30) == 25
        server.kill()
        time.sleep(LEASE + 1)                      # its stored lease lapses meanwhile
        server.start()
        lab = server.lab()
        time.sleep(LEASE + 1)                      # the watchdog sweeps; the client renews
        info = lab.task_info(ex.task_id)
        assert info["open"] and info["state"] == "running" and info["message"] == ""
        assert ex.submit(square, 6).result(timeout=60) == 36
        ex.shutdown()
        info = lab.wait(ex.task_id, timeout=30)
        assert (info["state"], info["message"]) == ("done", "all 2 jobs finished")
    finally:
        server.stop()
