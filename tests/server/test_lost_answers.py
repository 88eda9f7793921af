"""Jobs handed out in an answer the pilot never read.

Kind tested: work the server gave a pilot that the pilot never learned of, left to wait
for the heartbeat timeout (60 s by default) before it runs again.  A pilot's requests go
one after another, so after a transport failure (the server answered, the connection
broke, the client asked again) every job on the pilot that it does not hold is such a
job.  Members: an acquisition whose answer was lost (its jobs failed as a system error
and retried at once, the retry handed out by the same acquisition); answers lost in a
row (a job that never ran never ends for it: its retries do not count against its
attempts, up to ``LOST_ATTEMPTS``); a job the pilot started and no longer holds (retried
as any failure, counted); a job the pilot ran and whose report is still waiting in the
pilot (held, so never failed); the check asked for only after a transport failure (an
acquisition without it fails nothing); the pilot's side: it holds its unsent reports'
jobs, and asks for the check on the acquisition after a transport failure, not before
one nor forever after.
"""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from panda_lab.model.retry import LOST_ATTEMPTS, Cause, Previous, next_attempt
from panda_lab.server.api_pilot import LOST_ON_THE_WAY, NO_LONGER_HELD
from panda_lab.server.app import Server, create_app
from panda_lab.server.config import ServerConfig

SITE = "LOCAL-GRID"


@pytest.fixture
def api(tmp_path):
    server = Server(ServerConfig(home=tmp_path, provision=False, heartbeat_timeout=60.0))
    h = {"Authorization": f"Bearer {server.site_tokens[SITE]}"}
    with TestClient(create_app(server)) as client:
        pid = client.post("/api/pilot/register", headers=h, json={
            "site": SITE, "host": "h", "pid": 1, "slots": 2, "info": {}}).json()["pilot"]

        def acquire(held: list[int], n: int = 1, **extra) -> list[dict]:
            r = client.post("/api/pilot/acquire", headers=h, json={
                "pilot": pid, "site": SITE, "n": n, "wait": 0, "held": held, **extra})
            assert r.status_code == 200, r.text
            return r.json()["jobs"]

        yield server, acquire
    server.close()


def _attempts(server: Server, task: int) -> list[dict]:
    return server.db_from_thread(server.store.list_jobs, task, all_attempts=True)


def test_an_acquisition_whose_answer_was_lost_is_retried_at_the_next_one(api):
    server, acquire = api
    task, *_ = server.db_from_thread(server.store.create_task, "t",
                                     [{"payload": b"x"}] * 2, site=SITE)
    [lost] = acquire([])            # the answer never reached the pilot ...
    [got] = acquire([])             # ... which asked again and got the other job
    assert got["index"] != lost["index"]
    # the next acquisition, after the transport failure: the lost job fails and its
    # retry is handed out at once
    [again] = acquire([got["id"]], lost_check=True)
    assert (again["index"], again["attempt"]) == (lost["index"], 2)
    by_id = {j["id"]: j for j in _attempts(server, task)}
    first = by_id[lost["id"]]
    assert first["state"] == "failed" and first["error_category"] == "system"
    assert first["error_message"] == LOST_ON_THE_WAY
    # it never ran: its retry does not count against its attempts
    assert by_id[again["id"]]["max_attempts"] == first["max_attempts"] + 1
    assert server.db_from_thread(server.store.get_job, got["id"])["state"] == "sent"


def test_held_jobs_and_unchecked_acquisitions_fail_nothing(api):
    server, acquire = api
    task, *_ = server.db_from_thread(server.store.create_task, "t",
                                     [{"payload": b"x"}] * 3, site=SITE)
    a, b = acquire([], n=2)
    # no transport failure: no check, whatever the pilot says it holds
    [c] = acquire([], n=1)
    # held (queued, running, or its report waiting in the pilot): the check leaves them
    assert acquire([a["id"], b["id"], c["id"]], lost_check=True) == []
    states = {j["id"]: j["state"] for j in _attempts(server, task)}
    assert states == {a["id"]: "sent", b["id"]: "sent", c["id"]: "sent"}


class _Api:
    """The pilot's client, standing in for the server: records each acquisition's body
    and fails the transport ``failures`` times during the call it is told to."""

    def __init__(self) -> None:
        self.transport_errors = 0
        self.bodies: list[dict] = []
        self.fail_during_next = 0

    def post(self, path: str, body: dict, **kw) -> dict:
        assert path == "/api/pilot/acquire"
        self.bodies.append(body)
        self.transport_errors += self.fail_during_next  # retried inside the client
        self.fail_during_next = 0
        return {"jobs": []}


def test_the_pilot_asks_for_the_check_once_after_a_transport_failure(tmp_path):
    import shutil

    from panda_lab.model import JobState
    from panda_lab.pilot.pilot import Pilot, PilotOptions

    p = Pilot(PilotOptions(server="http://127.0.0.1:9", site="A", token="t", slots=2,
                           flush_interval=3600.0))
    try:
        p.api = api = _Api()
        p._flush = lambda retry_for=None: None  # reports stay unsent here
        p.pilot_id = 1
        p.workers[0].job = {"id": 8, "task": 1}  # one slot busy: the report is not due
        p.workers[0].started_at = time.time()
        p._set_pending({"id": 7, "attempt": 1}, JobState.FINISHED)  # its report waits
        p._acquire()
        assert "lost_check" not in api.bodies[-1] and api.bodies[-1]["held"] == [8, 7]
        api.fail_during_next = 1      # this acquisition's first answer is lost
        p._acquire()
        assert "lost_check" not in api.bodies[-1]
        p._acquire()
        assert api.bodies[-1]["lost_check"] is True
        p._acquire()
        assert "lost_check" not in api.bodies[-1]
        api.transport_errors += 1     # a report's or a heartbeat's answer lost
        p._acquire()
        assert api.bodies[-1]["lost_check"] is True
        # a report does not hold the jobs it reports (they end with it)
        assert p._held(reporting=True) == [8] and p._held() == [8, 7]
        p.workers[0].job = None
    finally:
        for w in p.workers:
            w.close()
        shutil.rmtree(p.spool, ignore_errors=True)


def test_answers_lost_in_a_row_never_end_a_job_that_never_ran(api):
    """The job of a lost answer is retried in the next acquisition's answer, the one most
    likely lost too while the link is down.  Were each loss to spend one of its attempts
    (3 by default), a burst of lost answers (a server restarting, a flapping link) would
    fail for good a job no pilot ever started."""
    server, acquire = api
    task, *_ = server.db_from_thread(server.store.create_task, "t", [{"payload": b"x"}],
                                     site=SITE)
    acquire([])                             # lost
    for _ in range(4):
        acquire([], lost_check=True)        # each answer lost in turn
    attempts = sorted(_attempts(server, task), key=lambda a: a["attempt"])
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4, 5]
    assert all(a["started_at"] is None for a in attempts)  # it never ran
    assert [a["state"] for a in attempts] == ["failed"] * 4 + ["sent"]


def test_a_job_the_pilot_started_and_no_longer_holds_is_retried_as_a_failure(api):
    server, acquire = api
    task, *_ = server.db_from_thread(server.store.create_task, "t", [{"payload": b"x"}],
                                     site=SITE)
    [job] = acquire([])
    pilot = server.db_from_thread(server.store.get_job, job["id"])["pilot_id"]
    server.db_from_thread(server.store.apply_updates, pilot, [
        {"id": job["id"], "attempt": 1, "state": "running", "started_at": 1.0}])
    [again] = acquire([], lost_check=True)  # it ran, and the pilot lost track of it
    first = {j["id"]: j for j in _attempts(server, task)}[job["id"]]
    assert first["error_message"] == NO_LONGER_HELD
    assert again["attempt"] == 2            # counted: its limit is unchanged
    assert server.db_from_thread(server.store.get_job, again["id"])["max_attempts"] == \
        first["max_attempts"]


def test_lost_answers_stop_costing_nothing_after_lost_attempts():
    """A fault that loses every answer must not hand a job out for ever: past
    ``LOST_ATTEMPTS`` a lost answer counts as a system failure."""
    prev = Previous(attempt=1, max_attempts=3, site="A", sites=frozenset({"A"}),
                    near=frozenset())
    nxt = next_attempt(prev, Cause.LOST)
    assert (nxt.attempt, nxt.max_attempts, nxt.avoid) == (2, 4, frozenset())
    last = Previous(attempt=LOST_ATTEMPTS, max_attempts=LOST_ATTEMPTS + 2, site="A",
                    sites=frozenset({"A"}), near=frozenset())
    beyond = next_attempt(last, Cause.LOST, category="system")
    assert beyond is not None and beyond.max_attempts == last.max_attempts  # counted
    spent = Previous(attempt=LOST_ATTEMPTS, max_attempts=LOST_ATTEMPTS, site="A",
                     sites=frozenset({"A"}), near=frozenset())
    assert next_attempt(spent, Cause.LOST, category="system") is None
    assert next_attempt(prev, Cause.LOST, task_aborted=True) is None
