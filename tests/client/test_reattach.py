"""Work outlives the client: kill the client mid-task, re-attach from a new one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from harness import wait_for

CLIENT = textwrap.dedent("""
    import os, sys, time
    import cloudpickle, panda_lab

    def slow_square(x):
        import time
        time.sleep(0.1)
        return x * x

    lab = panda_lab.connect()
    ex = lab.executor(name="survivor")
    futs = [ex.submit(slow_square, i) for i in range(40)]
    print(ex.task_id, flush=True)
    futs[0].result()
    time.sleep(1e6)   # the test kills us here, mid-task
""")


def test_kill_client_mid_task_then_reattach(mlab, module_server, tmp_path):
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    env = dict(os.environ, PANDA_LAB_HOME=str(module_server.home))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env=env)
    task_id = int(proc.stdout.readline())
    handle = mlab.task(task_id)
    wait_for(lambda: handle.info()["n_done"] >= 1, 60, what="a first result")
    proc.kill()
    proc.wait(10)
    assert handle.info()["n_done"] < 40, "the task should still be running when the client dies"

    again = mlab.task("survivor")  # by name, as a new kernel would
    assert again.id == task_id
    # Its client never closed the task: its lease lapses and the jobs finish anyway.
    wait_for(lambda: again.info()["n_done"] == 40, 120, what="all 40 jobs done")
    assert again.results() == {i: i * i for i in range(40)}
    jobs = again.jobs()
    assert len(jobs) == 40 and set(jobs["state"]) == {"finished"}
