"""Retry rules as data, and what a real store does with them."""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from panda_lab.model import Action, ErrorCategory, RetryRule, decide
from panda_lab.model.brokerage import choose
from panda_lab.model.retry import DEFAULT_RULES
from panda_lab.store import Store

C = ErrorCategory


@pytest.mark.parametrize("category", [C.USER, C.PAYLOAD, C.KILLED])
def test_the_users_and_requested_failures_are_never_retried(category):
    for attempt in range(1, 5):
        d = decide(category, "anything", attempt, max_attempts=10)
        assert d.action is Action.FAIL
        assert not d.other_site
        assert "not retried" in d.reason


def test_system_errors_retry_on_another_site_up_to_the_tasks_limit():
    assert decide("system", "worker died", 1, 3).action is Action.RETRY
    d = decide("system", "worker died", 2, 3)
    assert d.action is Action.RETRY and d.other_site
    assert "attempt 2 of 3" in d.reason
    d = decide("system", "worker died", 3, 3)
    assert d.action is Action.FAIL and "no retry left" in d.reason
    assert decide("system", "lost heartbeat: pilot gone", 1, 1).action is Action.FAIL
    # A job without an error category is treated like a system error by the store,
    # and an empty message must not break pattern matching.
    assert decide("system", None, 1, 2).action is Action.RETRY  # type: ignore[arg-type]


def test_timeouts_retry_once_on_the_same_site():
    d = decide("timeout", "ran past its walltime", 1, 5)
    assert d.action is Action.RETRY and not d.other_site
    assert decide("timeout", "ran past its walltime", 2, 5).action is Action.FAIL
    # The task's limit still applies when it is lower than the rule's.
    assert decide("timeout", "ran past its walltime", 1, 1).action is Action.FAIL


def test_input_errors_retry_once_on_another_site():
    d = decide("input", "file not found", 1, 5)
    assert d.action is Action.RETRY and d.other_site
    assert decide("input", "file not found", 2, 5).action is Action.FAIL


def test_unknown_category_fails_with_a_reason():
    d = decide("cosmic-ray", "", 1, 5)
    assert d.action is Action.FAIL
    assert "cosmic-ray" in d.reason


def test_first_matching_rule_wins_and_patterns_match_messages():
    rules = (
        RetryRule(C.USER, Action.RETRY, pattern=r"MemoryError", attempts=4),
        RetryRule(C.USER, Action.FAIL),
    )
    assert decide("user", "MemoryError: out of memory", 3, 10, rules).action is Action.RETRY
    assert decide("user", "MemoryError", 4, 10, rules).action is Action.FAIL
    assert decide("user", "ValueError: bad", 1, 10, rules).action is Action.FAIL
    rule = RetryRule(C.SYSTEM, Action.RETRY, pattern="disk")
    assert rule.matches("system", "disk full") and not rule.matches("system", "")
    assert not rule.matches("user", "disk full")
    assert RetryRule(C.SYSTEM, Action.RETRY).matches("system", None)  # type: ignore[arg-type]


def test_default_rules_cover_every_category():
    assert {r.category for r in DEFAULT_RULES} == set(ErrorCategory)


@given(category=st.sampled_from([*ErrorCategory, "other"]), message=st.text(max_size=20),
       attempt=st.integers(1, 12), max_attempts=st.integers(1, 12))
def test_a_retry_never_exceeds_any_limit(category, message, attempt, max_attempts):
    d = decide(category, message, attempt, max_attempts)
    assert d == decide(category, message, attempt, max_attempts)  # deterministic
    rule = next((r for r in DEFAULT_RULES if r.matches(category, message)), None)
    if d.action is Action.RETRY:
        assert rule is not None and rule.action is Action.RETRY
        assert attempt < max_attempts
        assert rule.attempts is None or attempt < rule.attempts
        assert d.other_site == rule.other_site
    elif rule is not None and rule.action is Action.RETRY:
        assert attempt >= min(rule.attempts or max_attempts, max_attempts)
    if category in (C.USER, C.PAYLOAD, C.KILLED, "other"):
        assert d.action is Action.FAIL


# ---- through a real store ------------------------------------------------------------


class SeededBroker:
    def __init__(self) -> None:
        self.rng = random.Random(0)

    def choose(self, requests, loads, **context):
        return choose(requests, loads, rng=self.rng, **context)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(failures=st.lists(st.sampled_from([*ErrorCategory, None]), min_size=1, max_size=6),
       max_attempts=st.integers(1, 4), watchdog=st.lists(st.booleans(), min_size=6,
                                                           max_size=6))
def test_store_makes_exactly_the_attempts_the_rules_allow(failures, max_attempts, watchdog):
    """Fail a job's attempts one after the other (by pilot report or by the watchdog):
    the store makes a new attempt exactly when ``decide`` says so, on the other site
    when the rule asks for it, and the task fails when the last attempt fails."""
    tmp = Path(tempfile.mkdtemp(prefix="panda-lab-retry-"))
    store = Store(f"sqlite:///{tmp / 'db.sqlite'}", tmp / "results", broker=SeededBroker())
    try:
        store.upsert_sites([{"name": n, "kind": "local", "provisioner": "local"}
                            for n in ("A", "B")])
        pilots = {s: store.register_pilot(s, "h", 1, 1, {}) for s in ("A", "B")}
        task_id, (job_id,), _ = store.create_task(
            "t", [{"payload": b"x"}], options={"max_attempts": max_attempts})
        expected_attempts = 1
        for n, (category, by_watchdog) in enumerate(zip(failures, watchdog, strict=False), 1):
            job = store.get_job(job_id)
            assert job["attempt"] == n
            got, _ = store.acquire(pilots[job["site"]], job["site"], 1)
            assert [j["id"] for j in got] == [job_id]
            if by_watchdog:
                cat = str(category or "system")
                store.fail_jobs([job_id], cat, "lost heartbeat")
            else:
                err = {"category": str(category), "message": "boom"} if category else None
                u = {"id": job_id, "attempt": n, "state": "failed"}
                if err:
                    u["error"] = err
                _, ignored = store.apply_updates(pilots[job["site"]], [u])
                assert not ignored
                cat = str(category or "system")
            d = decide(cat, "lost heartbeat" if by_watchdog else "boom", n, max_attempts)
            jobs = store.list_jobs(task_id, all_attempts=True)
            if d.action is Action.FAIL:
                assert len(jobs) == expected_attempts
                assert store.get_task(task_id)["state"] == "failed"
                assert [f["id"] for f in store.failures(task_id)] == [job_id]
                break
            expected_attempts += 1
            assert len(jobs) == expected_attempts
            new = jobs[-1]
            assert (new["attempt"], new["retry_of"], new["state"]) == (n + 1, job_id, "activated")
            if d.other_site:
                assert new["site"] != job["site"]
                assert new["broker_info"]["rejected"] == {
                    job["site"]: "avoided: an earlier attempt failed there"}
            job_id = new["id"]
        assert expected_attempts <= max_attempts
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
