"""Why each job went where it went, and what the network looks like, as tables.

Every brokerage decision is kept on its attempt (``broker_info``, see
:class:`panda_lab.model.brokerage.Choice`): each candidate site with the filter that
removed it and why, or its weight factors (free capacity, site speed, data locality,
network, reliability), its estimated queue, read and compute times, its weight and
whether it was picked.  Here those records become pandas DataFrames, one row per (job,
candidate), and one sentence per job (:func:`panda_lab.model.explain.explain`).  The
learned links (``GET /api/links``) become a table too.  PanDA keeps such decisions in
its logs only; here they are data a physicist can sort and plot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from panda_lab.model.explain import explain

#: The columns of :func:`brokerage_frame`, in order.
BROKERAGE_COLUMNS = ["job", "job_index", "attempt", "site", "passed", "filter", "reason",
                     "free", "speed", "locality", "network", "reliability", "queue_s",
                     "read_s", "compute_s", "total_s", "access", "link_mbps", "weight",
                     "picked", "policy", "moved_to"]

#: The columns of :func:`links_frame`, in order.
LINK_COLUMNS = ["endpoint", "site", "mbps", "latency_ms", "source", "observations",
                "age_s", "declared_mbps", "declared_latency_ms", "learned_mbps", "bytes",
                "seconds"]

_FACTORS = ("free", "speed", "locality", "network", "reliability")
_ESTIMATES = ("queue_s", "read_s", "compute_s", "total_s")


def brokerage_rows(job: dict) -> list[dict]:
    """The candidate rows of one attempt (a job record with ``broker_info``), in the
    order brokerage saw the sites; a decision kept before candidates were recorded gives
    one row per weighed or rejected site, without factors."""
    info = job.get("broker_info") or {}
    base = {"job": job["id"], "job_index": job["job_index"], "attempt": job["attempt"],
            "policy": info.get("policy"), "moved_to": (info.get("moved") or {}).get("to")}
    cands = info.get("candidates")
    if cands is None:
        picked = info.get("picked")
        rows = [{**base, "site": s, "passed": True, "weight": w, "picked": s == picked}
                for s, w in (info.get("weights") or {}).items()]
        rows += [{**base, "site": s, "passed": False, "reason": r, "weight": 0.0,
                  "picked": False} for s, r in (info.get("rejected") or {}).items()]
        return rows
    out = []
    for c in cands:
        factors, est = c.get("factors") or {}, c.get("est") or {}
        out.append({**base, "site": c["site"], "passed": c["passed"], "filter": c.get("filter"),
                    "reason": c.get("reason"), **{k: factors.get(k) for k in _FACTORS},
                    **{k: est.get(k) for k in _ESTIMATES}, "access": c.get("access"),
                    "link_mbps": (c.get("link") or {}).get("mbps"), "weight": c.get("weight"),
                    "picked": c.get("picked", False)})
    return out


def brokerage_frame(jobs: list[dict]) -> pd.DataFrame:
    """One row per (job, candidate site) of these attempts (job records as
    ``GET /api/tasks/{task}/jobs`` gives them), columns :data:`BROKERAGE_COLUMNS`:
    ``passed`` with the ``filter`` and ``reason`` of a site removed, the weight
    ``free``/``speed``/``locality``/``network``/``reliability`` factors, the estimated
    ``queue_s``/``read_s``/``compute_s``/``total_s`` seconds, ``access`` (``local``,
    ``remote`` read, ``stage-in`` to the site's cache, or read from its ``cache``), the
    throughput of the link it would read over (``link_mbps``, MB/s), the ``weight`` and
    whether it was ``picked``; ``moved_to``, on every row of a job that a pilot of
    another site took from the picked site's queue (sites sharing one machine's cores,
    ``store/rows/jobs.py``, ``dispatch``), that site, else None.  Empty (with the
    columns) for none."""
    rows = [r for j in jobs for r in brokerage_rows(j)]
    return pd.DataFrame(rows, columns=BROKERAGE_COLUMNS)


def links_frame(rows: list[dict]) -> pd.DataFrame:
    """The links (``GET /api/links`` rows) as a table indexed by (endpoint, site):
    throughput brokerage uses (``mbps``, MB/s) and latency (ms), where it comes from
    (``source``: learned, declared, prior), the ``observations`` it rests on and the
    age of the last (``age_s``), the declared and raw learned values, the bytes and
    seconds measured in all."""
    df = pd.DataFrame(rows, columns=LINK_COLUMNS)
    return df.set_index(["endpoint", "site"])


@dataclass
class JobBrokerage:
    """One job's brokerage: its latest attempt's record and decision."""

    record: dict

    @property
    def site(self) -> str | None:
        """Where the attempt was sent."""
        return self.record.get("site")

    @property
    def brokerage(self) -> str:
        """Why it went there, in one sentence, every candidate named."""
        return explain(self.record.get("broker_info") or {})

    @property
    def candidates(self) -> pd.DataFrame:
        """Its candidate sites, as in :func:`brokerage_frame`."""
        return brokerage_frame([self.record])

    def __repr__(self) -> str:
        r = self.record
        return f"<job {r['job_index']} attempt {r['attempt']} ({r['state']}): {self.brokerage}>"

    def _repr_html_(self) -> str:
        import html

        return f"<b>job {self.record['job_index']}</b> {html.escape(self.brokerage)}"


def job_of(jobs: list[dict], index: int) -> dict[str, Any]:
    """The latest attempt of job ``index`` among ``jobs``; ``KeyError`` naming the index
    and how many jobs there are when none has it."""
    found = [j for j in jobs if j["job_index"] == index]
    if not found:
        raise KeyError(f"the task has no job {index} (it has {len(jobs)} job(s))")
    return max(found, key=lambda j: j["attempt"])
