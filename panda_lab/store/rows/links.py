"""Link rows: the (endpoint, site) links brokerage reads input over, declared and learned;
and the site statistics (events per second per slot, failure rate) it weighs sites by.

The learning rule is the model's (:func:`panda_lab.model.network.observe`: FTS's
exponential smoothing, alpha 0.1); here it is applied to the rows, in the order the
samples were reported.  A report's samples (:func:`samples`) are held by the store and
written together (:func:`learn_samples`; when, see ``Database._learn_now`` in
store/base.py), never twice and never from a report that was rolled back.  A site's
statistics are smoothed the same way, one sample per ended attempt.  Functions take a
``Connection`` and open no transaction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from sqlalchemy import Connection, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row

from panda_lab.model import ErrorCategory, JobState
from panda_lab.model.network import ALPHA, WINDOW_S, Link, LinkEstimate, effective, observe
from panda_lab.model.staging import CACHE_ENDPOINT
from panda_lab.store.schema import links, site_stats

#: Failures that say something about the site (not the user's code, not a kill).
SITE_FAULTS = frozenset({str(ErrorCategory.SYSTEM), str(ErrorCategory.INPUT),
                         str(ErrorCategory.TIMEOUT), str(ErrorCategory.PAYLOAD)})


def _insert(conn: Connection):
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert


#: What reported attempts measured, as plain values: ``(reads, ended)``, reads
#: ``[(site, [{"endpoint", "bytes", "seconds", "requests"}])]``, ended the tuples of
#: :func:`observe_sites`.
Samples = tuple[list[tuple[str, list[dict]]], list[tuple]]


#: The largest count a link's row keeps (SQLite's and PostgreSQL's BIGINT).
INT64_MAX = 2**63 - 1
#: The most bytes one read of one job may claim (1 PB): beyond, the sample is dropped.
MAX_READ_BYTES = 2**50


def _finite(x, upper: float = 1e15) -> float | None:
    """``x`` as a float if it is a finite number in ``[0, upper]``, else None."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and 0.0 <= v <= upper else None


def _read(r: dict) -> dict | None:
    """A read that can be smoothed and written, or None: bytes a whole number in
    ``[0, MAX_READ_BYTES]``, seconds and requests finite and not negative."""
    b = _finite(r.get("bytes"), MAX_READ_BYTES)
    sec, req = _finite(r.get("seconds")), _finite(r.get("requests"))
    if b is None or sec is None or req is None:
        return None
    return {"endpoint": r.get("endpoint") or "", "bytes": int(b), "seconds": sec,
            "requests": int(req)}


def samples(measured: list[tuple[Row, dict, str]]) -> Samples:
    """What reported attempts ``(job row, update, new state)`` measured: the bytes, seconds
    and requests they read per endpoint, and how ended ones ended and how fast they
    computed (see :func:`learn_samples`).

    Samples are held and written later, together with others: one that cannot be
    written (a count past 64 bits, an infinite or negative time) would fail every later
    write and so stop all learning.  Such values are dropped here, whatever let them
    through (the API's schema bounds them too)."""
    ended = (str(JobState.FINISHED), str(JobState.FAILED))
    reads, out = [], []
    for row, u, new in measured:
        good = [g for g in map(_read, u.get("reads") or ()) if g is not None]
        if good:
            reads.append((row.site, good))
        if new in ended:
            out.append((row.site, new == JobState.FINISHED,
                        (u.get("error") or {}).get("category"), _finite(u.get("events")),
                        _finite(u.get("seconds")), sum(g["seconds"] for g in good),
                        bool(u.get("cold"))))
    return reads, out


def learn_samples(conn: Connection, batches: list[Samples], t: float) -> None:
    """Smooth ``batches`` of samples, in their order, into the links (their (endpoint,
    site) throughput and latency) and the sites (speed, failure rate, job time), at time
    ``t``: two statements for the links and two for the sites, however many batches."""
    from panda_lab.store.rows.sites import endpoints

    reads = [r for b in batches for r in b[0]]
    if reads:
        own = endpoints(conn) if any(not r.get("endpoint") for _, rs in reads for r in rs) \
            else {}
        observe_reads(conn, [(site, own.get(site, ""), rs) for site, rs in reads], t)
    observe_sites(conn, [e for b in batches for e in b[1]], t)


def declare(conn: Connection, declared: list[dict]) -> None:
    """Record the declared links ``[{"endpoint", "site", "mbps", "latency_ms"}]``; links
    declared before and not now lose their declaration (what they learned is kept)."""
    conn.execute(update(links).values(declared_mbps=None, declared_latency_ms=None))
    if not declared:
        return
    ins = _insert(conn)(links).values([
        {"endpoint": d["endpoint"], "site": d["site"], "declared_mbps": float(d["mbps"]),
         "declared_latency_ms": float(d.get("latency_ms") or 0.0), "observations": 0,
         "bytes": 0, "seconds": 0.0} for d in declared])
    conn.execute(ins.on_conflict_do_update(
        index_elements=[links.c.endpoint, links.c.site],
        set_={"declared_mbps": ins.excluded.declared_mbps,
              "declared_latency_ms": ins.excluded.declared_latency_ms}))


def observe_reads(conn: Connection, reports: Iterable[tuple[str, str, list[dict]]],
                  t: float, alpha: float = ALPHA) -> int:
    """Smooth what jobs read into their links: ``reports`` are ``(site, the site's own
    endpoint, [{"endpoint", "bytes", "seconds", "requests"}])``; an endpoint ``""`` is
    the site's own (skipped when the site names none).  Returns the observations made."""
    samples: dict[tuple[str, str], list[dict]] = {}
    for site, own, reads in reports:
        for r in reads:
            endpoint = r.get("endpoint") or own
            if endpoint == CACHE_ENDPOINT:  # the site's own cache: no link
                continue
            if endpoint and site and r.get("bytes", 0) > 0:
                samples.setdefault((endpoint, site), []).append(r)
    if not samples:
        return 0
    keys = sorted(samples)
    rows = {(r.endpoint, r.site): r for r in conn.execute(
        select(links).where(links.c.endpoint.in_({e for e, _ in keys}),
                            links.c.site.in_({s for _, s in keys})).with_for_update())}
    out = []
    for key in keys:
        row = rows.get(key)
        est = _estimate(key, row) if row is not None else LinkEstimate(*key)
        nbytes, seconds = (row.bytes, row.seconds) if row is not None else (0, 0.0)
        for r in samples[key]:
            est = observe(est, int(r["bytes"]), float(r["seconds"]), int(r["requests"]), t,
                          alpha)
            nbytes = min(nbytes + int(r["bytes"]), INT64_MAX)  # a total, kept writable
            seconds += float(r["seconds"])
        out.append({"endpoint": key[0], "site": key[1], "mbps": est.mbps,
                    "latency_ms": est.latency_ms, "observations": est.observations,
                    "observed_at": est.updated_at, "bytes": nbytes, "seconds": seconds})
    ins = _insert(conn)(links).values(out)
    conn.execute(ins.on_conflict_do_update(
        index_elements=[links.c.endpoint, links.c.site],
        set_={k: getattr(ins.excluded, k) for k in ("mbps", "latency_ms", "observations",
                                                      "observed_at", "bytes", "seconds")}))
    return sum(len(v) for v in samples.values())


def _estimate(key: tuple[str, str], row) -> LinkEstimate:
    if not row.observations:
        # nothing learned yet: the declared values are the starting point
        base = LinkEstimate(*key)
        return LinkEstimate(key[0], key[1],
                            row.declared_mbps if row.declared_mbps else base.mbps,
                            row.declared_latency_ms if row.declared_latency_ms is not None
                            else base.latency_ms)
    return LinkEstimate(key[0], key[1], row.mbps, row.latency_ms, row.observations,
                        row.observed_at)


def _declared(row) -> Link | None:
    if row.declared_mbps is None:
        return None
    return Link(row.endpoint, row.site, row.declared_mbps, row.declared_latency_ms or 0.0,
                source="declared")


def effective_links(conn: Connection, now: float,
                    window_s: float = WINDOW_S) -> dict[tuple[str, str], Link]:
    """The link brokerage uses for each (endpoint, site) that has a row: learned, decayed
    toward the declared value (or the prior) past ``window_s``; pairs without a row are
    the prior (brokerage's default)."""
    return {(r.endpoint, r.site): effective(_estimate((r.endpoint, r.site), r)
                                            if r.observations else None,
                                            _declared(r), now, window_s)
            for r in conn.execute(select(links))}


def listing(conn: Connection, now: float, window_s: float = WINDOW_S) -> list[dict]:
    """Every link with a row, by endpoint then site: ``[{"endpoint", "site", "mbps",
    "latency_ms", "source", "observations", "age_s", "declared_mbps",
    "declared_latency_ms", "learned_mbps", "bytes", "seconds"}]``; ``mbps`` and
    ``latency_ms`` are what brokerage uses now, ``learned_mbps`` the raw estimate."""
    eff = effective_links(conn, now, window_s)
    out = []
    for r in conn.execute(select(links).order_by(links.c.endpoint, links.c.site)):
        e = eff[(r.endpoint, r.site)]
        out.append({"endpoint": r.endpoint, "site": r.site, "mbps": round(e.mbps, 3),
                    "latency_ms": round(e.latency_ms, 3), "source": e.source,
                    "observations": r.observations,
                    "age_s": None if r.observed_at is None else round(now - r.observed_at, 1),
                    "declared_mbps": r.declared_mbps,
                    "declared_latency_ms": r.declared_latency_ms,
                    "learned_mbps": r.mbps, "bytes": int(r.bytes),
                    "seconds": round(r.seconds, 3)})
    return out


# ---- site statistics ---------------------------------------------------------------------

def observe_sites(conn: Connection, ended: Iterable[tuple],
                  t: float, alpha: float = ALPHA) -> None:
    """Smooth ended attempts into their site's statistics: ``ended`` are ``(site,
    finished, error category, events, wall seconds, read seconds, cold)`` (``cold``
    optional, False).  A finished attempt with events and seconds is a rate sample
    (events / (seconds - read seconds)) and a job-time sample; every attempt but a
    user's error or a kill is a failure-rate sample (1 for a failure of the site's kind,
    :data:`SITE_FAULTS`).

    A *cold* attempt, its task's first in a new worker process, carries the imports and
    first opens in its time (a tenth of the speed is common): it is a sample only while
    the site has no warm one, and the first warm sample replaces what cold ones gave,
    so a site's first, cold jobs do not make it look slow for the next many.  (PanDA's
    scouts are measured likewise, on jobs that ran whole, and JEDI re-measures a task
    once its scouts end.)  A site whose every job is cold (a pilot per job) is
    measured by them, which is its true speed."""
    by_site: dict[str, list] = {}
    for e in ended:
        if e[0]:
            by_site.setdefault(e[0], []).append(e)
    if not by_site:
        return
    rows = {r.site: r for r in conn.execute(
        select(site_stats).where(site_stats.c.site.in_(sorted(by_site))).with_for_update())}
    out = []
    for site in sorted(by_site):
        r = rows.get(site)
        rate, n_rate = (r.slot_rate, r.rate_samples) if r is not None else (None, 0)
        warm = (r.warm_samples or 0) if r is not None else 0
        mean = r.mean_job_s if r is not None else None
        fail, n_out = (r.failure_rate, r.outcomes) if r is not None else (0.0, 0)
        for _, finished, category, events, seconds, read_s, *more in by_site[site]:
            cold = bool(more and more[0])
            if finished and events and seconds and not (cold and warm):
                sample = events / max(seconds - read_s, 1e-3)
                # a warm one replaces cold ones; a rate lost (NULL) starts again
                first = not n_rate or rate is None or (not cold and not warm)
                rate = sample if first else (1 - alpha) * rate + alpha * sample
                mean = seconds if first or mean is None else \
                    (1 - alpha) * mean + alpha * seconds
                n_rate += 1
                warm += not cold
            if finished or (category in SITE_FAULTS):
                x = 0.0 if finished else 1.0
                fail = x if not n_out else (1 - alpha) * fail + alpha * x
                n_out += 1
        out.append({"site": site, "slot_rate": rate, "rate_samples": n_rate,
                    "warm_samples": warm, "mean_job_s": mean, "failure_rate": fail,
                    "outcomes": n_out, "updated_at": t})
    ins = _insert(conn)(site_stats).values(out)
    conn.execute(ins.on_conflict_do_update(
        index_elements=[site_stats.c.site],
        set_={k: getattr(ins.excluded, k) for k in ("slot_rate", "rate_samples",
                                                      "warm_samples", "mean_job_s",
                                                      "failure_rate", "outcomes",
                                                      "updated_at")}))


def site_statistics(conn: Connection) -> dict[str, tuple[float | None, float, float | None]]:
    """``{site: (slot_rate events/s or None, failure_rate 0..1, mean_job_s or None)}``."""
    return {r.site: (r.slot_rate, r.failure_rate, r.mean_job_s)
            for r in conn.execute(select(site_stats))}
