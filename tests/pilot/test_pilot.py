"""A pilot started by hand, anywhere that reaches the server."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from harness import ServerProcess, wait_for


def triple(x):
    return 3 * x


def slowly(x):
    time.sleep(0.3)
    return x


@pytest.fixture
def bare(home):
    """A server with no local pilots: every pilot here is started by the test."""
    s = ServerProcess(home, extra=["--no-pilots"]).start()
    yield s
    s.stop()


def pilot(server, *args, token=None):
    env = dict(os.environ, PANDA_LAB_PILOT_TOKEN=token or server.info["pilot_token"])
    return subprocess.Popen([sys.executable, "-m", "panda_lab.pilot", "--server",
                             server.info["url"], *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_pilot_started_by_hand_runs_jobs_and_exits_after_max_jobs(bare):
    lab = bare.lab()
    task = lab.submit(triple, [(i,) for i in range(8)], name="by-hand", site="LOCAL-GRID")
    p = pilot(bare, "--site", "LOCAL-GRID", "--max-jobs", "5")
    assert p.wait(60) == 0
    assert lab.task_info(task)["n_done"] == 5
    p2 = pilot(bare, "--site", "LOCAL-GRID", "--idle-exit", "1")
    info = lab.wait(task, timeout=60)
    assert info["state"] == "done" and lab.results(task) == {i: 3 * i for i in range(8)}
    assert p2.wait(30) == 0
    pilots = {p["id"]: p for p in lab.pilots()}
    assert len(pilots) == 2 and {p["state"] for p in pilots.values()} == {"finished"}
    assert sum(p["jobs_done"] for p in pilots.values()) == 8


def test_pilot_for_an_unknown_site_or_with_a_bad_token_exits_with_a_reason(bare):
    p = pilot(bare, "--site", "NOWHERE")
    assert p.wait(30) == 2
    assert "NOWHERE" in p.stdout.read()
    p = pilot(bare, "--site", "LOCAL-GRID", token="wrong")
    assert p.wait(30) == 2
    assert "401" in p.stdout.read()
    r = subprocess.run([sys.executable, "-m", "panda_lab.pilot", "--server", bare.info["url"],
                        "--site", "LOCAL-GRID"], env={k: v for k, v in os.environ.items()
                                                     if k != "PANDA_LAB_PILOT_TOKEN"},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "no token" in r.stderr


def test_pilot_rides_out_a_server_outage(bare):
    lab = bare.lab()
    task = lab.submit(slowly, [(i,) for i in range(12)], name="outage", site="LOCAL-CLOUD")
    p = pilot(bare, "--site", "LOCAL-CLOUD", "--idle-exit", "2")
    wait_for(lambda: lab.task_info(task)["n_done"] >= 2, 60, what="first results")
    bare.kill()
    time.sleep(1.5)  # the pilot finishes jobs and retries its reports with backoff
    bare.start()
    lab = bare.lab()
    info = lab.wait(task, timeout=120)
    assert info["state"] == "done" and lab.results(task) == {i: i for i in range(12)}
    # No job that ran runs again.  One exception, recovered as designed: a job handed
    # out by an acquisition whose reply died with the server never reaches the pilot
    # (its retried acquisition gets others), so it never starts; the pilot's next
    # acquisition asks for the check that fails it, and it gets a second attempt
    # (tests/server/test_lost_answers.py).
    attempts = lab.jobs(task, all_attempts=True)
    first = {j["job_index"]: j for j in attempts if j["attempt"] == 1}
    again = [j["job_index"] for j in attempts if j["attempt"] > 1]
    assert all(first[i]["started_at"] is None for i in again), attempts
    assert len(again) <= 1, attempts
    assert p.wait(60) == 0


def talk_then_wait(lines, pause):
    import sys

    for line in lines:
        print(line, flush=True)
    print("to stderr", file=sys.stderr)
    time.sleep(pause)
    print("done")
    return len(lines)


def test_a_running_jobs_output_reaches_the_server_before_it_ends(server):
    """The worker sends its output tails while the job runs, so a notebook can show them
    live; the final report still carries the whole tail."""
    lab = server.lab()
    task = lab.submit(talk_then_wait, [(["first", "second"], 4.0)], name="talk")

    def live():
        job = lab.jobs(task)[0]
        return job if job["state"] == "running" and "second" in (job["stdout_tail"] or "") \
            else None

    job = wait_for(live, 20, what="the output of the running job")
    assert job["stdout_tail"] == "first\nsecond\n" and job["stderr_tail"] == "to stderr\n"
    assert lab.wait(task, timeout=30)["state"] == "done"
    job = lab.jobs(task)[0]
    assert job["stdout_tail"] == "first\nsecond\ndone\n"
