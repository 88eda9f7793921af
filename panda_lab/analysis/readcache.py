"""A worker's cache of read arrays: what makes re-running a cell over the same data fast.

Interactive analysis re-runs an edited cell over the same chunks; reading and
decompressing them again is most of a job's time.  uproot keeps an LRU of arrays it read
for every open file (``array_cache``, 100 MB per file by default), which made re-runs fast
but was bounded per file, not per process, and held by whichever files stayed open.  Here
one uproot :class:`uproot.LRUArrayCache` serves every file a process opens (uproot's own
cache, keyed by the file's UUID, the branch, its interpretation and the entry range: only
the same chunk's same columns hit), so its bound is the worker's:

* ``PANDA_LAB_READ_CACHE``: bytes per worker process, as a whole number of bytes or with
  uproot's units (``"512 MB"``, ``"1 GiB"``); ``0`` turns the cache off.  Default
  :data:`DEFAULT_BYTES`.  A pilot's workers inherit it from the server's environment (local
  sites) or their batch job's.
* The cache lives in the worker, so its bytes are part of the worker's resident memory that
  each job reports (``ChunkResult.rss_mb``); ``ChunkResult.cache_mb`` says how much of that
  the cache held when the job ended.
* A payload worker faults the cache's bytes in when it starts
  (``panda_lab.pilot.worker.prepare_memory``), so the memory is resident, and reported,
  from then on: the first run over new data does not pay a page fault for every 4 KiB the
  cache grows by (about a tenth of that run's time on the analysis benchmark).

TTrees only: uproot caches no RNTuple reads.  The server prefers to give a re-run's job to
the pilot that read its chunk (:func:`panda_lab.store.rows.jobs.dispatch`), so a re-run
finds its arrays here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, MutableMapping
from typing import Any

import uproot

# the cache's limit per worker process, and how it is read: with the rest of the resources,
# so that the embedded default's plan can state and check it
from panda_lab.resources import READ_CACHE_DEFAULT_BYTES as DEFAULT_BYTES
from panda_lab.resources import READ_CACHE_ENV
from panda_lab.resources import read_cache_limit as limit_bytes

__all__ = ["DEFAULT_BYTES", "READ_CACHE_ENV", "FileCache", "cache_for", "limit_bytes",
           "read_cache"]

_cache: uproot.LRUArrayCache | None = None
_made = False
_lock = threading.Lock()


def read_cache() -> uproot.LRUArrayCache | None:
    """This process's cache, made on first use from ``PANDA_LAB_READ_CACHE``; ``None`` when
    it is off.  Pass it as uproot's ``array_cache``."""
    global _cache, _made
    with _lock:
        if not _made:
            n = limit_bytes(os.environ.get(READ_CACHE_ENV))
            _cache = uproot.LRUArrayCache(n) if n > 0 else None
            _made = True
        return _cache


class FileCache(MutableMapping):
    """The process's cache as one file sees it: every key uproot makes is prefixed with the
    file's identity (its path or URL, and for a local file its size and modification
    time).  uproot keys arrays by the file's UUID, which a copy keeps: a replica, a copy cut
    short or corrupted, or a file copied over another would otherwise be served the
    arrays read from a different file."""

    def __init__(self, cache: MutableMapping, identity: str) -> None:
        self.cache = cache
        self.prefix = identity + "|"

    def __getitem__(self, key: str) -> Any:
        return self.cache[self.prefix + key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.cache[self.prefix + key] = value

    def __delitem__(self, key: str) -> None:
        del self.cache[self.prefix + key]

    def __iter__(self) -> Iterator[str]:
        n = len(self.prefix)
        return (k[n:] for k in list(self.cache) if k.startswith(self.prefix))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def cache_for(name: str, local: bool) -> FileCache | None:
    """The read cache for the file ``name`` (``None`` when the cache is off): pass it as
    uproot's ``array_cache`` when opening that file.  A local file's identity includes its
    size and modification time, so a file rewritten in place is read again."""
    cache = read_cache()
    if cache is None:
        return None
    identity = name
    if local:
        try:
            st = os.stat(name)
            identity = f"{name}|{st.st_size}|{st.st_mtime_ns}"
        except OSError:
            pass
    return FileCache(cache, identity)


def cache_bytes() -> int:
    """Bytes the cache holds now (0 when off or not made yet)."""
    return 0 if _cache is None else int(_cache.current)


def _forget() -> None:
    """In a forked child, and for tests: the cache is made again from the environment."""
    global _cache, _made, _lock
    _cache, _made, _lock = None, False, threading.Lock()


os.register_at_fork(after_in_child=_forget)
