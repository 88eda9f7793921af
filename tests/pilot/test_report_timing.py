"""When a pilot reports its finished jobs: at once when someone waits for it, in bulk when
not.

The kind of fault: a report held back when it is what the user waits for (a task's first
partial result, the last job of a task), or a request per job when nobody waits (the
control plane's CPU is taken from the payloads on a small machine).  Members: a task's
first job to end on a pilot is reported at once while other jobs run; the next ones wait
for ``flush_interval``, then go together; a job of another task is again a first; a pilot
with nothing left running reports at once.  No server: a stand-in for urllib3's pool
(``Recorder``) records the requests.  And a pilot that stops hands its jobs held ahead
back saying they never started (``unstarted``: their next attempt does not count,
tests/store/test_unstarted_jobs.py), and does not say so of a job it had started.
"""

from __future__ import annotations

import io
import shutil
import time

import orjson
import pytest
import urllib3

from panda_lab.model import JobState
from panda_lab.pilot.pilot import Pilot, PilotOptions


class Recorder:
    """Stands in for urllib3's ``PoolManager``: records each request, answers a report."""

    def __init__(self) -> None:
        self.reports: list[list[int]] = []
        self.updates: list[dict] = []

    def urlopen(self, method: str, url: str, body: bytes | None = None, **kw):
        if url.endswith("/api/pilot/end"):
            return urllib3.HTTPResponse(body=io.BytesIO(b"{}"), status=200,
                                        preload_content=True)
        assert url.endswith("/api/pilot/update")
        updates = orjson.loads(body)["updates"]
        self.reports.append([u["id"] for u in updates])
        self.updates += updates
        return urllib3.HTTPResponse(body=io.BytesIO(b'{"ignored": [], "drop": []}'),
                                    status=200, preload_content=True)

    def clear(self) -> None:
        """What closing the pool calls: this stand-in holds no connection."""


@pytest.fixture
def pilot():
    p = Pilot(PilotOptions("http://lab.invalid", "LOCAL", "t", flush_interval=0.3))
    p.api._http = Recorder()
    p.workers[0].job = {"id": 99, "task": 9}   # another job runs all along
    yield p
    shutil.rmtree(p.spool, ignore_errors=True)


def end(p: Pilot, job_id: int, task: int) -> None:
    """What the pilot's loop does when a job's outcome comes: pending, then reports."""
    job = {"id": job_id, "task": task, "attempt": 1}
    p._set_pending(job, JobState.FINISHED, result="")
    p._first_of_task(job)
    p._maybe_flush()


def test_a_tasks_first_result_goes_at_once_and_the_next_ones_together(pilot):
    end(pilot, 1, task=7)
    assert pilot.api._http.reports == [[1]]
    end(pilot, 2, task=7)
    end(pilot, 3, task=7)
    assert pilot.api._http.reports == [[1]]     # others run: held for flush_interval
    time.sleep(0.35)
    pilot._maybe_flush()
    assert pilot.api._http.reports == [[1], [2, 3]]
    end(pilot, 4, task=8)                      # another task's first
    assert pilot.api._http.reports[-1] == [4]


def test_a_pilot_with_nothing_running_reports_at_once(pilot):
    end(pilot, 1, task=7)
    pilot.workers[0].job = None
    end(pilot, 2, task=7)
    assert pilot.api._http.reports == [[1], [2]]


def test_a_stopping_pilot_hands_back_its_jobs_held_ahead_as_unstarted(pilot):
    from collections import deque

    pilot.workers[0].job = None
    pilot.queue = deque([{"id": 5, "task": 7, "attempt": 1},
                         {"id": 6, "task": 7, "attempt": 1}])
    end(pilot, 4, task=7)                      # ran, ended: not a hand-back
    pilot._drain()
    got = {u["id"]: u for u in pilot.api._http.updates}
    assert got[5]["unstarted"] is True and got[6]["unstarted"] is True
    assert got[5]["error"]["message"] == "pilot stopped before the job ran"
    assert "unstarted" not in got[4]
