"""A job's times are when things happened, not when the pilot's report arrived.

The kind of fault: an event's time taken from the report that carries it.  A pilot
batches its reports (``flush_interval``) and sends a short job's ``running`` with its
end, so the server stamped every state of such a job, and its ``ended_at``, with the
arrival of the batch: a job of 0.2 s read as a run of up to 0.7 s, its CPU as a third of
its run ("CPU 0.20 s (29 % of its 0.70 s run)"), and its starting, running and finished
all at one instant.  Members, each tested on both databases: a finished job's end; a
failed job's end; the states a batched report passes through (``starting``,
``running``); a job killed or whose worker died (its end is when its pilot saw it).
Kept: a pilot that sends no end (an older pilot) gets the arrival time; an end before
the start is not believed; a pilot's clock ahead or behind the server's (the start and
the end are kept between the job's dispatch and the report's arrival: no time in the
future, no run of negative or of 56 years' length); times never decrease along a job's
history.  Live: a
real server and pilot, short jobs.
"""

from __future__ import annotations

import time

import pytest
from harness import ServerProcess

from panda_lab.model import JobState
from panda_lab.model.usage import job_usage
from panda_lab.store.workflow import _event_times, _payload_times

SITES = [{"name": "A", "kind": "local", "provisioner": "local", "pilots": 1, "slots": 2}]


def _two_jobs(store):
    store.create_task("t", [{"payload": b"x"} for _ in range(2)])
    p = store.register_pilot("A", "host", 123, 2, {})
    got, _ = store.acquire(p, "A", 2)
    return p, [j["id"] for j in got]


def _arriving_later(monkeypatch, store, pilot, updates, later=10.0):
    """Apply ``updates`` as a report arriving ``later`` seconds from now (the server's
    clock patched): the gap between a job's events and its report, made plain."""
    import panda_lab.store.workflow as workflow

    t = time.time() + later
    monkeypatch.setattr(workflow, "now", lambda: t)
    try:
        store.apply_updates(pilot, updates)
    finally:
        monkeypatch.undo()
    return t


def _times(store, job_id):
    return {h["state"]: h["time"] for h in store.get_job(job_id)["history"]}


def test_a_batched_report_keeps_when_each_job_started_and_ended(store, monkeypatch):
    p, (a, b) = _two_jobs(store)
    t0 = time.time()  # the jobs ran now, their report arrives 10 s later
    _arriving_later(monkeypatch, store, p, [
        {"id": a, "attempt": 1, "state": "finished", "result": b"r",
         "started_at": t0, "ended_at": t0 + 0.2},
        {"id": b, "attempt": 1, "state": "failed", "started_at": t0 + 0.2,
         "ended_at": t0 + 0.5, "error": {"category": "user", "message": "ValueError"}}])
    ja, jb = store.get_job(a), store.get_job(b)
    assert (ja["started_at"], ja["ended_at"]) == pytest.approx((t0, t0 + 0.2))
    assert (jb["started_at"], jb["ended_at"]) == pytest.approx((t0 + 0.2, t0 + 0.5))
    ha, hb = _times(store, a), _times(store, b)
    # sent -> starting -> running -> finished: the start twice, then the end
    assert ha[JobState.STARTING] == pytest.approx(t0)
    assert ha[JobState.RUNNING] == pytest.approx(t0)
    assert ha[JobState.FINISHED] == pytest.approx(t0 + 0.2)
    assert hb[JobState.FAILED] == pytest.approx(t0 + 0.5)
    # what a user reads of it: the CPU share of the run the job had
    words = job_usage({**ja, "cpu_s": 0.19})
    assert "95 % of its 0.20 s run" in words, words


def test_a_running_report_then_the_end_in_a_later_one(store, monkeypatch):
    p, (a, _) = _two_jobs(store)
    t0 = time.time()
    _arriving_later(monkeypatch, store, p,
                    [{"id": a, "attempt": 1, "state": "running", "started_at": t0}], 1.0)
    _arriving_later(monkeypatch, store, p, [{"id": a, "attempt": 1, "state": "finished",
                                             "result": b"r", "ended_at": t0 + 3.0}])
    job = store.get_job(a)
    assert (job["started_at"], job["ended_at"]) == pytest.approx((t0, t0 + 3.0))
    assert _times(store, a)[JobState.RUNNING] == pytest.approx(t0)


def test_a_report_without_an_end_gets_its_arrival(store, monkeypatch):
    p, (a, _) = _two_jobs(store)
    t0 = time.time()
    t = _arriving_later(monkeypatch, store, p, [{"id": a, "attempt": 1, "state": "finished",
                                                 "result": b"r", "started_at": t0}])
    assert store.get_job(a)["ended_at"] == pytest.approx(t)
    assert _times(store, a)[JobState.RUNNING] == pytest.approx(t0)


@pytest.mark.parametrize("why,ended", [("before its start", -1.0), ("in the future", 3600.0)])
def test_an_end_not_to_be_believed_is_the_arrival(store, monkeypatch, why, ended):
    p, (a, _) = _two_jobs(store)
    t0 = time.time()
    t = _arriving_later(monkeypatch, store, p, [{"id": a, "attempt": 1, "state": "finished",
                                                 "result": b"r", "started_at": t0,
                                                 "ended_at": t0 + ended}])
    assert store.get_job(a)["ended_at"] == pytest.approx(t), why
    times = [h["time"] for h in store.get_job(a)["history"]]
    assert times == sorted(times), why


def test_a_pilot_clock_behind_keeps_the_history_in_order(store, monkeypatch):
    p, (a, _) = _two_jobs(store)
    sent = time.time()
    _arriving_later(monkeypatch, store, p, [{"id": a, "attempt": 1, "state": "finished",
                                             "result": b"r", "started_at": sent - 60.0,
                                             "ended_at": sent - 59.0}])
    times = [h["time"] for h in store.get_job(a)["history"]]
    assert times == sorted(times)
    assert _times(store, a)[JobState.RUNNING] >= _times(store, a)[JobState.SENT]


def test_the_times_never_decrease_along_a_path():
    t = 1000.0
    path = (JobState.STARTING, JobState.RUNNING, JobState.FINISHED)
    assert _event_times(path, 990.0, 995.0, t) == (990.0, 990.0, 995.0)
    assert _event_times(path, None, 995.0, t) == (t, t, t)       # no start: no order
    assert _event_times(path, 990.0, None, t) == (990.0, 990.0, t)
    assert _event_times(path, 1010.0, 1020.0, t) == (t, t, t)    # a clock ahead
    assert _event_times((JobState.FAILED,), None, 995.0, t) == (995.0,)
    assert _event_times((JobState.CANCELLED,), 990.0, 995.0, t) == (995.0,)
    assert _event_times(path, 990.0, 995.0, t, floor=992.0) == (992.0, 992.0, 995.0)


@pytest.mark.parametrize("case,started,ended,known,expected", [
    # (handed out at 980, report arriving at 1000)
    ("clocks agree", 990.0, 995.0, None, (990.0, 995.0)),
    ("a clock ahead by an hour", 4590.0, 4595.0, None, (1000.0, 1000.0)),
    ("a clock ahead by 0.3 s, a short job", 1000.25, 1000.3, None, (1000.0, 1000.0)),
    ("a clock behind by an hour", -2610.0, -2605.0, None, (980.0, 980.0)),
    ("a start at 0 (1970)", 0.0, 5.0, None, (980.0, 980.0)),
    ("an end before its start", 990.0, 985.0, None, (990.0, 1000.0)),
    ("the end alone, the start known", None, 995.0, 990.0, (None, 995.0)),
    ("the end alone, before the start known", None, 985.0, 990.0, (None, 1000.0)),
    ("the start alone", 990.0, None, None, (990.0, None)),
])
def test_a_pilots_times_are_kept_inside_what_the_server_knows(case, started, ended, known,
                                                                expected):
    """Never in the future, never before the job was handed out, never an end before the
    start, whatever the pilot's clock."""
    assert _payload_times(started, ended, known, 1000.0, 980.0) == expected, case


@pytest.mark.parametrize("case,offset", [("ahead", 3600.0), ("ahead by 0.3 s", 0.3),
                                         ("behind", -3600.0)])
def test_a_pilot_clock_off_gives_no_negative_run_nor_a_future_time(store, monkeypatch,
                                                                   case, offset):
    p, (a, b) = _two_jobs(store)
    t0 = time.time()
    t = _arriving_later(monkeypatch, store, p, [
        {"id": a, "attempt": 1, "state": "finished", "result": b"r",
         "started_at": t0 + offset, "ended_at": t0 + offset + 0.05},
        {"id": b, "attempt": 1, "state": "running", "started_at": t0 + offset}], 0.1)
    _arriving_later(monkeypatch, store, p, [{"id": b, "attempt": 1, "state": "finished",
                                             "result": b"r", "ended_at": t0 + offset + 0.5}],
                    0.6)
    for job_id in (a, b):
        job = store.get_job(job_id)
        assert job["started_at"] <= job["ended_at"] <= time.time() + 0.6, case
        assert job["started_at"] >= _times(store, job_id)[JobState.SENT], case
        times = [h["time"] for h in job["history"]]
        assert times == sorted(times), case
        assert _times(store, job_id)[JobState.RUNNING] == pytest.approx(job["started_at"])
        assert _times(store, job_id)[JobState.FINISHED] == pytest.approx(job["ended_at"])
    assert store.get_job(a)["ended_at"] <= t


def _short(i):
    import time as _t

    _t.sleep(0.05)
    return i


@pytest.mark.slow
def test_short_jobs_run_for_what_they_ran(home):
    """A real server and its pilots: 12 jobs of 0.05 s, reported in batches.  Each job's
    run is its payload's (with the worker's own overhead), not its batch's wait."""
    server = ServerProcess(home).start()
    try:
        lab = server.lab()
        task = lab.submit(_short, [(i,) for i in range(12)], name="short", site="LOCAL-GRID")
        assert lab.wait(task, timeout=120)["state"] == "done"
        jobs = lab.jobs(task)
        runs = sorted(j["ended_at"] - j["started_at"] for j in jobs)
        # all of 0.05 s; the first of a worker may also pay for its imports
        assert runs[0] >= 0.05 and runs[-3] < 0.12, runs
        for j in jobs:
            history = lab.api.get(f"/api/jobs/{j['id']}")["history"]
            times = [h["time"] for h in history]
            assert times == sorted(times)
            states = {h["state"]: h["time"] for h in history}
            assert states["running"] == pytest.approx(j["started_at"])
            assert states["finished"] == pytest.approx(j["ended_at"])
    finally:
        server.stop()


def test_the_pilot_sends_when_a_job_ended_not_when_it_reports():
    """The pilot's side: an outcome's end goes with its report; a job killed, or whose
    worker died, ends when the pilot saw it; a job handed back unstarted has no end."""
    import shutil

    from panda_lab.payload import Outcome
    from panda_lab.pilot.pilot import Pilot, PilotOptions
    from panda_lab.pilot.worker import Worker

    p = Pilot(PilotOptions("http://lab.invalid", "LOCAL", "t"))
    try:
        t0 = time.time() - 30.0
        done = Outcome(True, b"r", None, "", "", t0, t0 + 0.2)
        p._finish({"id": 1, "task": 1, "attempt": 1}, done, Worker())
        assert p.pending[1]["ended_at"] == t0 + 0.2
        before = time.time()
        p._finish({"id": 2, "task": 1, "attempt": 1}, None, Worker())  # its worker died
        assert before <= p.pending[2]["ended_at"] <= time.time()
        p._report_failed({"id": 3, "task": 1, "attempt": 1}, "system", "handed back",
                         unstarted=True)
        assert "ended_at" not in p.pending[3]
    finally:
        shutil.rmtree(p.spool, ignore_errors=True)


@pytest.mark.parametrize("value", ["1796217839.3", True, False, [1.0], {"t": 1.0}, -1.0,
                                   float("nan"), float("inf"), 2e11])
@pytest.mark.parametrize("field", ["started_at", "ended_at"])
def test_a_time_that_is_no_number_of_seconds_is_refused(field, value):
    """A string of digits or a boolean was read as a number (``true`` as 1970)."""
    from pydantic import ValidationError

    from panda_lab.server.schemas import JobUpdate

    with pytest.raises(ValidationError):
        JobUpdate.model_validate({"id": 1, "attempt": 1, "state": "finished", field: value})
    ok = JobUpdate.model_validate({"id": 1, "attempt": 1, "state": "finished",
                                   field: 1796217839})
    assert getattr(ok, field) == 1796217839.0
