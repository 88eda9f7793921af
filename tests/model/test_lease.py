"""The client-lease rule as pure functions: renewal period, re-grant, the messages."""

from __future__ import annotations

import calendar

from panda_lab.model.lease import (
    CLIENT_GONE,
    client_gone_message,
    ended_message,
    regranted,
    renew_every,
)


def test_a_client_renews_three_times_per_lease():
    assert renew_every(60.0) == 20.0
    assert renew_every(3.0) == 1.0


def test_a_restart_regrants_a_full_period_and_never_shortens_a_lease():
    # lapsed while the server was down: a full period from the start
    assert regranted(lease_until=100.0, now=500.0, lease_s=60.0) == 560.0
    # longer than a period already (granted under a longer setting): kept
    assert regranted(lease_until=1000.0, now=500.0, lease_s=60.0) == 1000.0


def test_the_client_gone_message_says_when_the_lease_lapsed_in_utc():
    t = calendar.timegm((2025, 3, 4, 5, 6, 7))
    msg = client_gone_message(t)
    assert msg == "closed: client gone (lease expired at 2025-03-04 05:06:07 UTC)"
    assert msg.startswith(CLIENT_GONE)


def test_an_ended_task_keeps_why_it_was_closed_before_how_its_jobs_ended():
    gone = client_gone_message(0.0)
    assert ended_message(gone, "all 3 jobs finished") == f"{gone}; all 3 jobs finished"
    # any other earlier message (a retry, a kill) is replaced by the outcome, as before
    assert ended_message("retried by user", "2 of 3 jobs finished") == "2 of 3 jobs finished"
    assert ended_message("", "none of 3 jobs finished") == "none of 3 jobs finished"
