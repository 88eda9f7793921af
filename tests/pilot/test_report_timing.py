"""When a pilot reports its finished jobs: at once when someone waits for it, in bulk when
not.

The kind of fault: a report held back when it is what the user waits for (a task's first
partial result, the last job of a task), or a request per job when nobody waits (the
control plane's CPU is taken from the payloads on a small machine).  Members: a task's
first job to end on a pilot is reported at once while other jobs run; the next ones wait
for ``flush_interval``, then go together; a job of another task is again a first; a pilot
with nothing left running reports at once, in the acquisition that asks for its next job
(one request, not a report and then an acquisition); an acquisition made ahead, while a
job runs, carries only reports that are due (not one per job); an acquisition refused
with reports in it sends them alone, as a report is sent, and the pilot keeps running;
and with a heartbeat due the reports go first, alone (the heartbeat's answer drops the
jobs the server ended, a report with them, which then never went).  No server: a
stand-in for urllib3's pool (``Recorder``) records the requests.  And a pilot that stops
hands its jobs held ahead back saying they never started (``unstarted``: their next
attempt does not count, tests/store/test_unstarted_jobs.py), and does not say so of a
job it had started.
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
    """Stands in for urllib3's ``PoolManager``: records each request (``requests``: the
    path's last part and the ids of the reports it carried), answers reports and
    acquisitions (no job; ``refuse``: the acquisitions carrying reports get a 422)."""

    def __init__(self) -> None:
        self.reports: list[list[int]] = []
        self.updates: list[dict] = []
        self.requests: list[tuple[str, list[int]]] = []
        self.refuse = False

    def urlopen(self, method: str, url: str, body: bytes | None = None, **kw):
        if url.endswith("/api/pilot/end"):
            return urllib3.HTTPResponse(body=io.BytesIO(b"{}"), status=200,
                                        preload_content=True)
        updates = orjson.loads(body).get("updates", [])
        self.requests.append((url.rsplit("/", 1)[-1], [u["id"] for u in updates]))
        if url.endswith("/api/pilot/acquire"):
            if self.refuse and updates:
                return urllib3.HTTPResponse(body=io.BytesIO(b'{"detail": "no"}'),
                                            status=422, preload_content=True)
            return urllib3.HTTPResponse(
                body=io.BytesIO(b'{"jobs": [], "ignored": [], "drop": []}'
                                if updates else b'{"jobs": []}'),
                status=200, preload_content=True)
        assert url.endswith("/api/pilot/update")
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
    p.last_contact = time.monotonic()          # no heartbeat due
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


def test_a_pilot_with_nothing_running_reports_at_once_with_its_next_acquisition(pilot):
    end(pilot, 1, task=7)
    pilot.workers[0].job = None
    pilot.opts.long_poll = 0.0
    end(pilot, 2, task=7)
    assert pilot.api._http.reports == [[1]]     # not alone: the acquisition next takes it
    pilot._acquire()
    assert pilot.api._http.requests == [("update", [1]), ("acquire", [2])]
    assert pilot.pending == {}


def test_with_a_heartbeat_due_the_reports_go_first_alone(pilot):
    pilot.workers[0].job = None
    pilot.last_contact = time.monotonic() - pilot.heartbeat_interval - 1
    end(pilot, 1, task=7)
    assert pilot.api._http.requests == [("update", [1])]
    assert pilot.pending == {}


def test_an_acquisition_ahead_carries_only_reports_that_are_due(pilot):
    pilot.measured[9] = None                    # the running job's task is measured here
    pilot.workers[0].started_at = time.time()
    pilot.mean_duration = 10.0                  # its slot's next job is not asked for yet
    end(pilot, 1, task=7)                       # a first: due at once, and goes alone
    end(pilot, 2, task=7)                       # not due for flush_interval
    assert pilot.api._http.requests == [("update", [1])]
    pilot.mean_duration = 0.01                  # the running job ends soon: ask ahead
    pilot._acquire()
    assert pilot.api._http.requests[-1] == ("acquire", [])
    assert list(pilot.pending) == [2]
    time.sleep(0.35)
    pilot.asked_ahead.clear()
    pilot._maybe_flush()                        # due, and an acquisition comes next
    assert pilot.api._http.requests[-1] == ("acquire", [])
    pilot._acquire()
    assert pilot.api._http.requests[-1] == ("acquire", [2])
    assert pilot.pending == {}


def test_an_acquisition_refused_with_reports_sends_them_alone(pilot):
    pilot.workers[0].job = None
    pilot.opts.long_poll = 0.0
    pilot.api._http.refuse = True
    end(pilot, 1, task=7)
    pilot._acquire()                            # refused: no exception, the pilot goes on
    assert pilot.api._http.requests == [("acquire", [1]), ("update", [1])]
    assert pilot.pending == {}
    pilot._acquire()                            # the next acquisition, without reports
    assert pilot.api._http.requests[-1] == ("acquire", [])


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
