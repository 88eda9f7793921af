"""The retry decision as a pure function: what the store does when an attempt ends
without a result (``panda_lab.model.retry.next_attempt``), and the site list a job
accepts (``panda_lab.model.brokerage.sites_of``).

Kind tested: a retry rule that drifts between the places that make new attempts (a
pilot's failure report, the watchdog, the user's ``retry``, re-brokerage off an offline
site).  Members: each cause's attempt number, limit, sites and avoided site; the rules
table decides for failures; an aborted task gets no new attempt; an attempt whose start
went unreported before its pilot ended is free only up to a small bound (a job that
kills its pilot at once was retried 20 times, its ``retries=0`` ignored).
"""

from __future__ import annotations

import pytest

from panda_lab.model.brokerage import ANY, sites_of
from panda_lab.model.retry import (
    UNSEEN_ATTEMPTS,
    Action,
    Cause,
    ErrorCategory,
    Previous,
    RetryRule,
    accepted_sites,
    decide,
    next_attempt,
)

C = ErrorCategory
PREV = Previous(attempt=1, max_attempts=3, site="A", sites=("A", "B"),
                near=frozenset({"SE"}))


def test_a_system_failure_is_retried_elsewhere_within_the_jobs_sites():
    nxt = next_attempt(PREV, Cause.FAILED, category=C.SYSTEM, message="worker died")
    assert nxt is not None
    assert (nxt.attempt, nxt.max_attempts) == (2, 3)
    assert nxt.sites == ("A", "B") and nxt.avoid == frozenset({"A"})
    assert nxt.near == frozenset({"SE"})
    assert "retry" in nxt.reason


def test_a_timeout_is_retried_on_any_site_and_only_once():
    nxt = next_attempt(PREV, Cause.FAILED, category=C.TIMEOUT, message="walltime")
    assert nxt is not None and nxt.avoid == frozenset()  # the rule keeps the site
    second = Previous(2, 3, "A", ("A", "B"))
    assert next_attempt(second, Cause.FAILED, category=C.TIMEOUT) is None  # 2 of 2


@pytest.mark.parametrize("category", [C.USER, C.PAYLOAD, C.KILLED, C.MERGE])
def test_what_the_rules_fail_gets_no_new_attempt(category):
    assert next_attempt(PREV, Cause.FAILED, category=category, message="x") is None


def test_no_category_counts_as_a_system_error():
    assert next_attempt(PREV, Cause.FAILED) == next_attempt(PREV, Cause.FAILED,
                                                            category=C.SYSTEM)


def test_the_last_attempt_is_the_last():
    last = Previous(3, 3, "B", (ANY,))
    assert next_attempt(last, Cause.FAILED, category=C.SYSTEM) is None


def test_an_aborted_task_gets_no_new_attempt():
    assert next_attempt(PREV, Cause.FAILED, category=C.SYSTEM, task_aborted=True) is None


def test_failures_follow_the_rules_given():
    rules = (RetryRule(C.USER, Action.RETRY, attempts=5, other_site=False),)
    nxt = next_attempt(Previous(3, 9, "A", ("A",)), Cause.FAILED, category=C.USER,
                       rules=rules)
    assert nxt is not None and nxt.attempt == 4 and nxt.avoid == frozenset()
    assert decide(C.USER, "", 3, 9, rules).action is Action.RETRY


def test_a_user_retry_always_makes_one_more_attempt_anywhere_it_accepts():
    spent = Previous(attempt=3, max_attempts=3, site="A", sites=("A", "B"))
    nxt = next_attempt(spent, Cause.USER_RETRY)
    assert nxt is not None
    assert (nxt.attempt, nxt.max_attempts) == (4, 4)
    assert nxt.avoid == frozenset() and nxt.sites == ("A", "B")
    # a limit left unspent is kept
    assert next_attempt(Previous(1, 5, "A", ("A",)), Cause.USER_RETRY).max_attempts == 5


def test_rebrokerage_moves_off_the_offline_site_without_costing_an_attempt():
    nxt = next_attempt(PREV, Cause.REBROKER)
    assert nxt is not None
    assert nxt.attempt == 2 and nxt.max_attempts == 4  # the lost site was not the job's fault
    assert nxt.avoid == frozenset({"A"}) and nxt.sites == ("A", "B")


def test_the_sites_kept_with_the_decision_win_over_the_tasks():
    assert accepted_sites(["B"], ("A", "B")) == ("B",)
    assert accepted_sites(None, ("A", "B")) == ("A", "B")
    assert accepted_sites([], (ANY,)) == (ANY,)


@pytest.mark.parametrize("value, expected", [
    (None, (ANY,)), ("", (ANY,)), ([], (ANY,)), (" A , B ,", ("A", "B")), (",", (ANY,)),
    (["A"], ("A",)), ("ANY", (ANY,)),
])
def test_sites_of_reads_what_a_user_gives(value, expected):
    assert sites_of(value) == expected


def test_a_start_never_reported_is_free_up_to_a_small_bound():
    nxt = next_attempt(PREV, Cause.UNSEEN)           # it may not have run: not charged
    assert (nxt.attempt, nxt.max_attempts, nxt.sites, nxt.avoid) == (2, 4, ("A", "B"),
                                                                     frozenset())
    one = Previous(attempt=1, max_attempts=1, site="A", sites=("A",))
    second = next_attempt(one, Cause.UNSEEN)
    third = next_attempt(Previous(second.attempt, second.max_attempts, "A", ("A",)),
                         Cause.UNSEEN)
    assert third.attempt == UNSEEN_ATTEMPTS == 3
    # it may have run, too: past the bound it counts, and a job of one attempt ends
    last = Previous(third.attempt, third.max_attempts - 2, "A", ("A",))
    assert next_attempt(last, Cause.UNSEEN, category=C.SYSTEM) is None
    assert next_attempt(PREV, Cause.UNSEEN, task_aborted=True) is None
