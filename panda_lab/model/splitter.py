"""The splitter: turns a dataset analysis into jobs (PanDA's JEDI job splitting).

This is the one splitter: the server runs it when an analysis is submitted and when its
scouts are done, and nothing else cuts a dataset.  It follows JEDI's rules
(``pandajedi/jediorder/JobSplitter.py`` in PanDAWMS/panda-server, with the task's
``nEventsPerJob`` / ``nFilesPerJob``, and JEDI's scouting):

* ``events``: jobs of about ``events_per_job`` entries of one file each (JEDI's
  ``nEventsPerJob``), cut only on the file's cluster boundaries (see :func:`split_range`);
* ``files``: jobs of ``files_per_job`` whole files (JEDI's ``nFilesPerJob``);
* ``auto``: as JEDI's scouting, a few scout jobs run first over small chunks at the start of
  the first files (:func:`scouts`; the task is ``scouting``); what they measured (events per
  second per site, memory) sizes the remaining jobs so that each lasts about
  ``target_job_seconds`` on the slowest site (:func:`size_from_scouts`), and
  :func:`remaining` cuts every entry the scouts did not read.

Every entry of every file belongs to exactly one job, and the chunks come in file order,
then entry order (the *input order* in which awkward arrays are concatenated).  A dataset
with files but no entries gives one job over no entries (:func:`split_empty`), so even an
empty skim has the processor's result.

Pure functions over plain data: files are mappings as the store keeps them
(:class:`SplitFile`: ``file_index``, ``path``, ``tree``, ``entries``, ``clusters``,
``replicas``), chunks are dicts of the same keys as :class:`Chunk` plus the file's
``replicas`` (they travel as job parameters), and a job is a list of chunks.  Nothing here
opens a file, talks to the database or imports above the model.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, NotRequired, TypedDict

#: Events of a scout chunk (cut on cluster boundaries, so possibly more).
SCOUT_EVENTS = 20_000
#: Used when no scout finished: a size that is safe for small and large files alike.
FALLBACK_EVENTS = 200_000
#: The smallest size scouting gives: below it a job's fixed cost dominates its work.
MIN_EVENTS_PER_JOB = 1000

SplitMode = Literal["auto", "events", "files"]


class SplitFile(TypedDict):
    """One file of a dataset as the splitter reads it (the store's file rows)."""

    file_index: int
    path: str
    tree: str
    entries: int
    #: Entries at which every branch starts a basket: 0, rising strictly, to ``entries``.
    clusters: list[int]
    replicas: NotRequired[list[dict]]
    size_bytes: NotRequired[int]


@dataclass
class SplitRule:
    """How a task is split: the ``split`` options of an analysis submission."""

    mode: SplitMode = "auto"
    #: Entries per job, for mode ``events``.
    events_per_job: int = 0
    #: Whole files per job, for mode ``files`` (below 1: one).
    files_per_job: int = 0
    #: Mode ``auto``: the seconds each job should last, sized from the scouts.
    target_job_seconds: float = 60.0
    #: Mode ``auto``: how many scout jobs run first (one per file, the first files).
    n_scouts: int = 3


@dataclass(frozen=True)
class Chunk:
    """Entries ``[start, stop)`` of ``tree`` in the file ``path``, ``file_index`` in its dataset:
    what one job reads of one file."""

    file_index: int
    path: str
    tree: str
    start: int
    stop: int

    @property
    def entries(self) -> int:
        return self.stop - self.start

    @property
    def key(self) -> str:
        """``"path:tree:start-stop"``: the same chunk has the same key in every process and run,
        so results and retries can be matched to their input by key alone. The tree is part of it
        because one file may hold several trees."""
        return f"{self.path}:{self.tree}:{self.start}-{self.stop}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, for job parameters."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Chunk:
        """From a job's chunk parameters (as the splitter makes them); other keys there
        (``replicas``, ...) are ignored.  Raises ``KeyError`` for a missing key."""
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def check_clusters(path: str, entries: int, clusters: Sequence[int]) -> None:
    """Refuse cluster boundaries that would lose or repeat entries, before any job is made
    from them: they must rise strictly from 0 to ``entries`` (``[0]`` for no entries).
    Raises ``ValueError`` naming the file otherwise; returns nothing."""
    c = clusters
    ok = bool(c) and c[0] == 0 and c[-1] == entries
    if not (ok and all(a < b for a, b in itertools.pairwise(c))):
        raise ValueError(f"{path}: clusters must rise strictly from 0 to entries ({entries}), "
                         f"got {list(c[:5])}{'...' if len(c) > 5 else ''}")


def _chunk(f: SplitFile, start: int, stop: int) -> dict:
    # ``bytes``: the range's share of its file, what brokerage weighs reading it by;
    # ``file_bytes``: the whole file, what a stage-in copies
    size = f.get("size_bytes") or 0
    return {"file_index": f["file_index"], "path": f["path"], "tree": f["tree"],
            "start": start, "stop": stop, "replicas": f.get("replicas", []),
            "bytes": size * (stop - start) // f["entries"] if f["entries"] else 0,
            "file_bytes": size}


def split_range(f: SplitFile, start: int, stop: int, events_per_job: int) -> list[dict]:
    """Chunks covering ``[start, stop)`` of file ``f``, in entry order.

    The rule: from each start, cut at the first cluster boundary at least
    ``events_per_job`` entries on (so every chunk but the last has at least that many, and
    no basket is read by two jobs); the short tail that is left is folded into the chunk
    before it when it is under half of ``events_per_job``, which lands nearer the target
    than a small job of its own.  Never an empty chunk; nothing for an empty range.
    """
    bounds = [c for c in f["clusters"] if start < c < stop]
    out, lo = [], start
    for b in bounds:
        if b - lo >= events_per_job:
            out.append(_chunk(f, lo, b))
            lo = b
    if lo < stop:
        if out and (stop - lo) < events_per_job / 2:
            out[-1]["stop"] = stop
        else:
            out.append(_chunk(f, lo, stop))
    return out


def split_all(files: Sequence[SplitFile], rule: SplitRule, events_per_job: int | None = None
              ) -> list[list[dict]]:
    """Every job's chunks for a whole dataset, in input order (modes ``events`` and
    ``files``; ``events_per_job`` overrides the rule's).

    Files without entries give no chunk.  Mode ``files``: jobs of ``rule.files_per_job``
    (at least one) whole files, every job but the last full.  Mode ``events``: one chunk
    per job, by :func:`split_range` over each whole file.  Raises ``ValueError`` when the
    events per job are not positive."""
    if rule.mode == "files":
        n = max(1, rule.files_per_job)
        nonempty = [f for f in files if f["entries"] > 0]
        return [[_chunk(f, 0, f["entries"]) for f in nonempty[i:i + n]]
                for i in range(0, len(nonempty), n)]
    epj = events_per_job or rule.events_per_job
    if epj <= 0:
        raise ValueError("events_per_job must be positive")
    return [[c] for f in files if f["entries"] > 0 for c in split_range(f, 0, f["entries"], epj)]


def split_empty(files: Sequence[SplitFile]) -> list[list[dict]]:
    """For a dataset without entries: one job over no entries of the first file, so the
    processor's own output on zero events (empty histograms, zero counts) is the result.
    No job (``[]``) for a dataset without files: there is no schema to run the processor on."""
    return [[_chunk(files[0], 0, 0)]] if files else []


def scouts(files: Sequence[SplitFile], rule: SplitRule) -> list[list[dict]]:
    """The scout jobs of mode ``auto``: the first chunk of about :data:`SCOUT_EVENTS` entries
    of each of the first ``rule.n_scouts`` files with entries, one job each (cheap, and
    representative enough)."""
    out = []
    for f in files:
        if len(out) >= rule.n_scouts:
            break
        if f["entries"] == 0:
            continue
        first = split_range(f, 0, f["entries"], min(SCOUT_EVENTS, f["entries"]))[0]
        out.append([first])
    return out


def remaining(files: Sequence[SplitFile], done: Sequence[Mapping[str, Any]],
              events_per_job: int) -> list[list[dict]]:
    """Jobs of one chunk each, by :func:`split_range`, for every entry not covered by the
    chunks in ``done`` (the scouts': ``file_index``, ``start``, ``stop``), in input order."""
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
    """What the scouts measured and the size it gave; kept on the task so a user sees it."""

    #: Median events per second over the finished scouts (None: none finished).
    events_per_second: float | None
    #: The largest resident memory a scout reported, in MB.
    rss_mb: float | None
    #: Median events per second by site, rounded to 0.1.
    per_site: dict[str, float]
    events_per_job: int
    note: str

    def as_dict(self) -> dict:
        """The plain form kept in the task's options (``scouting``)."""
        return {"events_per_second": self.events_per_second, "rss_mb": self.rss_mb,
                "per_site": self.per_site, "events_per_job": self.events_per_job,
                "note": self.note}


def size_from_scouts(measures: Sequence[Mapping[str, Any]],
                     target_job_seconds: float, max_events: int | None = None) -> Scouting:
    """The size of the remaining jobs from the scouts' measures: one mapping per finished
    scout job with ``events``, ``seconds``, ``rss_mb`` (may be None) and ``site``.

    The slowest site's median rate sets the size (at least :data:`MIN_EVENTS_PER_JOB`), so
    no site's jobs run far past the target; without a usable measure (no scout finished,
    or none with events and time), :data:`FALLBACK_EVENTS`.  ``max_events`` (the memory a
    payload worker has, as the embedded default sizes it) caps either, never below
    :data:`MIN_EVENTS_PER_JOB`; the note says when it did."""
    cap = max(MIN_EVENTS_PER_JOB, max_events) if max_events else None
    good = [m for m in measures if m["seconds"] > 0 and m["events"] > 0]
    if not good:
        epj = min(FALLBACK_EVENTS, cap) if cap else FALLBACK_EVENTS
        return Scouting(None, None, {}, epj, f"no scout finished; {epj} events per job")
    per_site: dict[str, list[float]] = {}
    for m in good:
        per_site.setdefault(m["site"] or "?", []).append(m["events"] / m["seconds"])
    rates = {s: statistics.median(v) for s, v in per_site.items()}
    slowest = min(rates.values())
    epj = max(MIN_EVENTS_PER_JOB, int(slowest * target_job_seconds))
    note = f"{epj} events per job for about {target_job_seconds:g} s on the slowest site"
    if cap and epj > cap:
        epj = cap
        note = f"{epj} events per job: the most a payload worker's memory holds"
    rss = max(m.get("rss_mb") or 0.0 for m in good)
    return Scouting(statistics.median([m["events"] / m["seconds"] for m in good]), rss,
                    {s: round(r, 1) for s, r in rates.items()}, epj, note)
