"""A job that kills its pilot at once ends after a few attempts, each saying what the
server knows.

The kind of fault: an attempt's start the server was not told of taken for a start that
did not happen. A job that kills its pilot within the pilot's flush interval is never
reported running; it was recorded as "ended before the job ran" and retried without
counting up to 20 times (20 pilots killed, its ``retries=0`` ignored). A real server, its
local provisioner restarting the killed pilots, and that job.

Each attempt's message says what the server knew: a pilot whose worker process was
still starting (its imports, on a loaded machine, past the pilot's flush interval of
0.5 s) reports the job running before the job can kill it, and that attempt is a
failure seen to have started, counted as any other (``retries=0``: the last).
"""

from __future__ import annotations

import pytest
from harness import ServerProcess

from panda_lab.model import JobState
from panda_lab.model.retry import UNSEEN_ATTEMPTS


def _kill_my_pilot():
    import os
    import signal
    import time

    os.kill(os.getppid(), signal.SIGKILL)   # the worker's parent is its pilot
    time.sleep(5)


@pytest.mark.slow
def test_a_job_that_kills_its_pilot_ends_after_a_few_attempts(home):
    server = ServerProcess(home).start()
    try:
        lab = server.lab()
        task = lab.submit(_kill_my_pilot, [()], name="killer", site="LOCAL-GRID", retries=0)
        assert lab.wait(task, timeout=120)["state"] == "failed"
        attempts = sorted(lab.jobs(task, all_attempts=True), key=lambda a: a["attempt"])
        assert all(a["state"] == JobState.FAILED for a in attempts)
        seen = []
        for a in attempts:
            assert "ended (killed by signal 9)" in a["error_message"]
            assert "before the job ran" not in a["error_message"]
            states = {h["state"] for h in lab.api.get(f"/api/jobs/{a['id']}")["history"]}
            started = JobState.RUNNING in states
            # the message says what the server knew of the start
            assert ("while holding the job" in a["error_message"]) == started, (a, states)
            assert ("before it reported the job's start" in a["error_message"]) != started
            seen.append(started)
        # unseen starts are retried without counting, up to UNSEEN_ATTEMPTS; a seen one
        # counts, and with retries=0 it is the last
        assert not any(seen[:-1]), seen
        assert len(attempts) <= UNSEEN_ATTEMPTS
        if not seen[-1]:
            assert len(attempts) == UNSEEN_ATTEMPTS, seen
    finally:
        server.stop()
