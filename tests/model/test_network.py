"""Links learned from reads: the smoothing (FTS's alpha = 0.1), the first observation, the
decay of an old estimate toward the declared or prior value, and an operator's 0 MB/s.

Kind tested: an estimate that does not follow what the reads measured (or follows one
read too much), and an estimate trusted past its age.  Members: first sample, later
samples, latency taken off, bad reports, age within and past the window, declared vs
prior as the decay target, unusable declared links.
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from panda_lab.model.network import (
    ALPHA,
    PRIOR_LATENCY_MS,
    PRIOR_MBPS,
    WINDOW_S,
    Link,
    LinkEstimate,
    decay_weight,
    effective,
    observe,
)

MB = 1_000_000


def test_the_first_observation_sets_the_value_and_later_ones_move_it_by_alpha():
    e = LinkEstimate("SE", "SITE", latency_ms=0.0)
    e1 = observe(e, 100 * MB, 1.0, 1, now=10.0)
    assert (e1.mbps, e1.observations, e1.updated_at) == (100.0, 1, 10.0)
    e2 = observe(e1, 10 * MB, 1.0, 1, now=20.0)
    assert e2.mbps == pytest.approx((1 - ALPHA) * 100 + ALPHA * 10)
    assert (e2.observations, e2.updated_at) == (2, 20.0)


def test_the_latency_of_the_requests_is_not_counted_as_slow_throughput():
    e = LinkEstimate("SE", "SITE", latency_ms=100.0)
    # 10 requests x 100 ms = 1 s of the 2 s: 50 MB in 1 s of transfer
    assert observe(e, 50 * MB, 2.0, 10, now=0).mbps == pytest.approx(50.0)
    # a latency estimate bigger than the read leaves at least 10 % of it as transfer
    assert observe(e, 1 * MB, 0.5, 100, now=0).mbps == pytest.approx(1 / 0.05)
    measured = observe(e, 50 * MB, 2.0, 10, now=0, latency_ms=50.0)
    assert measured.latency_ms == 50.0 and measured.mbps == pytest.approx(50 / 1.5)


def test_a_report_of_nothing_changes_nothing_and_bad_reports_are_refused():
    e = LinkEstimate("SE", "SITE")
    assert observe(e, 0, 1.0, 1, now=5) is e and observe(e, 10, 0.0, 1, now=5) is e
    with pytest.raises(ValueError, match="negative"):
        observe(e, -1, 1.0, 1, now=0)
    with pytest.raises(ValueError, match="alpha"):
        observe(e, 1, 1.0, 1, now=0, alpha=0)


@given(st.lists(st.floats(1.0, 1e4), min_size=1, max_size=30))
def test_the_estimate_stays_within_the_samples(rates):
    e = LinkEstimate("SE", "SITE", latency_ms=0.0)
    for i, r in enumerate(rates):
        e = observe(e, int(r * MB), 1.0, 1, now=float(i))
    assert min(rates) * 0.999 <= e.mbps <= max(rates) * 1.001
    assert e.observations == len(rates)


def test_an_estimate_within_the_window_is_used_as_it_is():
    e = observe(LinkEstimate("SE", "SITE", latency_ms=0.0), 500 * MB, 1.0, 1, now=1000.0)
    link = effective(e, None, now=1000.0 + WINDOW_S)
    assert (link.mbps, link.source, link.observations, link.age_s) == (
        pytest.approx(500.0), "learned", 1, WINDOW_S)


def test_an_old_estimate_decays_toward_the_declared_value_else_the_prior():
    e = observe(LinkEstimate("SE", "SITE", latency_ms=0.0), 1000 * MB, 1.0, 1, now=0.0)
    declared = Link("SE", "SITE", 10.0, 20.0, source="declared")
    half = effective(e, declared, now=2 * WINDOW_S)  # one window past: half weight
    assert half.mbps == pytest.approx(100.0)        # geometric: sqrt(1000 * 10)
    assert half.latency_ms == pytest.approx(10.0)
    later = [effective(e, declared, now=k * WINDOW_S).mbps for k in range(1, 8)]
    assert all(a > b for a, b in itertools.pairwise(later)) and later[-1] < 15
    to_prior = effective(e, None, now=20 * WINDOW_S)
    assert to_prior.mbps == pytest.approx(PRIOR_MBPS, rel=0.01)
    assert decay_weight(WINDOW_S) == 1.0 and decay_weight(3 * WINDOW_S) == 0.25


def test_without_observations_the_declared_link_else_the_prior_is_used():
    declared = Link("SE", "SITE", 80.0, 5.0, source="declared")
    assert effective(None, declared, now=0) == declared
    assert effective(LinkEstimate("SE", "SITE"), declared, now=0).source == "declared"
    prior = effective(LinkEstimate("SE", "SITE"), None, now=0)
    assert (prior.endpoint, prior.site, prior.mbps, prior.latency_ms, prior.source,
            prior.observations) == ("SE", "SITE", PRIOR_MBPS, PRIOR_LATENCY_MS, "prior", 0)


def test_a_link_declared_unusable_stays_unusable_whatever_was_learned():
    e = observe(LinkEstimate("SE", "SITE"), 500 * MB, 1.0, 1, now=0.0)
    off = effective(e, Link("SE", "SITE", 0.0, 1.0, source="declared"), now=0.0)
    assert not off.usable and off.read_s(1) == math.inf and off.read_s(0) == 0.0


def test_read_time_is_bytes_over_throughput_plus_latency_per_request():
    assert Link("SE", "S", 100.0, 20.0).read_s(200 * MB, 5) == pytest.approx(2.0 + 0.1)
