"""``%%panda`` through a real IPython kernel and a real server with local pilots."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from harness import wait_for


def test_a_cell_reads_only_the_variables_it_names_and_its_names_come_back(kernel, nlab,
                                                                         module_server):
    kernel.ok("import numpy as np\n"
              "big = np.zeros(5_000_000)          # 40 MB the cell does not read\n"
              "values = [1, 2, 3]\nscale = 10\n"
              "def double(v):\n    return 2 * v\n")
    reply = kernel.ok("%%panda --name t-capture\n"
                      "import os\n"
                      "scaled = [double(v) * scale for v in values]\n"
                      "where = os.getpid()\n"
                      "print('scaled', scaled)\n")
    assert "scaled [20, 40, 60]" in reply.stdout
    assert kernel.value("scaled") == [20, 40, 60]
    assert kernel.value("where") != kernel.value("os.getpid()")   # it ran elsewhere
    task = nlab.task("t-capture")
    assert task.status == "done" and len(task.jobs()) == 1
    # what travelled: the cell and the names it reads, not the 40 MB array
    from panda_lab.http import ApiClient

    pilot_api = ApiClient(module_server.info["url"], module_server.info["pilot_token"])
    common = pilot_api.request("GET", f"/api/pilot/tasks/{task.id}/common", raw=True)
    assert b"scaled = [double(v)" in common and len(common) < 20_000


def test_output_is_streamed_while_the_cell_runs(kernel):
    seen: list[tuple[float, str]] = []

    def on_message(msg):
        if msg["msg_type"] == "stream":
            seen.append((time.monotonic(), msg["content"]["text"]))

    reply = kernel.run("%%panda --name t-stream\n"
                       "import time\n"
                       "print('first', flush=True)\n"
                       "time.sleep(4)\n"
                       "print('second')\n", on_message=on_message)
    assert reply.status == "ok"
    first = next(t for t, text in seen if "first" in text)
    second = next(t for t, text in seen if "second" in text)
    end = time.monotonic()
    # shown at the end only, both lines would come together; live, about 4 s apart
    assert second - first > 1.5, "the first line came only with the end of the job"
    assert end - first > 1.5
    assert reply.stdout.count("first") == 1 and reply.stdout.count("second") == 1


def test_a_remote_exception_shows_its_traceback_in_the_cell(kernel):
    reply = kernel.run("%%panda --name t-error\n"
                       "def inner(x):\n"
                       "    return 1 / x\n"
                       "y = inner(0)\n")
    assert reply.status == "error"
    assert reply.error["ename"] == "ZeroDivisionError"
    tb = reply.traceback
    assert '<panda cell>", line 2, in inner' in tb and "return 1 / x" in tb
    assert kernel.run("y").status == "error"                      # nothing was bound


def test_a_remote_exception_keeps_its_type_through_a_cell(kernel):
    """A notebook's own exception class, with required constructor arguments, comes
    back from a ``%%panda`` cell as itself: ``except FitError`` in the notebook works."""
    kernel.ok("class FitError(Exception):\n"
              "    def __init__(self, chi2, ndf):\n"
              "        super().__init__(f'chi2/ndf = {chi2}/{ndf}')\n"
              "        self.chi2, self.ndf = chi2, ndf\n")
    reply = kernel.run("%%panda --name t-fit-cell\nraise FitError(12.5, 3)\n")
    assert reply.status == "error"
    assert reply.error["ename"] == "FitError" and reply.error["evalue"] == "chi2/ndf = 12.5/3"
    assert '<panda cell>", line 1' in reply.traceback
    kernel.ok("try:\n"
              "    get_ipython().run_cell_magic('panda', '--name t-fit-cell-2',\n"
              "                                 'raise FitError(1.5, 2)\\n')\n"
              "except FitError as e:\n"
              "    caught = (e.chi2, e.ndf)\n")
    assert kernel.value("caught") == (1.5, 2)


def test_interrupt_kills_the_job_on_the_server(kernel, nlab):
    result: dict = {}
    runner = threading.Thread(target=lambda: result.setdefault(
        "reply", kernel.run("%%panda --name t-interrupt\nimport time\ntime.sleep(60)\n")))
    runner.start()

    def running():
        try:
            return nlab.task("t-interrupt").jobs()["state"].tolist() == ["running"]
        except Exception:
            return False

    wait_for(running, 30, what="the cell's job running")
    kernel.interrupt()
    runner.join(30)
    reply = result["reply"]
    assert reply.status == "error" and reply.error["ename"] == "KeyboardInterrupt"
    assert "killed" in reply.stderr
    task = nlab.task("t-interrupt")
    wait_for(lambda: task.status == "aborted", 10, what="the task aborted")
    assert task.jobs()["state"].tolist() == ["cancelled"]


def test_detach_leaves_the_task_running_and_attach_brings_it_back(kernel, nlab):
    result: dict = {}
    runner = threading.Thread(target=lambda: result.setdefault("reply", kernel.run(
        "%%panda --detach --name t-detach\nimport time\ntime.sleep(3)\nanswer = 42\n")))
    runner.start()
    wait_for(lambda: _state(nlab, "t-detach") == ["running"], 30,
             what="the detached cell's job running")
    kernel.interrupt()
    runner.join(30)
    assert result["reply"].status == "ok"
    assert "left running" in result["reply"].stderr
    task = nlab.task("t-detach")
    kernel.restart()                                             # a new kernel: nothing kept
    kernel.ok("%load_ext panda_lab")
    assert kernel.run("answer").status == "error"
    kernel.ok(f"%panda_attach {task.id}", timeout=60)
    assert kernel.value("answer") == 42
    assert task.status == "done"


def test_parallel_over_a_list_cuts_it_into_chunks_and_gathers_the_names(kernel):
    kernel.ok("numbers = list(range(10))")
    reply = kernel.ok("%%panda --parallel 3 --over numbers --name t-parallel\n"
                      "part = sum(numbers)\n"
                      "who = (PANDA_INDEX, PANDA_COUNT, len(numbers))\n"
                      "print('chunk', PANDA_INDEX)\n")
    assert kernel.value("part") == [0 + 1 + 2 + 3, 4 + 5 + 6, 7 + 8 + 9]
    assert kernel.value("who") == [(0, 3, 4), (1, 3, 3), (2, 3, 3)]
    assert kernel.value("numbers") == list(range(10))           # the notebook's is whole
    for i in range(3):
        assert f"[{i}] chunk {i}" in reply.stdout


def test_bad_options_and_unshippable_variables_are_clear_errors(kernel):
    # IPython shows a UsageError as one line, no traceback
    reply = kernel.run("%%panda --parallel 0\nx = 1\n")
    assert reply.status == "error" and "UsageError: %%panda: --parallel needs at least 1 job" \
        in reply.stderr
    reply = kernel.run("%%panda --bogus\nx = 1\n")
    assert reply.status == "error" and "unknown option(s) --bogus" in reply.stderr
    kernel.ok("import threading\nlock = threading.Lock()")
    reply = kernel.run("%%panda\nwith lock:\n    x = 1\n")
    assert reply.status == "error" and "reads 'lock', which cannot be sent" in reply.stderr
    reply = kernel.run("%%panda\n!ls\n")
    assert reply.status == "error" and "not plain Python" in reply.stderr
    assert kernel.run("x").status == "error"


def _state(lab, name):
    try:
        return lab.task(name).jobs()["state"].tolist()
    except Exception:
        return None


def test_a_task_displays_as_a_live_widget_in_a_kernel(kernel, nlab):
    task = nlab.submit(_identity, [(1,), (2,)], name="t-widget")
    nlab.wait(task, timeout=30)
    reply = kernel.ok(f"import panda_lab\nlab = panda_lab.connect()\nlab.task({task})")
    (bundle,) = [d["data"] for d in reply.displays]
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"].startswith(
        f"task {task} 't-widget': done: all 2 jobs finished · 2/2 jobs")
    reply = kernel.ok("lab.monitor()")
    (bundle,) = [d["data"] for d in reply.displays]
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "t-widget" in bundle["text/plain"]
    reply = kernel.ok(f"print(type(lab.task({task}).jobs()).__name__)")
    assert reply.stdout.strip() == "DataFrame"


def _identity(x):
    return x

# ---- what a user meets: where jobs run, what a traceback points at, a restart -------------
# Kinds tested:
# - a job that runs somewhere else than the user thinks: a relative path in a ``%%panda``
#   cell and in an ``ex.submit`` resolves against the notebook's working directory (on the
#   notebook's machine), not the server's; a missing one says where the job ran.
# - a traceback that points at panda-lab instead of the user's code: internal frames are
#   folded, the user's own line is shown also for a function defined in a cell.
# - a client that dies with its server: after a restart on a new port the same ``lab`` and
#   its monitor carry on; with no server, the error is a few lines that name the fix.
#   That test is the module's last: it restarts the module's server.


def free_port(avoid: int) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != avoid:
            return port


def test_jobs_run_in_the_notebooks_directory(kernel, tmp_path):
    work = tmp_path / "analysis"
    work.mkdir()
    (work / "cuts.txt").write_text("pt > 20\n")
    kernel.ok(f"import os, panda_lab\nbefore = os.getcwd()\nos.chdir({str(work)!r})\n"
              "lab = panda_lab.connect(start=False)\n")
    reply = kernel.ok("%%panda --name t-cwd\ncut = open('cuts.txt').read().strip()\n")
    assert kernel.value("cut") == "pt > 20", reply.stdout
    kernel.ok("def read(name):\n    return open(name).read()\n"
              "ex = lab.executor(name='t-cwd-ex')\n"
              "text = ex.submit(read, 'cuts.txt').result(timeout=60)\n"
              "missing = ex.submit(read, 'nope.txt')\n")
    assert kernel.value("text") == "pt > 20\n"
    reply = kernel.run("missing.result(timeout=60)")
    assert reply.status == "error" and reply.error["ename"] == "FileNotFoundError"
    assert f"this job ran in {work}" in reply.traceback
    assert "a relative path resolves there" in reply.traceback
    kernel.ok("ex.shutdown()\nos.chdir(before)")


def test_a_traceback_points_at_the_users_code(kernel):
    kernel.ok("import panda_lab\nlab = panda_lab.connect(start=False)\n"
              "def fit(x):\n"
              "    scale = 1.0\n"
              "    return scale / x     # the user's line\n"
              "ex2 = lab.executor(name='t-tb')\n"
              "f = ex2.submit(fit, 0)\n")
    reply = kernel.run("f.result(timeout=60)")
    assert reply.error["ename"] == "ZeroDivisionError"
    tb = reply.traceback
    assert "return scale / x     # the user's line" in tb, tb  # the cell's own source
    assert "panda_lab/payload.py" not in tb and "panda_lab/pilot" not in tb, tb
    assert "internal frame" in tb  # folded, and says so
    kernel.ok("ex2.shutdown()")


@pytest.mark.slow
def test_a_live_lab_follows_its_restarted_server(kernel, module_server):
    kernel.ok("import panda_lab\nlab = panda_lab.connect(start=False)\n"
              "t = lab.submit(abs, [(-1,), (-2,)], name='t-before')\n"
              "lab.wait(t, timeout=60)\n"
              "mon = lab.task(t).monitor(interval=0.1)\nmon.wait(30)\n"
              "old_url = lab.url\n")
    module_server.stop()
    reply = kernel.run("lab.tasks()")
    assert reply.status == "error" and reply.error["ename"] == "ServerUnreachable"
    message = reply.error["evalue"]
    assert "does not answer" in message and "lab = panda_lab.connect()" in message
    assert len(reply.traceback.splitlines()) <= 5, reply.traceback  # no 33-line traceback
    old_port = int(module_server.info["url"].rsplit(":", 1)[1])
    extra = list(module_server.extra)
    module_server.extra += ["--port", str(free_port(avoid=old_port))]  # surely a new port
    try:
        module_server.start()
    finally:
        module_server.extra = extra
    assert kernel.value("lab.tasks().loc[t, 'state']") == "done"  # found by itself
    assert kernel.value("lab.url != old_url") is True
    kernel.ok("t2 = lab.submit(abs, [(-3,)], name='t-after')\n"
              "r = list(lab.results(lab.wait(t2, timeout=60)['id']).values())\n")
    assert kernel.value("r") == [3]
    kernel.ok("mon.refresh()\n")  # the monitor made before the restart looks again
    assert kernel.value("mon.snapshot.state") == "done"
