"""Faults injected into real processes, each with an exact final result and nothing
counted twice.

Kind (a fault that loses or doubles work): a pilot cut off from the server for longer
than the heartbeat timeout comes back and reports the attempt the server already gave to
another pilot (its late result must not replace the retry's); PostgreSQL is restarted,
and unreachable for 30 s (ten heartbeat timeouts), while a task runs; the server is SIGKILLed
while a bulk submission is being stored (the task is all there or not there, never in
part); the server is stopped by a signal, as a service
manager or JupyterHub stops it (its clean-up runs: connection file removed, store closed,
exit status 0; uvicorn raised the signal again after its shutdown, which killed the
process before that clean-up).
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time

import orjson
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


def _post_without_waiting(url: str, path: str, token: str, body: bytes) -> socket.socket:
    """Send a whole HTTP request and return its socket, its answer not read."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.sendall((f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
                  f"\r\nAuthorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n"
                  ).encode() + body)
    return sock


def _storing(home):
    """A predicate: whether the server is inside the submission's transaction now: the
    write-ahead log outgrew a few pages, which only a large uncommitted write does (the
    page cache spills before the commit)."""
    wal = home / "panda-lab.sqlite-wal"
    before = wal.stat().st_size if wal.exists() else 0
    return lambda: wal.exists() and wal.stat().st_size > before + (1 << 20)


@pytest.mark.slow
def test_a_server_killed_during_a_bulk_submission_keeps_all_or_nothing(home):
    server = ServerProcess(home, extra=["--no-pilots"]).start()
    try:
        n = 8_000  # enough that SQLite writes to its log before the commit
        payload = base64.b64encode(b"x" * 64).decode()
        body = orjson.dumps({"name": "bulk", "jobs": [{"payload": payload}] * n})
        storing = _storing(home)
        sock = _post_without_waiting(server.info["url"], "/api/tasks",
                                     server.info["user_token"], body)
        wait_for(storing, 30, interval=0.005, what="the submission being stored")
        server.kill()
        sock.settimeout(10)
        assert sock.recv(100) == b"", "the server answered before it was killed"
        sock.close()
        server.start()
        lab = server.lab()
        # a task is there in whole or not at all, never in part: here, not at all
        assert lab.list_tasks() == []
        assert lab.api.get("/api/counts")["waiting"] == 0
        lab.close()
        # a signal (a service manager's, JupyterHub's) stops it cleanly: its clean-up
        # runs and it exits 0, not killed by its own signal raised again
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
        assert runtime.read_connection(home) is None
        assert not (home / "panda-lab.sqlite-wal").exists()  # the store was closed
    finally:
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
