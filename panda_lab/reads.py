"""What a job read, per storage endpoint: bytes, seconds and requests (the meter).

The network is learned from what jobs measure (the FTS optimizer's way: every transfer
is an observation of its link).  Every read of an analysis job goes through uproot on a
file opened by :func:`panda_lab.analysis.files.open_file`; each read call (opening a
file, ``tree.arrays``, a lazy branch) is timed here, and the bytes and requests it cost
are the difference of uproot's own counters on the file's source
(``num_requested_bytes``, ``num_requests``) before and after.  Time spent decompressing
is counted as read time: it is what the read cost the job.

The totals are per process: the pilot's worker empties them before a job
(:func:`take`) and reports what the job added with its outcome.  The endpoint of a URL
is the replica's (:func:`remember`); a local path counts as the site's own endpoint
(``PANDA_LAB_ENDPOINT``, ``""`` when the site names none).  Opening a file counts its
bytes and requests but not its time: that is the client setting itself up (imports, a
connection pool), which would make a fast link look slow on a worker's first job.

This module imports nothing heavy: the worker imports it for every job.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

#: The environment variable naming the storage endpoint near the pilot's site.
LOCAL_ENDPOINT = "PANDA_LAB_ENDPOINT"
#: How the running job reads its input, as brokerage chose (``remote``, ``stage-in``,
#: ``cache``, ``local``; see :mod:`panda_lab.model.staging`), and the endpoint it chose
#: to read from: set by the pilot's worker for each job.
ACCESS = "PANDA_LAB_ACCESS"
READ_FROM = "PANDA_LAB_READ_FROM"
#: The site's stage-in cache: its directory and its bound in bytes (set at registration).
CACHE_DIR = "PANDA_LAB_CACHE_DIR"
CACHE_BYTES = "PANDA_LAB_CACHE_BYTES"


@dataclass
class Reads:
    """What was read from one endpoint: ``bytes``, wall ``seconds``, ``requests``."""

    bytes: int = 0
    seconds: float = 0.0
    requests: int = 0

    def as_dict(self, endpoint: str) -> dict:
        """``{"endpoint", "bytes", "seconds", "requests"}``, as a pilot reports it."""
        return {"endpoint": endpoint, "bytes": self.bytes, "seconds": round(self.seconds, 6),
                "requests": self.requests}


_totals: dict[str, Reads] = {}
_events = [0]
_endpoints: dict[str, str] = {}
_lock = threading.Lock()
_cache_log: list[dict] = []


def remember(url: str, endpoint: str) -> None:
    """``url`` is a replica at ``endpoint``: its reads count there."""
    with _lock:
        _endpoints[url] = endpoint
        while len(_endpoints) > 10_000:
            _endpoints.pop(next(iter(_endpoints)))


def endpoint_of(path: str) -> str:
    """The endpoint a file's reads count for: the replica's, else the site's own."""
    found = _endpoints.get(path)
    if found is not None:
        return found
    return os.environ.get(LOCAL_ENDPOINT, "")


def _counters(source: Any) -> tuple[int, int]:
    try:
        return int(source.num_requested_bytes), int(source.num_requests)
    except Exception:  # a source without counters (or a closed one) still counts its time
        return 0, 0


@contextmanager
def measured(path: str, file: Any = None) -> Iterator[None]:
    """Count a read of ``path`` (its endpoint by :func:`endpoint_of`): the wall time of
    the block, and the bytes and requests uproot's source of ``file`` (an uproot
    ``ReadOnlyFile``, or ``None`` when the block opens it: then no bytes are counted
    before it exists) issued meanwhile.  Counted even when the block raises."""
    source = getattr(file, "source", None)
    b0, r0 = _counters(source) if source is not None else (0, 0)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        dt = time.perf_counter() - t0
        b1, r1 = _counters(source) if source is not None else (0, 0)
        add(endpoint_of(path), b1 - b0, dt, r1 - r0)


def add(endpoint: str, nbytes: int, seconds: float, requests: int) -> None:
    """Add one read to ``endpoint``'s totals."""
    with _lock:
        r = _totals.setdefault(endpoint, Reads())
        r.bytes += max(nbytes, 0)
        r.seconds += max(seconds, 0.0)
        r.requests += max(requests, 0)


def processed(events: int) -> None:
    """The job processed ``events`` more events (the site's compute rate is learned from
    them, with the time not spent reading)."""
    with _lock:
        _events[0] += max(int(events), 0)


def take_events() -> int:
    """The events counted by :func:`processed` so far, and start again from zero."""
    with _lock:
        n, _events[0] = _events[0], 0
    return n


def take() -> list[dict]:
    """The totals so far, as ``[{"endpoint", "bytes", "seconds", "requests"}]`` sorted by
    endpoint (reads that moved no byte are left out), and start again from zero."""
    with _lock:
        out = [r.as_dict(e) for e, r in sorted(_totals.items()) if r.bytes > 0]
        _totals.clear()
    return out


def cache_event(action: str, path: str, nbytes: int) -> None:
    """The job ``staged`` a file into its site's cache, read it there (``hit``), or
    ``evicted`` one to make room: reported with the job's outcome."""
    with _lock:
        _cache_log.append({"action": action, "path": path, "bytes": int(nbytes)})


def take_cache() -> list[dict]:
    """What :func:`cache_event` logged, ``[{"action", "path", "bytes"}]`` in order, and
    start again from empty."""
    with _lock:
        out = list(_cache_log)
        _cache_log.clear()
    return out
