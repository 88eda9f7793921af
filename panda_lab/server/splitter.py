"""The splitter (PanDA's JEDI): turns a dataset analysis into jobs.

Three ways: ``events_per_job`` (cut on the files' cluster boundaries), ``files_per_job``,
or ``auto``: a few scout jobs run first on small chunks, their measured events per
second (and memory) fix the size of the remaining jobs so each lasts about
``target_job_seconds``.  Every entry of every file belongs to exactly one job.
A dataset without entries gives one job over no entries (``split_empty``), so even an
empty skim has the processor's result.  Pure functions over file dicts (path, tree,
entries, clusters, replicas).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

#: Events of a scout chunk (cut on cluster boundaries, so possibly more).
SCOUT_EVENTS = 20_000
#: Used when no scout finished: a size that is safe for small and large files alike.
FALLBACK_EVENTS = 200_000


@dataclass
class SplitRule:
    mode: str = "auto"                 # "auto", "events" or "files"
    events_per_job: int = 0
    files_per_job: int = 0
    target_job_seconds: float = 60.0
    n_scouts: int = 3


def _chunk(f: dict, start: int, stop: int) -> dict:
    return {"file_index": f["file_index"], "path": f["path"], "tree": f["tree"],
            "start": start, "stop": stop, "replicas": f.get("replicas", [])}


def split_range(f: dict, start: int, stop: int, events_per_job: int) -> list[dict]:
    """Chunks covering ``[start, stop)`` of a file, cut only on cluster boundaries, each
    as close to ``events_per_job`` as the clusters allow (never empty)."""
    bounds = [c for c in f["clusters"] if start < c < stop]
    out, lo = [], start
    for b in bounds:
        if b - lo >= events_per_job:
            out.append(_chunk(f, lo, b))
            lo = b
    if lo < stop:
        # Fold a short tail into the previous chunk when that lands nearer the target.
        if out and (stop - lo) < events_per_job / 2:
            out[-1]["stop"] = stop
        else:
            out.append(_chunk(f, lo, stop))
    return out


def split_all(files: list[dict], rule: SplitRule, events_per_job: int | None = None
              ) -> list[list[dict]]:
    """Every job's chunks for a whole dataset (modes ``events`` and ``files``)."""
    if rule.mode == "files":
        n = max(1, rule.files_per_job)
        nonempty = [f for f in files if f["entries"] > 0]
        return [[_chunk(f, 0, f["entries"]) for f in nonempty[i:i + n]]
                for i in range(0, len(nonempty), n)]
    epj = events_per_job or rule.events_per_job
    if epj <= 0:
        raise ValueError("events_per_job must be positive")
    return [[c] for f in files if f["entries"] > 0 for c in split_range(f, 0, f["entries"], epj)]


def split_empty(files: list[dict]) -> list[list[dict]]:
    """For a dataset without entries: one job over no entries of the first file, so the
    processor's own output on zero events (empty histograms, zero counts) is the result.
    No job for a dataset without files: there is no schema to run the processor on."""
    return [[_chunk(files[0], 0, 0)]] if files else []


def scouts(files: list[dict], rule: SplitRule) -> list[list[dict]]:
    """Small chunks at the start of the first files: cheap, and representative enough."""
    out = []
    for f in files:
        if len(out) >= rule.n_scouts:
            break
        if f["entries"] == 0:
            continue
        first = split_range(f, 0, f["entries"], min(SCOUT_EVENTS, f["entries"]))[0]
        out.append([first])
    return out


def remaining(files: list[dict], done: list[dict], events_per_job: int) -> list[list[dict]]:
    """Jobs for every entry not covered by the chunks in ``done`` (the scouts)."""
    taken: dict[int, list[tuple[int, int]]] = {}
    for c in done:
        taken.setdefault(c["file_index"], []).append((c["start"], c["stop"]))
    jobs = []
    for f in files:
        lo = 0
        for a, b in [*sorted(taken.get(f["file_index"], [])), (f["entries"], f["entries"])]:
            if a > lo:
                jobs += [[c] for c in split_range(f, lo, a, events_per_job)]
            lo = max(lo, b)
    return jobs


@dataclass
class Scouting:
    """What the scouts measured; kept on the task so a user can see it."""

    events_per_second: float | None
    rss_mb: float | None
    per_site: dict[str, float]
    events_per_job: int
    note: str

    def as_dict(self) -> dict:
        return {"events_per_second": self.events_per_second, "rss_mb": self.rss_mb,
                "per_site": self.per_site, "events_per_job": self.events_per_job,
                "note": self.note}


def size_from_scouts(measures: list[dict], target_job_seconds: float) -> Scouting:
    """``measures``: one dict per finished scout job with events, seconds, rss_mb, site.

    The slowest site's rate sets the size, so no site's jobs run far past the target."""
    good = [m for m in measures if m["seconds"] > 0 and m["events"] > 0]
    if not good:
        return Scouting(None, None, {}, FALLBACK_EVENTS,
                        f"no scout finished; {FALLBACK_EVENTS} events per job")
    per_site: dict[str, list[float]] = {}
    for m in good:
        per_site.setdefault(m["site"] or "?", []).append(m["events"] / m["seconds"])
    rates = {s: statistics.median(v) for s, v in per_site.items()}
    slowest = min(rates.values())
    epj = max(1000, int(slowest * target_job_seconds))
    rss = max(m.get("rss_mb") or 0.0 for m in good)
    return Scouting(statistics.median([m["events"] / m["seconds"] for m in good]), rss,
                    {s: round(r, 1) for s, r in rates.items()}, epj,
                    f"{epj} events per job for about {target_job_seconds:g} s on the slowest site")
