"""The state tables as data, and a stateful property test of the store against them.

The second half drives a real :class:`Store` on SQLite with random sequences of the
events the system sees (submissions, pilot reports with random states, attempts and
pilots, kills, watchdog failures, user retries) and checks after every step that the
rules of ``JOB_TRANSITIONS`` hold in what the database recorded.
"""

from __future__ import annotations

import itertools
import random
import shutil
import tempfile
from collections import deque
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import select

from panda_lab.model import (
    JOB_FINAL,
    JOB_ON_PILOT,
    JOB_TRANSITIONS,
    JOB_WAITING,
    TASK_FINAL,
    TASK_TRANSITIONS,
    JobState,
    TaskState,
    TransitionError,
    can_job,
    can_task,
    job_path,
)
from panda_lab.model.brokerage import choose
from panda_lab.model.states import TASK_IMMUTABLE
from panda_lab.store import Store, TaskStateError
from panda_lab.store.schema import job_status, jobs, results, tasks

J = JobState
T = TaskState


def _reachable(table: dict, start) -> dict:
    """Breadth-first distances from ``start`` in a transition table."""
    dist = {start: 0}
    queue = deque([start])
    while queue:
        cur = queue.popleft()
        for nxt in table[cur]:
            if nxt not in dist:
                dist[nxt] = dist[cur] + 1
                queue.append(nxt)
    return dist


# ---- the tables as data ---------------------------------------------------------------


@pytest.mark.parametrize("table,enum", [(JOB_TRANSITIONS, JobState),
                                        (TASK_TRANSITIONS, TaskState)])
def test_every_state_has_a_row_and_targets_are_states(table, enum):
    assert set(table) == set(enum)
    for old, targets in table.items():
        assert all(isinstance(t, enum) for t in targets)
        assert old not in targets, f"{old} loops onto itself"


@pytest.mark.parametrize("table,start", [(JOB_TRANSITIONS, J.DEFINED),
                                         (TASK_TRANSITIONS, T.DEFINED)])
def test_every_state_is_reachable_from_defined(table, start):
    assert set(_reachable(table, start)) == set(table)


def test_job_final_states_have_no_exits():
    assert {J.FINISHED, J.FAILED, J.CANCELLED, J.CLOSED} == JOB_FINAL
    for s in JOB_FINAL:
        assert JOB_TRANSITIONS[s] == frozenset()
        for other in JobState:
            assert not can_job(s, other)
    # Every non-final state can still end: no job is ever stuck by the table.
    for s in set(JobState) - JOB_FINAL:
        assert set(_reachable(JOB_TRANSITIONS, s)) & JOB_FINAL


def test_job_state_groups_partition_the_states():
    assert JOB_WAITING.isdisjoint(JOB_ON_PILOT)
    assert JOB_WAITING.isdisjoint(JOB_FINAL)
    assert JOB_ON_PILOT.isdisjoint(JOB_FINAL)
    assert set(JobState) == JOB_WAITING | JOB_ON_PILOT | JOB_FINAL
    # Only dispatch leaves the waiting states for a pilot, and it goes to ``sent``.
    for s in JOB_WAITING:
        assert JOB_TRANSITIONS[s] & JOB_ON_PILOT <= {J.SENT}
    # A job on a pilot never goes back to waiting, and is never ``closed`` (it ran).
    for s in JOB_ON_PILOT:
        assert not JOB_TRANSITIONS[s] & JOB_WAITING
        assert J.CLOSED not in JOB_TRANSITIONS[s]
    assert JOB_TRANSITIONS[J.ACTIVATED] & JOB_ON_PILOT == {J.SENT}


def test_task_final_states():
    assert {T.DONE, T.FINISHED, T.FAILED, T.ABORTED} == TASK_FINAL
    assert {T.DONE, T.ABORTED} == TASK_IMMUTABLE
    for s in TASK_IMMUTABLE:
        assert TASK_TRANSITIONS[s] == frozenset()
    # Partial and failed tasks may only be re-opened by ``retry``.
    assert TASK_TRANSITIONS[T.FINISHED] == {T.RUNNING}
    assert TASK_TRANSITIONS[T.FAILED] == {T.RUNNING}
    assert can_task("paused", "running") and not can_task("done", "running")


def test_can_job_matches_the_table_and_takes_strings():
    for old in JobState:
        for new in JobState:
            assert can_job(old, new) == (new in JOB_TRANSITIONS[old])
            assert can_job(str(old), str(new)) == can_job(old, new)
    with pytest.raises(ValueError):
        can_job("sent", "bogus")


def test_job_path_examples():
    assert job_path("sent", "finished") == (J.STARTING, J.RUNNING, J.FINISHED)
    assert job_path(J.RUNNING, J.RUNNING) == ()
    assert job_path("activated", "sent") == (J.SENT,)
    assert job_path("sent", "transferring") == (J.STARTING, J.RUNNING, J.TRANSFERRING)
    assert job_path("defined", "activated") == (J.ASSIGNED, J.ACTIVATED)


@pytest.mark.parametrize("old,new", [("finished", "running"), ("failed", "finished"),
                                     ("running", "sent"), ("sent", "activated"),
                                     ("sent", "closed"), ("cancelled", "failed")])
def test_job_path_refuses_impossible_changes(old, new):
    with pytest.raises(TransitionError, match=f"from {old} to {new}"):
        job_path(old, new)
    assert issubclass(TransitionError, ValueError)


@given(st.sampled_from(list(JobState)), st.sampled_from(list(JobState)))
def test_job_path_is_a_shortest_allowed_path(old, new):
    dist = _reachable(JOB_TRANSITIONS, old)
    if new not in dist:
        with pytest.raises(TransitionError):
            job_path(old, new)
        return
    path = job_path(old, new)
    assert len(path) == dist[new]
    prev = old
    for step in path:
        assert can_job(prev, step), f"{prev} -> {step} is not allowed"
        prev = step
    assert prev == new
    # Deterministic: the same question always gets the same answer.
    assert job_path(str(old), str(new)) == path


# ---- the store against the tables: random event sequences ------------------------------


class SeededBroker:
    """Brokerage with a fixed seed, so that hypothesis can replay an example exactly."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def choose(self, requests, loads, **context):
        return choose(requests, loads, rng=self.rng, **context)


SITES = [{"name": n, "kind": "local", "provisioner": "local", "pilots": 1, "slots": 2}
         for n in ("A", "B")]
CATEGORIES = ["user", "input", "payload", "system", "timeout", "killed", None]


class JobRules(RuleBasedStateMachine):
    """Random events against a real store; the invariants are PanDA's rules."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="panda-lab-states-"))
        self.store = Store(f"sqlite:///{self.dir / 'db.sqlite'}", self.dir / "results",
                           broker=SeededBroker())
        self.store.upsert_sites(SITES)
        self.pilots = {self.store.register_pilot(s["name"], "host", 1, 2, {}): s["name"]
                       for s in (*SITES, SITES[0])}
        self.task_ids: list[int] = []
        self.finals: dict[int, tuple] = {}  # job id -> its row when first seen final

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------------
    def _rows(self, table, *order):
        with self.store.tx() as conn:
            return conn.execute(select(table).order_by(*order)).all()

    def _job_ids(self) -> list[int]:
        return [r.id for r in self._rows(jobs, jobs.c.id)]

    # -- events ------------------------------------------------------------------------
    @initialize(n=st.integers(1, 3), max_attempts=st.integers(1, 3))
    def first_task(self, n, max_attempts):
        self.submit(n, max_attempts, False)

    @rule(n=st.integers(0, 3), max_attempts=st.integers(1, 3), open_=st.booleans())
    def submit(self, n, max_attempts, open_):
        task_id, ids, _ = self.store.create_task(
            "t", [{"payload": b"p%d" % i} for i in range(n)],
            options={"max_attempts": max_attempts}, open_=open_)
        assert len(ids) == n
        self.task_ids.append(task_id)

    @rule(data=st.data(), n=st.integers(1, 2))
    def add_jobs(self, data, n):
        task_id = data.draw(st.sampled_from(self.task_ids))
        try:
            ids, _ = self.store.add_jobs(task_id, [{"payload": b"x"}] * n)
            assert len(ids) == n
        except TaskStateError:
            assert not self.store.get_task(task_id)["open"]

    @rule(data=st.data())
    def close(self, data):
        self.store.close_task(data.draw(st.sampled_from(self.task_ids)))

    @rule(data=st.data(), n=st.integers(1, 4))
    def acquire(self, data, n):
        pilot = data.draw(st.sampled_from(sorted(self.pilots)))
        got, _ = self.store.acquire(pilot, self.pilots[pilot], n)
        assert len(got) <= n
        for j in got:
            row = self.store.get_job(j["id"])
            assert row["state"] == J.SENT and row["pilot_id"] == pilot

    def _on_pilot(self) -> list:
        return [r for r in self._rows(jobs, jobs.c.id) if JobState(r.state) in JOB_ON_PILOT]

    @precondition(lambda self: self._on_pilot())
    @rule(data=st.data(),
          states=st.lists(st.sampled_from([J.STARTING, J.RUNNING, J.TRANSFERRING, J.FINISHED,
                                           J.FAILED, J.FAILED, J.CANCELLED]),
                          min_size=1, max_size=3),
          category=st.sampled_from(CATEGORIES), big=st.booleans(), result=st.booleans())
    def report(self, data, states, category, big, result):
        """A pilot's report on the jobs it holds: right pilot, right attempt."""
        held = data.draw(st.lists(st.sampled_from(self._on_pilot()), min_size=1, max_size=3,
                                  unique_by=lambda r: r.id))
        by_pilot: dict[int, list] = {}
        for job, state in zip(held, states * 3, strict=False):
            u = {"id": job.id, "attempt": job.attempt, "state": str(state)}
            if state == J.FINISHED and result:
                u["result"] = b"r" * (70_000 if big else 3)
            elif state == J.FAILED and category:
                u["error"] = {"category": category, "message": "boom"}
            by_pilot.setdefault(job.pilot_id, []).append((job, u))
        for pilot, pairs in by_pilot.items():
            self.store.apply_updates(pilot, [u for _, u in pairs])
            for job, u in pairs:
                now = self.store.get_job(job.id)["state"]
                if u["state"] == J.FINISHED and "result" not in u:
                    # Nothing to count: the attempt failed, and the retry rules decide.
                    assert now == J.FAILED, "finished without a result was applied"
                    assert self.store.get_job(job.id)["error_category"] == "system"
                elif u["state"] in _reachable(JOB_TRANSITIONS, JobState(job.state)):
                    assert now == u["state"]
                else:
                    assert now == job.state

    @precondition(lambda self: self._job_ids())
    @rule(data=st.data(), state=st.sampled_from(list(JobState)),
          attempt_shift=st.sampled_from([0, -1, 1]), wrong_pilot=st.booleans())
    def noisy_report(self, data, state, attempt_shift, wrong_pilot):
        """Reports that must be ignored: stale attempts, other pilots' or final jobs."""
        job = self.store.get_job(data.draw(st.sampled_from(self._job_ids())))
        pilot = job["pilot_id"] or data.draw(st.sampled_from(sorted(self.pilots)))
        if wrong_pilot:
            others = sorted(set(self.pilots) - {job["pilot_id"]})
            pilot = data.draw(st.sampled_from(others))
        u = {"id": job["id"], "attempt": job["attempt"] + attempt_shift, "state": str(state),
             "result": b"late"}
        changes, ignored = self.store.apply_updates(pilot, [u])
        if attempt_shift or pilot != job["pilot_id"] or job["state"] in JOB_FINAL:
            assert [i["id"] for i in ignored] == [job["id"]] and ignored[0]["reason"]
            assert not changes.jobs
            assert self.store.get_job(job["id"])["state"] == job["state"]

    @precondition(lambda self: self._job_ids())
    @rule(data=st.data())
    def kill_jobs(self, data):
        ids = data.draw(st.lists(st.sampled_from(self._job_ids()), max_size=3))
        self.store.kill_jobs(ids)
        for i in ids:
            assert self.store.get_job(i)["state"] in JOB_FINAL

    @rule(data=st.data())
    def kill_task(self, data):
        task_id = data.draw(st.sampled_from(self.task_ids))
        try:
            self.store.kill_task(task_id)
        except TaskStateError:
            assert self.store.get_task(task_id)["state"] in (T.DONE, T.ABORTED)
            return
        assert all(j["state"] in JOB_FINAL for j in self.store.list_jobs(task_id, True))

    @rule(category=st.sampled_from(["system", "timeout"]), all_=st.booleans())
    def watchdog(self, category, all_):
        lost = self.store.lost_jobs(heartbeat_before=1e12, sent_before=0)
        ids = [j["id"] for j in lost][: None if all_ else 1]
        self.store.fail_jobs(ids, category, "lost heartbeat: test")
        for i in ids:
            assert self.store.get_job(i)["state"] == J.FAILED

    @rule(data=st.data())
    def retry(self, data):
        task_id = data.draw(st.sampled_from(self.task_ids))
        try:
            self.store.retry_task(task_id)
        except TaskStateError:
            assert self.store.get_task(task_id)["state"] not in (T.FINISHED, T.FAILED)

    @rule(data=st.data())
    def heartbeat(self, data):
        pilot = data.draw(st.sampled_from(sorted(self.pilots)))
        held = data.draw(st.lists(st.sampled_from([*self._job_ids(), 10**6]), max_size=4))
        drop = set(self.store.heartbeat(pilot, held))
        assert drop <= set(held)
        for i in set(held):
            if i == 10**6:
                assert i in drop
                continue
            job = self.store.get_job(i)
            keep = job["state"] not in JOB_FINAL and job["pilot_id"] == pilot
            assert (i not in drop) == keep

    # -- invariants -----------------------------------------------------------------------
    @invariant()
    def history_follows_the_table(self):
        history: dict[int, list[str]] = {}
        for h in self._rows(job_status, job_status.c.id):
            history.setdefault(h.job_id, []).append(h.state)
        rows = self._rows(jobs, jobs.c.id)
        assert set(history) == {r.id for r in rows}
        for r in rows:
            path = history[r.id]
            assert path[0] == J.DEFINED, path
            for old, new in itertools.pairwise(path):
                assert JobState(old) not in JOB_FINAL, f"job {r.id} changed after {old}: {path}"
                assert can_job(old, new), f"job {r.id}: {old} -> {new} in {path}"
            assert path[-1] == r.state

    @invariant()
    def final_attempts_never_change(self):
        for r in self._rows(jobs, jobs.c.id):
            snap = (r.state, r.modified_at, r.ended_at, r.pilot_id, r.error_category,
                    r.error_message)
            if r.id in self.finals:
                assert snap == self.finals[r.id], f"final job {r.id} changed"
            elif JobState(r.state) in JOB_FINAL:
                self.finals[r.id] = snap

    @invariant()
    def attempts_are_numbered_and_one_is_live(self):
        by_job: dict[tuple[int, int], list] = {}
        for r in self._rows(jobs, jobs.c.attempt):
            by_job.setdefault((r.task_id, r.job_index), []).append(r)
        res = {(r.task_id, r.job_index): r for r in self._rows(results)}
        for key, attempts in by_job.items():
            assert [a.attempt for a in attempts] == list(range(1, len(attempts) + 1)), key
            live = [a for a in attempts if JobState(a.state) not in JOB_FINAL]
            assert len(live) <= 1, f"{key} has {len(live)} live attempts"
            if live:
                assert live[0] is attempts[-1], "only the newest attempt may be live"
            for prev, nxt in itertools.pairwise(attempts):
                assert nxt.retry_of == prev.id
            finished = [a for a in attempts if a.state == J.FINISHED]
            assert len(finished) <= 1, f"{key} finished twice"
            if finished:
                assert res[key].job_id == finished[0].id
                assert finished[0] is attempts[-1], "a finished job was retried"
            else:
                assert key not in res
        assert set(res) <= set(by_job)

    @invariant()
    def tasks_end_when_their_jobs_end(self):
        all_jobs = self._rows(jobs)
        n_results: dict[int, int] = {}
        for r in self._rows(results):
            n_results[r.task_id] = n_results.get(r.task_id, 0) + 1
        for t in self._rows(tasks):
            live = [j for j in all_jobs if j.task_id == t.id and JobState(j.state) not in JOB_FINAL]
            state = TaskState(t.state)
            if state in TASK_FINAL:
                assert not live, f"task {t.id} is {state} with live jobs"
                assert t.ended_at is not None
            if state in (T.DONE, T.FINISHED, T.FAILED):
                assert not t.open
                done = n_results.get(t.id, 0)
                expect = (T.DONE if done == t.n_jobs else T.FAILED if done == 0
                          else T.FINISHED)
                assert state == expect, (t.id, state, done, t.n_jobs)
            if not t.open and not live and state not in TASK_FINAL:
                pytest.fail(f"task {t.id} is {state}: closed, no live job, yet not ended")


JobRules.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_store_follows_the_rules = JobRules.TestCase
