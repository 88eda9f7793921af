"""Network links between storage endpoints and sites, and how their throughput is learned.

A *link* is ``(endpoint, site)``: how fast a job at ``site`` reads what ``endpoint``
stores (MB/s, 1 MB = 10^6 bytes) and what each read request costs (latency, ms).  A link
is *declared* in ``sites.toml``, *learned* from what pilots report of their reads, or,
never seen, a *prior*.

The rules, and where they come from:

* Smoothing: each report (bytes, seconds, requests) updates an exponentially smoothed
  estimate, ``new = (1 - alpha) * old + alpha * sample`` with ``alpha = 0.1``, the weight the FTS
  optimizer gives a new throughput sample (``fts3`` ``OptimizerConnections.cpp``); the
  first report sets the value outright, so one observation is enough to leave the prior.
* Age: PanDA's network-aware brokerage ignores network rows older than an hour
  (``WINDOW_S``).  Here an estimate older than the window is not dropped at once but decays
  toward the declared value (or the prior): its weight halves with every further window,
  blended geometrically (throughputs are compared by ratio, so a 10 MB/s and a
  1000 MB/s estimate half-way decayed give 100 MB/s, not 505).
* A declared throughput of 0 marks the link unusable whatever was learned: an operator's
  word wins (brokerage then filters the sites that would need it).

Pure data and arithmetic: nothing here reads a clock, the database or the network; the
caller passes ``now`` (seconds since the epoch, or the simulator's virtual time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

#: Smoothing weight of a new sample: the FTS optimizer's alpha.
ALPHA = 0.1
#: Seconds an estimate is trusted as it is; PanDA ignores network data older than an hour.
WINDOW_S = 3600.0
#: Throughput assumed for a link never declared nor measured, MB/s.  A WAN stream of a
#: single reader is typically 10-100 MB/s (WLCG site-to-site FTS averages sit in that
#: range); the low end is taken so that an unknown link is not trusted with heavy reads
#: before it is measured (brokerage's probing floor still sends it a share of the jobs).
PRIOR_MBPS = 10.0
#: Latency assumed for a link never declared nor measured, ms: a continental round trip
#: (European WLCG sites are 10-40 ms apart, transatlantic ~100 ms).
PRIOR_LATENCY_MS = 50.0
#: A sample's transfer time is at least this fraction of the read's seconds when the
#: latency of its requests is taken off (a latency estimate larger than the whole read
#: would otherwise give an infinite throughput).
MIN_TRANSFER_FRACTION = 0.1

Source = Literal["declared", "learned", "prior"]


@dataclass(frozen=True, slots=True)
class Link:
    """What brokerage uses of a link: throughput ``mbps`` (MB/s; 0: unusable), latency
    ``latency_ms`` per read request, and what it rests on: ``observations`` (reports
    smoothed into it), ``age_s`` (seconds since the last one; None if none) and
    ``source`` (``"declared"``, ``"learned"`` or ``"prior"``)."""

    endpoint: str
    site: str
    mbps: float
    latency_ms: float
    observations: int = 0
    age_s: float | None = None
    source: Source = "prior"

    @property
    def usable(self) -> bool:
        return self.mbps > 0

    def read_s(self, nbytes: float, requests: int = 1) -> float:
        """Seconds to read ``nbytes`` in ``requests`` requests over this link
        (``inf`` when it is unusable and there is something to read)."""
        if nbytes <= 0:
            return 0.0
        if self.mbps <= 0:
            return math.inf
        return nbytes / (self.mbps * 1e6) + max(requests, 1) * self.latency_ms / 1000.0


#: The prior link (endpoint and site are filled in by :func:`effective`).
PRIOR = Link("", "", PRIOR_MBPS, PRIOR_LATENCY_MS, source="prior")


@dataclass(frozen=True, slots=True)
class LinkEstimate:
    """The learned state of one link as the server keeps it: smoothed ``mbps`` and
    ``latency_ms``, how many reports made it (``observations``; 0: none yet, the values
    are the starting point) and when the last came (``updated_at``, seconds, the
    caller's clock)."""

    endpoint: str
    site: str
    mbps: float = PRIOR_MBPS
    latency_ms: float = PRIOR_LATENCY_MS
    observations: int = 0
    updated_at: float | None = None


def observe(estimate: LinkEstimate, nbytes: int, seconds: float, requests: int, now: float,
            alpha: float = ALPHA, *, latency_ms: float | None = None) -> LinkEstimate:
    """The estimate after one report: a job read ``nbytes`` bytes from the link in
    ``seconds`` wall seconds with ``requests`` read requests, at time ``now``.

    The throughput sample is ``nbytes / transfer time``, the transfer time being the
    seconds less ``requests x latency`` (the estimate's latency, or ``latency_ms`` when
    the reader measured it, e.g. its time to first byte), but never under
    :data:`MIN_TRANSFER_FRACTION` of the seconds.  A measured ``latency_ms`` is smoothed
    the same way.  The first report (``observations == 0``) sets the values, later ones
    move them by ``alpha``.  A report of no bytes or no time changes nothing (returns
    ``estimate``).  Raises ``ValueError`` for a negative quantity or ``alpha`` outside
    ``(0, 1]``."""
    if nbytes < 0 or seconds < 0 or requests < 0:
        raise ValueError(f"nbytes, seconds and requests must not be negative: "
                         f"{nbytes}, {seconds}, {requests}")
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    if nbytes == 0 or seconds <= 0:
        return estimate
    lat = estimate.latency_ms if latency_ms is None else latency_ms
    transfer = max(seconds - max(requests, 1) * lat / 1000.0, seconds * MIN_TRANSFER_FRACTION)
    sample = nbytes / transfer / 1e6
    a = 1.0 if estimate.observations == 0 else alpha
    new_lat = estimate.latency_ms
    if latency_ms is not None:
        new_lat = latency_ms if estimate.observations == 0 else \
            (1 - a) * estimate.latency_ms + a * latency_ms
    return LinkEstimate(estimate.endpoint, estimate.site, (1 - a) * estimate.mbps + a * sample,
                        new_lat, estimate.observations + 1, now)


def decay_weight(age_s: float, window_s: float = WINDOW_S) -> float:
    """How much a learned estimate of age ``age_s`` still counts (1 within the window,
    then halving with every further window)."""
    if age_s <= window_s:
        return 1.0
    return 0.5 ** ((age_s - window_s) / window_s) if window_s > 0 else 0.0


def effective(estimate: LinkEstimate | None, declared: Link | None, now: float,
              window_s: float = WINDOW_S, prior: Link = PRIOR) -> Link:
    """The link brokerage should use, from what was learned (``estimate``), what was
    declared (``declared``) and the ``prior``, at time ``now``.

    * declared with ``mbps == 0``: that (unusable), whatever was learned;
    * no estimate, or one without observations: the declared link, else the prior
      (``observations`` 0: brokerage probes it);
    * an estimate within ``window_s``: its values (source ``"learned"``);
    * older: blended toward the declared (else prior) values with
      :func:`decay_weight`, geometrically; still ``"learned"`` with its count and age.

    The result is named by the estimate's (else the declared) endpoint and site."""
    base = declared or prior
    endpoint = (estimate or declared or prior).endpoint
    site = (estimate or declared or prior).site
    if declared is not None and declared.mbps <= 0:
        return replace(declared, endpoint=endpoint, site=site)
    if estimate is None or estimate.observations == 0:
        return replace(base, endpoint=endpoint, site=site, observations=0, age_s=None,
                       source="declared" if declared is not None else "prior")
    age = max(0.0, now - estimate.updated_at) if estimate.updated_at is not None else math.inf
    w = decay_weight(age, window_s)
    mbps = math.exp(w * math.log(estimate.mbps) + (1 - w) * math.log(base.mbps))
    lat = w * estimate.latency_ms + (1 - w) * base.latency_ms
    return Link(endpoint, site, mbps, lat, estimate.observations,
                None if math.isinf(age) else age, "learned")
