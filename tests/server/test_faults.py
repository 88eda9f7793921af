"""Faults injected into real processes, each with an exact final result and nothing
counted twice.

Kind (a fault that loses or doubles work): a pilot cut off from the server for longer
than the heartbeat timeout comes back and reports the attempt the server already gave to
another pilot (its late result must not replace the retry's); PostgreSQL is restarted,
and unreachable for 30 s (ten heartbeat timeouts), while a task runs; the server is SIGKILLed
while a bulk submission is being stored (the task is all there or not there, never in
part) and the client's retry, with the request's idempotency key, makes the task once
(also when repeated after the task exists: a replay, not a second task); the server is
stopped by a signal, as a service
manager or JupyterHub stops it (its clean-up runs: connection file removed, store closed,
exit status 0; uvicorn raised the signal again after its shutdown, which killed the
process before that clean-up).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from harness import ServerProcess, wait_for

from panda_lab import runtime
from panda_lab.model.states import JobState, TaskState


def square_and_pilot(x, t=1.5):
    """``(x * x, the pid of the pilot that ran it)``: a payload worker is a child of its
    pilot."""
    time.sleep(t)
    return x * x, os.getppid()


def _pilot(server: ServerProcess, log) -> subprocess.Popen:
    env = dict(os.environ, PANDA_LAB_PILOT_TOKEN=server.info["pilot_token"])
    return subprocess.Popen([sys.executable, "-m", "panda_lab.pilot", "--server",
                             server.info["url"], "--site", "LOCAL-GRID"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_a_pilot_back_after_the_heartbeat_timeout_does_not_replace_the_retry(home):
    server = ServerProcess(home, extra=["--no-pilots"]).start()
    late_log, retry_log = home / "late-pilot.log", home / "retry-pilot.log"
    pilots = []
    try:
        lab = server.lab()
        task = lab.submit(square_and_pilot, [(7,)], name="cut-off", site="LOCAL-GRID")
        with open(late_log, "ab") as log:
            late = _pilot(server, log)
        pilots.append(late)
        wait_for(lambda: [j for j in lab.jobs(task) if j["state"] == JobState.RUNNING],
                 30, what="the job running on the first pilot")
        late.send_signal(signal.SIGSTOP)  # cut off: no heartbeat, no report; its worker runs on
        first = wait_for(lambda: next((j for j in lab.jobs(task, all_attempts=True)
                                       if j["attempt"] == 1 and j["state"] == JobState.FAILED),
                                      None), 30, what="the heartbeat timeout")
        assert "lost heartbeat" in first["error_message"]
        with open(retry_log, "ab") as log:
            retry = _pilot(server, log)
        pilots.append(retry)
        assert lab.wait(task, timeout=60)["state"] == TaskState.DONE
        assert lab.results(task) == {0: (49, retry.pid)}
        late.send_signal(signal.SIGCONT)  # back, with a finished attempt to report
        wait_for(lambda: "server ignored 1 update(s)" in late_log.read_text(), 30,
                 what="the late pilot's report")
        # the retry's result stands; one finished attempt; the late one stays failed
        assert lab.results(task) == {0: (49, retry.pid)}
        attempts = lab.jobs(task, all_attempts=True)
        assert [(a["attempt"], a["state"]) for a in attempts] == [
            (1, JobState.FAILED), (2, JobState.FINISHED)]
        assert lab.task_info(task)["n_done"] == 1
        assert late.poll() is None  # it lives on, and serves again
    finally:
        for p in pilots:
            p.kill()
            p.wait(10)
        server.stop()


def _storing(home):
    """A predicate: whether the server is inside the submission's transaction now: the
    write-ahead log outgrew a few pages, which only a large uncommitted write does (the
    page cache spills before the commit)."""
    wal = home / "panda-lab.sqlite-wal"
    before = wal.stat().st_size if wal.exists() else 0
    return lambda: wal.exists() and wal.stat().st_size > before + (1 << 20)


def square_padded(x, pad):
    """``x * x``; ``pad`` only makes the submission large."""
    return x * x


@pytest.mark.slow
def test_a_submission_retried_across_a_server_kill_makes_one_whole_task(home):
    """Killed while it stores the submission, the server keeps none of it; the client's
    retry (one idempotency key) makes the task once, whole; a later repeat is a replay."""
    server = ServerProcess(home).start()
    pool = ThreadPoolExecutor(1)
    try:
        lab = server.lab()
        sent: list[tuple] = []
        post = lab.api.post

        def recording_post(path, body=None, **kw):
            sent.append((path, body, kw))
            return post(path, body, **kw)

        lab.api.post = recording_post
        n, pad = 500, b"p" * 6144  # ~3 MB of jobs: SQLite writes its log before the commit
        storing = _storing(home)
        submitted = pool.submit(lab.submit, square_padded, [(i, pad) for i in range(n)],
                                name="bulk-retried")
        wait_for(storing, 30, interval=0.005, what="the submission being stored")
        server.kill()
        assert not submitted.done()  # no answer: the client tries again, with its key
        server.start()
        task = submitted.result(timeout=60)
        info = lab.wait(task, timeout=120)
        assert info["state"] == TaskState.DONE and info["n_jobs"] == n
        assert [t["id"] for t in lab.list_tasks()] == [task]
        assert lab.results(task) == {i: i * i for i in range(n)}
        attempts = lab.jobs(task, all_attempts=True)
        assert len(attempts) == n and {a["state"] for a in attempts} == {JobState.FINISHED}
        assert lab.task_info(task)["n_done"] == n
        # the same request again (an answer lost after the commit): the first task's
        # answer, replayed; nothing new
        (path, body, kw), = sent
        key = kw["headers"]["Idempotency-Key"]
        with httpx.Client(base_url=lab.url, timeout=60, headers={
                "Authorization": f"Bearer {server.info['user_token']}"}) as raw:
            again = raw.post(path, json=body, headers={"Idempotency-Key": key})
            assert again.status_code == 200 and again.json()["task"] == task
            assert again.headers["Idempotent-Replayed"] == "true"
            assert again.json()["jobs"] == sorted(a["id"] for a in attempts)
            # the key sent with another request: refused, and said so
            other = raw.post(path, json={**body, "jobs": body["jobs"][:1]},
                             headers={"Idempotency-Key": key})
            assert other.status_code == 422 and "different request" in other.json()["detail"]
            bad = raw.post(path, json={"name": "x"}, headers={"Idempotency-Key": "two words"})
            assert bad.status_code == 422 and "Idempotency-Key" in str(bad.json()["detail"])
            assert [t["id"] for t in lab.list_tasks()] == [task]
            # jobs added to an open task (an executor's batch) with a key: added once
            opened = raw.post("/api/tasks", json={"name": "ex", "open": True}).json()["task"]
            batch, once = {"jobs": body["jobs"][:2]}, {"Idempotency-Key": "batch-1"}
            added = raw.post(f"/api/tasks/{opened}/jobs", json=batch, headers=once)
            again = raw.post(f"/api/tasks/{opened}/jobs", json=batch, headers=once)
            assert (added.status_code, again.status_code) == (201, 200)
            assert again.json() == added.json() and added.json()["indices"] == [0, 1]
            assert lab.task_info(opened)["n_jobs"] == 2
        lab.close()
        # a signal (a service manager's, JupyterHub's) stops it cleanly: its clean-up
        # runs and it exits 0, not killed by its own signal raised again
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
        assert runtime.read_connection(home) is None
        assert not (home / "panda-lab.sqlite-wal").exists()  # the store was closed
    finally:
        pool.shutdown(wait=False)
        server.stop()


SITE = """
[sites.ONE]
provisioner = "local"
pilots = 1
slots = 2
"""


def slow_square(x, t=0.3):
    time.sleep(t)
    return x * x


@pytest.mark.slow
def test_postgresql_restarted_and_down_mid_task_loses_and_doubles_nothing(home, postgres):
    (home / "sites.toml").write_text(SITE)
    server = ServerProcess(home, db_url=postgres.new_database(),
                           extra=["--sites", str(home / "sites.toml")]).start()
    try:
        lab = server.lab()
        n = 10
        task = lab.submit(slow_square, [(i,) for i in range(n)], name="pg-restart")
        wait_for(lambda: lab.task_info(task)["n_done"] >= 2, 60, what="some results")
        # restarted, and unreachable for 30 s meanwhile: ten times the heartbeat timeout
        # (3 s), longer than any one retry of a pilot or a client
        postgres.restart(down_s=30.0)
        info = lab.wait(task, timeout=120)
        assert info["state"] == TaskState.DONE and info["n_jobs"] == n
        assert lab.results(task) == {i: i * i for i in range(n)}
        finished = [j["job_index"] for j in lab.jobs(task, all_attempts=True)
                    if j["state"] == JobState.FINISHED]
        assert sorted(finished) == list(range(n))  # one finished attempt per job
        # nothing wasted either: the outage was told as a 503 to retry, not a 500 that
        # lost reports and ended pilots, and the watchdog judged silence from the return
        attempts = lab.jobs(task, all_attempts=True)
        assert [a for a in attempts if a["attempt"] > 1] == []
        lab.close()
        logs = "".join(p.read_text() for p in (home / "logs").glob("pilot-*.log"))
        assert "dropped" not in logs and "server refused" not in logs
        assert "error serving" not in server.log_tail(10**6)  # the server's 500s
    finally:
        server.stop()
