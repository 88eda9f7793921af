"""Reliability with real processes: pilots and servers die, nothing is lost or counted twice."""

from __future__ import annotations

import base64
import os
import signal
import time

import pytest
from harness import ServerProcess, pid_alive, wait_for

from panda_lab.http import ApiClient


def slow_square(x, t=0.3):
    time.sleep(t)
    return x * x


def fail_user(x):
    print(f"processing {x}")
    raise ValueError(f"bad input {x}")


def die(x):
    os._exit(3)


def sleeper(t):
    time.sleep(t)
    return t


def _running_job_pilot(lab, task):
    """(job, pilot) of a job that is running now."""
    for j in lab.jobs(task):
        if j["state"] == "running" and j["pilot_id"]:
            return j, next(p for p in lab.pilots() if p["id"] == j["pilot_id"])
    return None


def test_pilot_killed_mid_job_is_detected_and_retried(lab):
    task = lab.submit(slow_square, [(i, 1.0) for i in range(6)], name="kill-a-pilot")
    job, pilot = wait_for(lambda: _running_job_pilot(lab, task), 30, what="a running job")
    os.kill(pilot["pid"], signal.SIGKILL)
    info = lab.wait(task, timeout=90)
    assert info["state"] == "done"
    assert lab.results(task) == {i: i * i for i in range(6)}
    attempts = [j for j in lab.jobs(task, all_attempts=True) if j["job_index"] == job["job_index"]]
    assert [a["attempt"] for a in attempts] == [1, 2]
    first, second = attempts
    assert first["state"] == "failed" and first["error_category"] == "system"
    # its provisioner saw the process end: no waiting for the heartbeat timeout (3 s here)
    assert "ended (killed by signal 9) while holding the job" in first["error_message"]
    assert first["ended_at"] - first["heartbeat_at"] < 3.0
    assert second["state"] == "finished" and second["site"] != first["site"]
    assert lab.api.get(f"/api/jobs/{second['id']}")["broker_info"]["rejected"] \
        .get(first["site"], "").startswith("avoided")
    assert next(p for p in lab.pilots() if p["id"] == pilot["id"])["state"] == "lost"


def test_a_silent_pilot_started_by_hand_loses_its_jobs_after_the_heartbeat_timeout(home):
    """A pilot no provisioner of this server started: only its silence tells."""
    import subprocess
    import sys

    server = ServerProcess(home, extra=["--no-pilots"]).start()
    try:
        lab = server.lab()
        task = lab.submit(slow_square, [(1, 30.0)], name="silent", retries=0,
                          site="LOCAL-GRID")
        env = dict(os.environ, PANDA_LAB_PILOT_TOKEN=server.info["pilot_token"])
        p = subprocess.Popen([sys.executable, "-m", "panda_lab.pilot", "--server",
                              server.info["url"], "--site", "LOCAL-GRID"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _running_job_pilot(lab, task), 30, what="the job running")
        p.send_signal(signal.SIGSTOP)          # alive but silent: no heartbeat, no exit
        info = lab.wait(task, timeout=30)
        p.kill()
        p.wait(10)
        (job,) = lab.jobs(task)
        assert info["state"] == "failed" and job["error_category"] == "system"
        assert "lost heartbeat: no word from its pilot for over 3 s" in job["error_message"]
    finally:
        server.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_server_killed_mid_task_and_restarted_loses_nothing(backend, home, request):
    db_url = request.getfixturevalue("postgres").new_database() if backend == "postgresql" \
        else None
    server = ServerProcess(home, db_url=db_url).start()
    try:
        lab = server.lab()
        n = 24
        task = lab.submit(slow_square, [(i, 0.2) for i in range(n)], name="crash")
        wait_for(lambda: lab.task_info(task)["n_done"] >= 4, 60, what="some results")
        done_before = lab.results(task)
        old_url = server.info["url"]
        server.kill()
        time.sleep(1.0)  # pilots keep working and retrying their reports meanwhile
        server.start()
        assert server.info["url"] == old_url, "a restarted server reuses its port"
        lab = server.lab()
        info = lab.wait(task, timeout=120)
        assert info["state"] == "done" and info["n_jobs"] == n
        results = lab.results(task)
        assert results == {i: i * i for i in range(n)}
        for index, value in done_before.items():
            assert results[index] == value
        # One result per job index, and exactly one finished attempt per job.
        finished = [j for j in lab.jobs(task, all_attempts=True) if j["state"] == "finished"]
        assert sorted(j["job_index"] for j in finished) == list(range(n))
    finally:
        server.stop()


def test_stale_and_foreign_updates_are_ignored_and_final_states_stay(server, lab):
    pilot_api = ApiClient(server.info["url"], server.info["pilot_token"])
    task = lab.submit(slow_square, [(3, 0.0)], name="stale")
    lab.wait(task, timeout=60)
    (job,) = lab.jobs(task)
    assert job["state"] == "finished"
    result = base64.b64encode(b"junk").decode()
    reply = pilot_api.post("/api/pilot/update", {"pilot": job["pilot_id"], "updates": [
        {"id": job["id"], "attempt": job["attempt"] + 1, "state": "failed",
         "error": {"category": "system", "message": "late"}},
        {"id": job["id"], "attempt": job["attempt"], "state": "finished", "result": result},
    ]})
    reasons = [i["reason"] for i in reply["ignored"]]
    assert any("stale attempt" in r for r in reasons)
    assert any("already finished" in r for r in reasons)
    again = lab.api.get(f"/api/jobs/{job['id']}")
    assert again["state"] == "finished"
    assert [h["state"] for h in again["history"]][-1] == "finished"
    assert lab.results(task) == {0: 9}


def test_user_error_is_reported_in_full_and_not_retried(lab):
    task = lab.submit(fail_user, [(7,)], name="user-error", retries=3)
    assert lab.wait(task, timeout=60)["state"] == "failed"
    (job,) = lab.failures(task)
    assert job["attempt"] == 1 and job["error_category"] == "user"
    assert job["error_message"] == "ValueError: bad input 7"
    assert "fail_user" in job["error_traceback"]
    assert "processing 7" in job["stdout_tail"]
    handle = lab.task(task)
    exc = handle.errors()[0]
    assert isinstance(exc, ValueError) and "bad input 7" in str(exc)


def test_walltime_and_dead_worker_are_classified(lab):
    task = lab.submit(sleeper, [(30,)], name="walltime", walltime_s=1.0, retries=1)
    info = lab.wait(task, timeout=60)
    assert info["state"] == "failed"
    attempts = lab.jobs(task, all_attempts=True)
    assert {a["error_category"] for a in attempts} == {"timeout"}
    assert "walltime of 1 s" in attempts[0]["error_message"]
    assert len(attempts) == 2  # timeouts retry, on the same site preference

    task = lab.submit(die, [(0,)], name="dead-worker", retries=1)
    assert lab.wait(task, timeout=60)["state"] == "failed"
    attempts = lab.jobs(task, all_attempts=True)
    assert [a["error_category"] for a in attempts] == ["system", "system"]
    assert "exit code 3" in attempts[0]["error_message"]


def test_kill_stops_the_running_payload_and_the_pilot_lives_on(lab):
    task = lab.submit(sleeper, [(60,)], name="to-kill", site="LOCAL-HPC")
    job, pilot = wait_for(lambda: _running_job_pilot(lab, task), 30, what="the job running")
    t = time.monotonic()
    lab.kill(task)
    assert lab.task_info(task)["state"] == "aborted"
    # The pilot learns at its next heartbeat and kills the worker; then it takes new work.
    after = lab.submit(slow_square, [(5, 0.0)], name="after-kill", site="LOCAL-HPC")
    assert lab.wait(after, timeout=30)["state"] == "done"
    assert time.monotonic() - t < 20
    assert pid_alive(pilot["pid"])
    assert lab.jobs(after)[0]["pilot_id"] == pilot["id"]
    assert lab.api.get(f"/api/jobs/{job['id']}")["state"] == "cancelled"
