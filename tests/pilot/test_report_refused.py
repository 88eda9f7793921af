"""A report the server refuses for what one of its updates carries loses nothing else.

The kind of fault: a batch of reports refused whole for one update over the server's
limits (an exception whose class name has 1,500 characters, where the server takes
1,000), so the finished results batched with it were dropped and their jobs retried as
lost (40 short jobs: 24 results, 344 attempts, the task "finished"). Members: the pilot
keeps every text within the server's limits (the error's type clipped as its message and
traceback are); a batch refused (422, 413) is sent again one report at a time; a report
refused alone goes without what it carries beyond its state and result (output, reads,
cache actions, error details); refused still, a final one becomes a system failure
saying why, and a running one is dropped (its final report follows); a server
unavailable (503) meanwhile keeps the rest for later. Unit tests with a stand-in for
urllib3's pool (``Refuser``); then a real server and pilots with the job that found it.
"""

from __future__ import annotations

import io
import shutil
import time

import orjson
import pytest
import urllib3
from harness import ServerProcess

from panda_lab.model import JobState
from panda_lab.pilot.pilot import Pilot, PilotOptions


class Refuser:
    """Stands in for urllib3's pool: refuses (422) a report carrying an update that has
    ``stdout`` "BAD", or whose id is in ``always`` unless it is a system failure;
    answers 503 once ``unavailable`` reports were taken; records what it took."""

    def __init__(self, always: tuple[int, ...] = (), unavailable: int | None = None) -> None:
        self.always, self.unavailable = set(always), unavailable
        self.taken: list[dict] = []
        self.requests = 0

    def _answer(self, status: int, body: bytes):
        return urllib3.HTTPResponse(body=io.BytesIO(body), status=status, preload_content=True)

    def urlopen(self, method: str, url: str, body: bytes | None = None, **kw):
        assert url.endswith("/api/pilot/update")
        self.requests += 1
        updates = orjson.loads(body)["updates"]
        if self.unavailable is not None and len(self.taken) >= self.unavailable:
            return self._answer(503, b'{"detail": "database restarting"}')
        for u in updates:
            if u.get("stdout") == "BAD" or (
                    u["id"] in self.always and (u.get("error") or {}).get("category") != "system"):
                return self._answer(422, b'{"detail": "updates.0.stdout: too long"}')
        self.taken += updates
        return self._answer(200, b'{"ignored": [], "drop": []}')

    def clear(self) -> None:
        """What closing the pool calls: this stand-in holds no connection."""


@pytest.fixture
def pilot():
    p = Pilot(PilotOptions("http://lab.invalid", "LOCAL", "t"))
    p.pilot_id = 1
    yield p
    shutil.rmtree(p.spool, ignore_errors=True)


def pend(p: Pilot, job_id: int, state: JobState = JobState.FINISHED, **fields) -> None:
    p._set_pending({"id": job_id, "task": 7, "attempt": 1}, state, **fields)


def test_one_bad_update_does_not_lose_the_batch(pilot):
    pilot.api._http = stub = Refuser()
    pend(pilot, 1, result="AQ==")
    pend(pilot, 2, result="Ag==", stdout="BAD")     # over a limit, say
    pend(pilot, 3, result="Aw==")
    pilot._flush()
    got = {u["id"]: u for u in stub.taken}
    assert sorted(got) == [1, 2, 3] and pilot.pending == {}
    assert got[2]["result"] == "Ag==" and "stdout" not in got[2]   # sent lean, result kept
    assert got[1]["result"] == "AQ==" and got[3]["result"] == "Aw=="


def test_refused_even_lean_a_final_report_becomes_a_failure_saying_why(pilot):
    pilot.api._http = stub = Refuser(always=(2, 3))
    pend(pilot, 1, result="AQ==")
    pend(pilot, 2, result="Ag==")
    pend(pilot, 3, JobState.RUNNING, started_at=time.time())
    pilot._flush()
    got = {u["id"]: u for u in stub.taken}
    assert sorted(got) == [1, 2]                     # the running report dropped
    assert got[2]["state"] == "failed" and got[2]["error"]["category"] == "system"
    assert "refused the pilot's report" in got[2]["error"]["message"]
    assert "too long" in got[2]["error"]["message"]  # the server's reason, passed on
    assert pilot.pending == {}


def test_a_server_unavailable_meanwhile_keeps_the_rest(pilot):
    pilot.api._http = stub = Refuser(unavailable=1)
    pilot.api.retry_for = 0.0
    pend(pilot, 1, result="AQ==", stdout="BAD")
    pend(pilot, 2, result="Ag==")
    pend(pilot, 3, result="Aw==")
    pilot._flush()
    assert [u["id"] for u in stub.taken] == [1]
    assert sorted(pilot.pending) == [2, 3]           # sent later, nothing lost


def _bad_job(i):
    import time

    time.sleep(0.03)
    if i == 7:
        raise type("E" * 1500, (Exception,), {})("bad")
    return 2 * i


@pytest.mark.slow
def test_a_failure_with_an_overlong_type_loses_no_other_result(home):
    server = ServerProcess(home).start()
    try:
        lab = server.lab()
        task = lab.submit(_bad_job, [(i,) for i in range(40)], name="bad", site="LOCAL-GRID",
                          retries=0)
        assert lab.wait(task, timeout=90)["state"] == "finished"
        results = lab.results(task)
        assert {i: results[i] for i in results} == {i: 2 * i for i in range(40) if i != 7}
        attempts = lab.jobs(task, all_attempts=True)
        assert len(attempts) == 40                   # each ran once: nothing lost, no churn
        (bad,) = [a for a in attempts if a["state"] == JobState.FAILED]
        assert bad["job_index"] == 7 and bad["error_category"] == "user"
        assert "bad" in bad["error_message"]
        assert lab.task_info(task)["n_done"] == 39
    finally:
        server.stop()
