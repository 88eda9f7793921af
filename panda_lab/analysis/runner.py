"""What an analysis job runs on the pilot: read its chunks, call the processor, measure.

The processor is a plain function ``process(events)`` or an object with ``process`` (and
optionally ``postprocess``, applied once to the merged result).  Given ``columns``, every
chunk is read eagerly with only those branches.  Otherwise the branches it reads are found
once per worker (``discover_columns`` on a few entries); every chunk then reads them up
front and keeps the rest of the file lazy, so whatever else the processor touches (a field
used only for its structure, a code path the first entries never took) is still there.

With a coffea schema (``NanoEventsSpec``, :mod:`.nanoevents`), every chunk is coffea's
NanoEvents instead, built as coffea's ``Runner`` builds them for a work item (virtual mode:
a branch is read when the processor first touches it; ``columns`` are preloaded), with the
chunk's dataset and fileset metadata in ``events.metadata``.

A missing or corrupt input is a :class:`DataError`: the job tries the file's other
replicas first, and the error's category (``input``) lets the retry rules send the job
to another site, while an exception of the processor stays a user error, never retried.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from panda_lab import reads
from panda_lab.analysis.accumulate import MergeError, merge, rules_for
from panda_lab.analysis.errors import DataError
from panda_lab.analysis.events import discover_columns, materialize, read_chunk
from panda_lab.analysis.nanoevents import (
    NanoEventsSpec,
    read_events,
    read_failure,
    remember_reads,
)
from panda_lab.analysis.readcache import cache_bytes
from panda_lab.analysis.sitecache import local_copy
from panda_lab.model.splitter import Chunk

#: Columns discovered per processor: ``id -> (processor, columns)``.  Holding the
#: processor keeps its id from being reused by another object while cached.
_COLUMNS: dict[int, tuple[Any, list[str]]] = {}


@dataclass
class ChunkResult:
    """A job's result: the processor's output and what it cost, for the merger and the
    splitter's scouting.

    ``result`` is the chunks' outputs merged; ``events`` the entries read; ``seconds`` the
    wall time reading and processing (not column discovery); ``rss_mb`` the process's peak
    resident memory in MB (``ru_maxrss``); ``keys`` each chunk's ``Chunk.key``, in order;
    ``cache_mb`` what the worker's cache of read arrays (:mod:`.readcache`) held at the end,
    in MB, part of ``rss_mb``."""

    result: Any
    events: int
    seconds: float
    rss_mb: float
    keys: list[str] = field(default_factory=list)
    cache_mb: float = 0.0


def process_of(processor: Any) -> Callable[[Any], Any]:
    """The callable a job calls on each chunk's events: ``processor.process`` when it has
    one (coffea's ``ProcessorABC`` shape), else ``processor`` itself."""
    return processor.process if hasattr(processor, "process") else processor


def postprocess(processor: Any, result: Any) -> Any:
    """``processor.postprocess(result)`` when it has one (coffea's ``ProcessorABC``), else
    ``result`` unchanged; whatever ``postprocess`` raises propagates.

    As coffea's ``Runner`` does, a ``postprocess`` that returns ``None`` (``ProcessorABC``'s
    own, or one that edits the result in place) leaves ``result``, as it edited it."""
    fn = getattr(processor, "postprocess", None)
    if fn is None or not callable(fn):
        return result
    out = fn(result)
    return result if out is None else out


def _open_any(
    chunk: dict, columns: list[str] | None, processor: Any, process: Callable,
    nanoevents: NanoEventsSpec | None = None,
) -> tuple[Any, Chunk, float]:
    """Read a chunk from the first replica that works: a copy in the site's stage-in
    cache (:mod:`.sitecache`), then those at the site's own storage endpoint
    (``PANDA_LAB_ENDPOINT``, set by the pilot), then the others.  With ``nanoevents``, the
    events are coffea's and the read branches go to the worker's preload memory once the
    chunk is processed."""
    near = os.environ.get(reads.LOCAL_ENDPOINT)
    replicas = sorted(chunk.get("replicas") or [], key=lambda r: r["endpoint"] != near)
    for r in replicas:  # what is read from a replica counts for its endpoint's link
        reads.remember(r["url"], r["endpoint"])
    urls = [r["url"] for r in replicas] or [chunk["path"]]
    # the site's stage-in cache first: a copy it holds, or one staged in now if told to
    copy = local_copy(chunk, replicas)
    if copy is not None:
        urls.insert(0, copy)
    last: DataError | None = None
    for url in urls:
        c = Chunk(chunk["file_index"], url, chunk["tree"], chunk["start"], chunk["stop"])
        try:
            if nanoevents is not None:
                t0 = time.perf_counter()
                return read_events(c, nanoevents, processor, columns or ()), c, t0
            if columns is None:
                # Keyed by the processor: a bound ``process`` method is new at each access.
                hit = _COLUMNS.get(id(processor))
                if hit is None or hit[0] is not processor:
                    hit = _COLUMNS[id(processor)] = (processor, discover_columns(process, c))
                    while len(_COLUMNS) > 16:
                        _COLUMNS.pop(next(iter(_COLUMNS)))
                t0 = time.perf_counter()
                return read_chunk(c, prefetch=hit[1]), c, t0
            t0 = time.perf_counter()
            return read_chunk(c, columns), c, t0
        except DataError as exc:
            if exc.entry_start is None:  # say which entries the job was to read
                exc = DataError(exc.file, exc.tree or c.tree, exc.reason, c.start, c.stop)
            last = exc
    assert last is not None
    if len(urls) > 1:
        last.add_note(f"tried {len(urls)} replicas: {', '.join(urls)}")
    raise last


#: How the note naming a failed chunk starts (the payload runner puts it on top of the
#: job's traceback).
CHUNK_NOTE = "panda-lab: failed on "


def name_chunk(exc: BaseException, chunk: dict) -> None:
    """Add to ``exc`` a note naming the chunk it was raised on: ``panda-lab: failed on
    /data/dimuon_001.root, entries 0 to 100,000 (tree Events)``.  Never raises."""
    try:
        exc.add_note(f"{CHUNK_NOTE}{chunk['path']}, entries {chunk['start']:,} to "
                     f"{chunk['stop']:,} (tree {chunk['tree']})")
    except Exception:  # a note is a help, never a second failure
        pass


def run_chunks(processor: Any, columns: list[str] | None, chunk_dicts: list[dict],
               nanoevents: NanoEventsSpec | None = None) -> ChunkResult:
    """The job function of an analysis task (its common payload binds the processor).

    ``chunk_dicts`` are the job's chunks (``file_index``, ``path``, ``tree``, ``start``,
    ``stop``, optional ``replicas``); ``columns`` as in :func:`read_chunk`, or with
    ``nanoevents`` the branches coffea preloads.  ``nanoevents`` makes each chunk coffea's
    NanoEvents (:mod:`.nanoevents`).  Returns one :class:`ChunkResult` for all of them,
    their outputs merged in order.

    Raises :class:`DataError` (with the chunk's entry range) when a chunk cannot be read
    from any of its replicas, the last replica's error with a note listing those tried;
    :class:`MergeError` naming the chunk and the earlier chunks when outputs cannot be
    merged (or one output is no accumulator); and whatever the processor raises, as is."""
    process = process_of(processor)
    rules = rules_for(processor)  # a coffea processor's lists concatenate, as in coffea
    out: Any = None
    events = 0
    seconds = 0.0  # reading and processing; a first job's column discovery is not counted
    keys = []
    for i, chunk in enumerate(chunk_dicts):
        try:
            arrays, c, t0 = _open_any(chunk, columns, processor, process, nanoevents)
            if nanoevents is None:
                part = process(arrays)
                materialize(part)  # what it owes a lazy array is read here, in the job's time
            else:
                arrays, log = arrays
                part = _process_nanoevents(process, arrays, c)
                remember_reads(processor, log)
        except DataError:
            raise  # unreadable input: its message names the file and range already
        except Exception as exc:  # the processor's error, with the input it failed on
            name_chunk(exc, chunk)
            raise
        try:
            out = merge(out, part, rules=rules)
        except MergeError as exc:  # say which input, as the server does for whole jobs
            raise MergeError(exc.path, exc.reason, chunks=[chunk],
                             merged_chunks=chunk_dicts[:i]) from None
        seconds += time.perf_counter() - t0
        events += c.entries
        keys.append(c.key)
        reads.processed(c.entries)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return ChunkResult(out, events, seconds, rss, keys, cache_bytes() / 2**20)


def _process_nanoevents(process: Callable, events: Any, chunk: Chunk) -> Any:
    """``process(events)`` with what it owes lazy arrays read; a branch that fails to read
    while it runs is a :class:`DataError` (bad input), anything else the processor's own."""
    try:
        part = process(events)
        materialize(part)
    except DataError:
        raise
    except Exception as exc:
        error = read_failure(exc, chunk)
        if error is None:
            raise
        raise error from exc
    return part
