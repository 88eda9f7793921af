"""``cancel()`` means "never runs", and ``shutdown`` always returns: ``concurrent.futures``'
own contract (``Lib/concurrent/futures/_base.py``; ``ProcessPoolExecutor`` cannot cancel a
call already moved to its call queue, and neither can we once a pilot holds the job).

Kind 1, every path by which a future whose ``cancel()`` returned True could still run.
The rule: ``cancel()`` is True only if the call had not left the client, or the server
moved its job from a waiting state to ``cancelled`` in one compare-and-set (the
counterpart of dispatch's ``activated → sent``) with no attempt of it ever handed to a
pilot; a cancelled future is notified at once.  Members:

- still in the client's outbox: ``test_a_call_still_in_the_outbox_is_dropped_and_never_posted``;
- in the batch being posted: ``test_cancel_of_a_call_being_posted_waits_for_its_job``;
- queued on the server: ``test_a_queued_job_is_cancelled_on_the_server_and_never_runs``;
- acquired by a pilot's prefetch, not started (the reported case), and between dispatch
  and start: ``test_cancel_after_a_pilot_prefetched_the_job_never_lies`` and
  ``test_a_job_a_pilot_holds_or_runs_cannot_be_cancelled``;
- a retry attempt: ``test_a_job_whose_earlier_attempt_ran_cannot_be_cancelled``,
  ``test_cancel_reaches_the_attempt_that_replaced_a_rebrokered_one``,
  ``test_pbook_retry_never_brings_back_a_job_its_client_cancelled``;
- cancel racing dispatch in the store: ``test_cancel_waiting_is_a_compare_and_set_against_dispatch``
  and, on PostgreSQL with threads, ``test_cancel_racing_acquire_never_both_win``.

Kind 2, every way ``shutdown`` could wait on a future nothing will resolve.  Members:

- cancelled futures left in the outbox or in flight (the reported case: 21 sleeps, all
  cancelled): ``test_shutdown_returns_after_every_future_was_cancelled``;
- ``cancel_futures=True``:
  ``test_shutdown_cancel_futures_cancels_waiting_jobs_and_waits_for_held_ones``;
- shutdown called twice: ``test_shutdown_twice``;
- shutdown from a done-callback, on the executor's own thread or inside shutdown itself:
  ``test_shutdown_from_a_done_callback_returns`` and
  ``test_shutdown_from_a_callback_run_by_shutdown_itself_returns``;
- a lost event stream: ``test_a_lost_event_stream_is_resynced``;
- the server gone: ``test_futures_fail_rather_than_hang_when_the_server_is_gone``.

Not covered here: a ``kill`` (``panda-lab kill``, the panel) of a job a pilot prefetched
is acted on at the pilot's next contact, as a kill of a running job is; it is not a
``cancel()`` and its future fails with ``JobKilled``.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from harness import ServerProcess, wait_for
from sqlalchemy import select

from panda_lab.http import ServerUnreachable
from panda_lab.store import CANCELLED_BY_CLIENT, Store
from panda_lab.store.schema import job_status, jobs


def touch(path, delay=0.0):
    time.sleep(delay)
    Path(path).write_text("ran")
    return path


def sleep_and_return(t, value):
    time.sleep(t)
    return value


def returns_within(seconds, fn, *args, **kwargs) -> bool:
    """Run ``fn`` in a thread; whether it returned within ``seconds`` (a hang fails the
    test instead of freezing the run)."""
    t = threading.Thread(target=fn, args=args, kwargs=kwargs, daemon=True)
    t.start()
    t.join(seconds)
    return not t.is_alive()


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """A server without pilots: a job waits, activated, until a test starts a pilot.
    Pilots heartbeat at the default interval (5 s), not the harness's fast one: a pilot
    hears of a kill only then, so a prefetched job is started before it would."""
    s = ServerProcess(tmp_path_factory.mktemp("home"),
                      extra=["--no-pilots", "--heartbeat-interval", "5",
                             "--heartbeat-timeout", "60"]).start()
    yield s
    s.stop()


@pytest.fixture
def blab(bare, monkeypatch):
    monkeypatch.setenv("PANDA_LAB_HOME", str(bare.home))
    lab = bare.lab()
    yield lab
    lab.close()


@pytest.fixture
def pilots(bare):
    """Start pilots by hand (one slot each); all are stopped after the test."""
    started: list[subprocess.Popen] = []

    def start(site: str) -> subprocess.Popen:
        env = dict(os.environ, PANDA_LAB_PILOT_TOKEN=bare.info["pilot_token"])
        p = subprocess.Popen([sys.executable, "-m", "panda_lab.pilot", "--server",
                              bare.info["url"], "--site", site], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(p)
        return p

    yield start
    for p in started:
        p.terminate()
    for p in started:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()


def gate_job_posts(ex):
    """Hold the executor's requests that post jobs until ``gate`` is set; ``posting`` is
    set when one is on its way."""
    post = ex._api.post
    gate, posting = threading.Event(), threading.Event()

    def gated(path, *args, **kwargs):
        if path.endswith("/jobs"):
            posting.set()
            gate.wait(30)
        return post(path, *args, **kwargs)

    ex._api.post = gated
    return gate, posting


def job(lab, fut) -> dict:
    return lab.api.get(f"/api/jobs/{fut.job_id}")


# ---- kind 1: cancel() True means the call never runs ------------------------------------


def test_a_call_still_in_the_outbox_is_dropped_and_never_posted(blab, tmp_path):
    ex = blab.executor(name="c-outbox", site="LOCAL-GRID")
    gate, posting = gate_job_posts(ex)
    first = ex.submit(touch, str(tmp_path / "first"))
    assert posting.wait(10)                          # first: in the request, held
    second = ex.submit(touch, str(tmp_path / "second"))
    assert second.cancel() is True                   # in the outbox: no request needed
    assert second.cancelled() and second.done()
    assert cf.wait([second], timeout=5).done == {second}
    assert list(cf.as_completed([second], timeout=5)) == [second]
    with pytest.raises(cf.CancelledError):
        second.result(timeout=0)
    gate.set()
    wait_for(lambda: first.job_id is not None, 30, what="first posted")
    assert first.cancel() is True                    # waiting at a site without pilots
    assert returns_within(30, ex.shutdown, wait=True)
    assert blab.task(ex.task_id).info()["n_jobs"] == 1, "the cancelled call was posted"
    assert second.job_id is None


def test_cancel_of_a_call_being_posted_waits_for_its_job(blab):
    ex = blab.executor(name="c-inflight", site="LOCAL-GRID")
    gate, posting = gate_job_posts(ex)
    fut = ex.submit(sleep_and_return, 0, "never")
    assert posting.wait(10)
    answer: dict = {}
    t = threading.Thread(target=lambda: answer.update(cancelled=fut.cancel()), daemon=True)
    t.start()
    t.join(0.5)
    assert t.is_alive(), "cancel() answered before it knew whether the job exists"
    gate.set()
    t.join(30)
    assert answer == {"cancelled": True} and fut.cancelled()
    record = job(blab, fut)
    assert record["state"] == "cancelled" and record["pilot_id"] is None
    assert record["error_message"] == CANCELLED_BY_CLIENT
    assert returns_within(30, ex.shutdown, wait=True)


def test_a_queued_job_is_cancelled_on_the_server_and_never_runs(blab, pilots, tmp_path):
    ex = blab.executor(name="c-queued", site="LOCAL-CLOUD")
    marks = [tmp_path / f"m{i}" for i in range(6)]
    futs = [ex.submit(touch, str(m)) for m in marks]
    wait_for(lambda: all(f.job_id is not None for f in futs), 30, what="jobs posted")
    gone = [futs[i] for i in (1, 3, 4)]
    assert [f.cancel() for f in gone] == [True, True, True]
    assert cf.wait(gone, timeout=5).not_done == set()
    assert [f.cancel() for f in gone] == [True, True, True]     # cancelling again: still True
    pilots("LOCAL-CLOUD")                                        # now the jobs can run
    assert [futs[i].result(timeout=60) for i in (0, 2, 5)] == [str(marks[i]) for i in (0, 2, 5)]
    assert returns_within(30, ex.shutdown, wait=True)
    assert [m.exists() for m in marks] == [True, False, True, False, False, True]
    for f in gone:
        record = job(blab, f)
        assert (record["state"], record["pilot_id"]) == ("cancelled", None)
        assert [h["state"] for h in record["history"]][-2:] == ["activated", "cancelled"]
    assert blab.task(ex.task_id).wait(timeout=30).status == "finished"


def test_cancel_after_a_pilot_prefetched_the_job_never_lies(blab, pilots, tmp_path):
    """The reported case: one pilot, one slot, warmed up by short jobs (so it fetches
    ahead); a 2 s job, then one that writes a marker, cancelled 0.8 s later."""
    pilots("LOCAL-HPC")
    with blab.executor(name="c-prefetch", site="LOCAL-HPC") as ex:
        assert list(ex.map(abs, [-1, -2, -3, -4, -5])) == [1, 2, 3, 4, 5]
        slow = ex.submit(time.sleep, 2)
        marker = tmp_path / "marker"
        late = ex.submit(touch, str(marker))
        time.sleep(0.8)
        cancelled = late.cancel()
        assert slow.result(timeout=30) is None
        # one slot runs its jobs in order: once this one is done, ``late`` ran or never will
        assert ex.submit(abs, -7).result(timeout=30) == 7
        if cancelled:
            assert late.cancelled() and job(blab, late)["state"] == "cancelled"
        else:
            assert late.result(timeout=30) == str(marker)
    assert marker.exists() is not cancelled, "cancel() returned True, yet the job ran"


def test_a_job_a_pilot_holds_or_runs_cannot_be_cancelled(blab, pilots, tmp_path):
    pilots("LOCAL-HPC")
    with blab.executor(name="c-held", site="LOCAL-HPC") as ex:
        assert list(ex.map(abs, [-1, -2, -3])) == [1, 2, 3]   # warm: it fetches ahead
        slow = ex.submit(sleep_and_return, 3, "slow")
        held = ex.submit(touch, str(tmp_path / "held"))
        wait_for(lambda: held.job_id is not None
                 and job(blab, held)["state"] != "activated", 30, what="the job dispatched")
        wait_for(slow.running, 30, what="the first job running")
        assert not slow.done(), "the pilot did not fetch ahead: nothing tested"
        assert held.cancel() is False                  # sent, not started: too late
        assert not held.cancelled() and not held.done()
        assert slow.cancel() is False                  # running
        assert held.result(timeout=30) == str(tmp_path / "held")
        assert slow.result(timeout=30) == "slow"
        assert held.cancel() is False and slow.cancel() is False      # finished
    assert (tmp_path / "held").exists()


# ---- kind 1 in the store: the compare-and-set itself ------------------------------------

SITES = [{"name": n, "kind": "local", "provisioner": "local", "pilots": 1, "slots": 1}
         for n in ("A", "B")]



def payloads(n: int) -> list[dict]:
    return [{"payload": b"job %d" % i} for i in range(n)]


def report(store: Store, pilot_id: int, job_id: int, state: str, **fields):
    attempt = store.get_job(job_id)["attempt"]
    return store.apply_updates(pilot_id, [{"id": job_id, "attempt": attempt, "state": state,
                                           **fields}])


def test_cancel_waiting_is_a_compare_and_set_against_dispatch(store):
    task, ids, _ = store.create_task("t", payloads(4), site="A", open_=True)
    p = store.register_pilot("A", "host", 1, 1, {})
    got, _ = store.acquire(p, "A", 2)
    assert [j["index"] for j in got] == [0, 1]
    report(store, p, got[1]["id"], "running")
    cancelled, changes = store.cancel_waiting(task, [0, 1, 2, 3])
    assert cancelled == [2, 3]
    assert {(c.job_index, c.state) for c in changes.jobs} == {(2, "cancelled"), (3, "cancelled")}
    assert [store.get_job(i)["state"] for i in ids] == ["sent", "running", "cancelled",
                                                        "cancelled"]
    assert store.acquire(p, "A", 10)[0] == []       # a cancelled job is never dispatched
    assert store.cancel_waiting(task, [2, 3])[0] == []    # final: nothing more to cancel


def test_a_job_whose_earlier_attempt_ran_cannot_be_cancelled(store):
    task, (first,), _ = store.create_task("t", payloads(1), site="A")
    p = store.register_pilot("A", "host", 1, 1, {})
    store.acquire(p, "A", 1)
    report(store, p, first, "failed", error={"category": "system", "message": "worker died"})
    retry = store.get_job(first)["attempts"][-1]
    assert retry != first and store.get_job(retry)["state"] == "activated"
    assert store.cancel_waiting(task, [0])[0] == []     # it ran once: "never runs" is false
    assert store.get_job(retry)["state"] == "activated"


def test_cancel_reaches_the_attempt_that_replaced_a_rebrokered_one(store):
    task, (first,), _ = store.create_task("t", payloads(1), site=["A", "B"])
    site = store.get_job(first)["site"]
    store.set_site_state(site, "offline", "down for the test")
    store.rebroker_offline()
    (closed, retry) = store.get_job(first)["attempts"]
    assert store.get_job(closed)["state"] == "closed"            # never ran
    assert store.cancel_waiting(task, [0])[0] == [0]
    assert store.get_job(retry)["state"] == "cancelled"


def test_pbook_retry_never_brings_back_a_job_its_client_cancelled(store):
    task, ids, _ = store.create_task("t", payloads(2), site="A", open_=True)
    assert store.cancel_waiting(task, [0])[0] == [0]
    p = store.register_pilot("A", "host", 1, 1, {})
    store.acquire(p, "A", 1)
    report(store, p, ids[1], "failed", error={"category": "user", "message": "ValueError"})
    store.close_task(task)
    new, _ = store.retry_task(task)
    assert [store.get_job(i)["job_index"] for i in new] == [1]
    assert store.get_job(ids[0])["attempts"] == [ids[0]]


@pytest.mark.postgresql
def test_cancel_racing_acquire_never_both_win(postgres, tmp_path):
    url = postgres.new_database()
    main = Store(url, tmp_path / "results")
    main.upsert_sites(SITES[:1])
    n = 300
    task, _, _ = main.create_task("t", payloads(n), site="A")
    stores = [Store(url, tmp_path / "results") for _ in range(4)]
    acquired: list[int] = []
    cancelled: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def acquire(store: Store) -> None:
        try:
            p = store.register_pilot("A", "host", 1, 1, {})
            barrier.wait()
            while batch := store.acquire(p, "A", 4)[0]:
                acquired.extend(j["index"] for j in batch)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def cancel(store: Store) -> None:
        try:
            barrier.wait()
            for stop in range(n, 0, -5):  # from the far end: the two meet somewhere
                cancelled.extend(store.cancel_waiting(task, list(range(stop - 5, stop)))[0])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=acquire, args=(s,)) for s in stores[:3]]
    threads.append(threading.Thread(target=cancel, args=(stores[3],)))
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert acquired and cancelled, "no race happened"
        assert not set(acquired) & set(cancelled), "a job was both dispatched and cancelled"
        assert sorted(acquired + cancelled) == list(range(n))
        with main.tx() as conn:
            final = dict(conn.execute(select(jobs.c.job_index, jobs.c.state)).all())
            marks = conn.execute(select(job_status.c.job_id, job_status.c.state)
                                 .where(job_status.c.state.in_(["sent", "cancelled"]))).all()
        assert {final[i] for i in cancelled} == {"cancelled"}
        assert {final[i] for i in acquired} == {"sent"}
        assert len(marks) == n and len({j for j, _ in marks}) == n
    finally:
        for s in stores:
            s.close()
        main.close()


# ---- kind 2: shutdown always returns ------------------------------------------------------


def test_shutdown_returns_after_every_future_was_cancelled(blab):
    """The reported case: 21 calls of ``time.sleep(2)``, all cancelled at once."""
    ex = blab.executor(name="c-all", site="LOCAL-GRID")
    futs = [ex.submit(time.sleep, 2) for _ in range(21)]
    assert [f.cancel() for f in futs] == [True] * 21
    assert cf.wait(futs, timeout=5).not_done == set()
    assert returns_within(30, ex.shutdown, wait=True), "shutdown(wait=True) hangs"
    assert all(f.cancelled() for f in futs)


def test_shutdown_cancel_futures_cancels_waiting_jobs_and_waits_for_held_ones(blab, pilots,
                                                                              tmp_path):
    pilots("LOCAL-GRID")                 # a fresh pilot fetches no job ahead of its slot
    ex = blab.executor(name="c-cancel-futures", site="LOCAL-GRID")
    slow = ex.submit(sleep_and_return, 1.5, "slow")
    marks = [tmp_path / f"w{i}" for i in range(5)]
    waiting = [ex.submit(touch, str(m)) for m in marks]
    wait_for(slow.running, 30, what="the first job running")
    assert returns_within(30, ex.shutdown, wait=True, cancel_futures=True)
    assert slow.result(timeout=0) == "slow"
    assert all(f.cancelled() for f in waiting)
    assert blab.task(ex.task_id).wait(timeout=30).status == "finished"
    assert not any(m.exists() for m in marks)


def test_shutdown_twice(blab, pilots):
    pilots("LOCAL-GRID")
    ex = blab.executor(name="c-twice", site="LOCAL-GRID")
    futs = [ex.submit(sleep_and_return, 0.3, i) for i in range(3)]
    ex.shutdown(wait=False)
    assert returns_within(60, ex.shutdown, wait=True)
    assert [f.result(timeout=0) for f in futs] == [0, 1, 2]
    assert returns_within(5, ex.shutdown, wait=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(abs, 1)


def test_shutdown_from_a_done_callback_returns(blab, pilots):
    """The callback runs on the thread that resolves the futures: it cannot wait there."""
    pilots("LOCAL-GRID")
    ex = blab.executor(name="c-callback", site="LOCAL-GRID")
    quick = ex.submit(sleep_and_return, 0, "quick")
    slow = ex.submit(sleep_and_return, 1.0, "slow")
    called = threading.Event()
    quick.add_done_callback(lambda _: (ex.shutdown(wait=True), called.set()))
    assert quick.result(timeout=30) == "quick"
    assert called.wait(10), "shutdown(wait=True) in a done-callback did not return"
    assert slow.result(timeout=30) == "slow"           # the thread it runs on lives on
    assert returns_within(30, ex.shutdown, wait=True)


def test_shutdown_from_a_callback_run_by_shutdown_itself_returns(blab):
    ex = blab.executor(name="c-nested", site="LOCAL-GRID")
    futs = [ex.submit(time.sleep, 2) for _ in range(4)]
    wait_for(lambda: all(f.job_id is not None for f in futs), 30, what="jobs posted")
    called = threading.Event()
    futs[0].add_done_callback(lambda _: (ex.shutdown(wait=True), called.set()))
    assert returns_within(30, ex.shutdown, wait=True, cancel_futures=True)
    assert called.is_set() and all(f.cancelled() for f in futs)


def test_a_lost_event_stream_is_resynced(blab, pilots):
    """The stream drops every event until the job finished, then breaks: the executor
    reconnects and asks where its jobs stand."""
    ex = blab.executor(name="c-lost-stream", site="LOCAL-GRID")
    events = ex._api.events
    connections = []

    def flaky(*args, **kwargs):
        connections.append(1)
        stream = events(*args, **kwargs)
        if len(connections) > 1:
            yield from stream
            return
        for msg in stream:
            if "jobs" in msg:
                break                 # from here on, this connection loses everything
            yield msg
        wait_for(lambda: ex._futures and all(
            j["state"] == "finished" for j in blab.jobs(ex.task_id)), 60, what="jobs done")
        stream.close()

    ex._api.events = flaky
    futs = [ex.submit(sleep_and_return, 0, i) for i in range(3)]
    pilots("LOCAL-GRID")
    assert [f.result(timeout=60) for f in futs] == [0, 1, 2]
    assert len(connections) >= 2
    assert returns_within(30, ex.shutdown, wait=True)


def test_futures_fail_rather_than_hang_when_the_server_is_gone(server):
    lab = server.lab()
    ex = lab.executor(name="c-gone", site="LOCAL-GRID", server_lost_timeout=2)
    running = ex.submit(sleep_and_return, 60, "never seen")
    wait_for(running.running, 30, what="the job running")
    server.kill()
    late = ex.submit(abs, -1)                          # its request fails: said at once
    assert isinstance(late.exception(timeout=30), ServerUnreachable)
    started = time.monotonic()
    assert returns_within(60, ex.shutdown, wait=True), "shutdown hangs on a dead server"
    assert time.monotonic() - started < 30
    exc = running.exception(timeout=0)
    assert isinstance(exc, ServerUnreachable) and "unreachable for 2 s" in str(exc)
    lab.close()
