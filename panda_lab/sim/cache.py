"""A site's stage-in cache in virtual time: the pilot's rule
(:mod:`panda_lab.analysis.sitecache`) without the files.

Input files are copied whole into the cache of the site a job runs at when brokerage
said ``stage-in`` for the job (:mod:`panda_lab.model.staging`); a later job at the site
over a file the cache holds reads it there (a ``hit``), whatever brokerage said.  The
cache holds ``limit`` bytes at most: before a copy is kept, the least recently used files
are evicted until it fits (LRU; a hit marks a file used); a file larger than the whole
cache is not kept (the job reads it remotely).  Each of these is an event the job reports
(``("staged" | "hit" | "evicted", path, bytes)``), as the pilot's report carries them
(:mod:`panda_lab.store.rows.staging`): what brokerage knows of the cache follows those
reports, at the job's end, not the cache itself.

A stdlib ``OrderedDict`` in least-recently-used order is the whole structure.
"""

from __future__ import annotations

from collections import OrderedDict

#: One thing a job did to its site's cache: (action, file name, bytes).
Event = tuple[str, str, int]


class SimCache:
    """The files one site's cache holds (name -> bytes, least recently used first) under a
    bound of ``limit`` bytes (> 0)."""

    __slots__ = ("files", "limit", "used")

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError(f"cache limit: must be positive, got {limit!r}")
        self.limit = limit
        self.used = 0
        self.files: OrderedDict[str, int] = OrderedDict()

    def fits(self, nbytes: int) -> bool:
        """Whether a file of ``nbytes`` bytes can be kept at all (not larger than the
        cache)."""
        return nbytes <= self.limit

    def lookup(self, name: str, events: list[Event]) -> bool:
        """Whether the cache holds ``name``; a hit marks it used and is added to
        ``events``."""
        size = self.files.get(name)
        if size is None:
            return False
        self.files.move_to_end(name)
        events.append(("hit", name, size))
        return True

    def stage(self, name: str, nbytes: int, events: list[Event]) -> bool:
        """Keep a copy of ``name`` (``nbytes`` bytes), evicting the least recently used
        files until it fits; what was done is added to ``events``.  False (nothing kept,
        nothing evicted) for a file larger than the cache."""
        if not self.fits(nbytes):
            return False
        old = self.files.pop(name, None)
        if old is not None:  # copied again (two jobs over it at once): one copy kept
            self.used -= old
        while self.files and self.used + nbytes > self.limit:
            gone, size = self.files.popitem(last=False)
            self.used -= size
            events.append(("evicted", gone, size))
        self.files[name] = nbytes
        self.used += nbytes
        events.append(("staged", name, nbytes))
        return True


def known(held: set[str], events: list[Event]) -> None:
    """Apply a job's reported ``events`` to ``held``, the files the server believes a
    site's cache holds (as :func:`panda_lab.store.rows.staging.apply`: ``staged`` and
    ``hit`` hold the file, ``evicted`` removes it)."""
    for action, name, _ in events:
        if action == "evicted":
            held.discard(name)
        else:
            held.add(name)
