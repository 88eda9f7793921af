"""A site's stage-in cache, on the pilot: input files copied whole, kept under a bound.

When brokerage says ``stage-in`` for a job (:mod:`panda_lab.model.staging`), each input
file is copied whole from the replica brokerage chose (as the PanDA pilot's copytool or
``rucio download`` copies a file to scratch), into the site's cache directory, and read
from there.  Any later job at the site over the same file reads the copy (a ``hit``),
whatever brokerage said (its report may not have reached the server yet).  The cache
holds ``cache_bytes`` at most: before a copy, the least recently used files are evicted
until it fits (LRU; a read marks a file used).  A file larger than the whole cache is
not copied: the job reads it remotely.

Files are named by a digest of the file's path (its logical name in the dataset), with
the path beside it (``NAME.key``).  The pilot's workers (and the site's other pilots on a
shared file system) share the directory: a copy and its evictions hold an exclusive
``flock`` on ``.lock``, and a copy is written to a temporary name and renamed, so a
reader never sees half a file.  A copy evicted while a job reads it stays readable
(POSIX keeps an open file); one evicted between the check and the open is read remotely.

Everything a job does here is logged for its report (:func:`panda_lab.reads.cache_event`),
and the copy is metered as a read of the replica's endpoint (bytes, seconds, one request
per file): it is the link's observation.  Reading the copy is metered under
:data:`~panda_lab.model.staging.CACHE_ENDPOINT`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from panda_lab import reads
from panda_lab.analysis.files import is_url
from panda_lab.model.staging import CACHE_ENDPOINT, Access

#: Suffix of a cached copy (what uproot opens) and of the file naming its path.
DATA, KEY = ".root", ".key"


@dataclass(frozen=True)
class SiteCache:
    """The cache directory ``root`` and its bound ``limit`` (bytes)."""

    root: Path
    limit: int

    def name(self, path: str) -> Path:
        """Where the copy of ``path`` is kept."""
        return self.root / (hashlib.sha256(path.encode()).hexdigest()[:40] + DATA)

    def files(self) -> list[tuple[float, int, Path]]:
        """The cached copies as ``(last used, bytes, path)``, least recently used first."""
        out = []
        for p in self.root.glob("*" + DATA):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.append((st.st_mtime, st.st_size, p))
        return sorted(out)

    def used(self) -> int:
        """Bytes the cache holds now."""
        return sum(n for _, n, _ in self.files())

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the cache's exclusive lock (across processes) for the block."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def lookup(self, path: str) -> Path | None:
        """The copy of ``path`` if the cache holds it, marked used now (a ``hit``)."""
        p = self.name(path)
        try:
            os.utime(p)
        except FileNotFoundError:
            return None
        reads.cache_event("hit", path, p.stat().st_size if p.exists() else 0)
        return p

    def make_room(self, nbytes: int) -> None:
        """Evict the least recently used copies until ``nbytes`` more fit (hold the lock)."""
        files = self.files()
        total = sum(n for _, n, _ in files)
        for _, n, p in files:
            if total + nbytes <= self.limit:
                break
            key = p.with_suffix(KEY)
            try:
                path = key.read_text()
            except OSError:
                path = p.name
            p.unlink(missing_ok=True)
            key.unlink(missing_ok=True)
            total -= n
            reads.cache_event("evicted", path, n)

    def stage(self, path: str, url: str, endpoint: str, size: int) -> Path | None:
        """Copy ``url`` (a replica of ``path`` at ``endpoint``, ``size`` bytes whole or 0
        if unknown) into the cache, evicting as needed, and return the copy; None when it
        cannot fit (larger than the cache).  The copy is metered as a read of
        ``endpoint``.  Raises what the copy raises (``OSError`` and the like)."""
        if size > self.limit:
            return None
        with self.locked():
            hit = self.lookup(path)
            if hit is not None:
                return hit
            self.make_room(size)
            final = self.name(path)
            tmp = final.with_name(f".{final.name}.{os.getpid()}.part")
            t0 = time.perf_counter()
            try:
                copied = _copy(url, tmp)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            reads.add(endpoint, copied, time.perf_counter() - t0, 1)
            if copied > self.limit:
                tmp.unlink(missing_ok=True)
                return None
            if not size and self.used() + copied > self.limit:
                self.make_room(copied)  # the size was unknown before the copy
            final.with_suffix(KEY).write_text(path)
            os.replace(tmp, final)
            reads.cache_event("staged", path, copied)
            return final


def _copy(url: str, dest: Path) -> int:
    """Copy the whole file at ``url`` (a local path, or a URL fsspec opens: HTTP(S),
    XRootD) to ``dest``; returns the bytes copied."""
    if not is_url(url):
        shutil.copyfile(url, dest)
    else:
        import fsspec

        with fsspec.open(url, "rb") as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    return dest.stat().st_size


def configured() -> SiteCache | None:
    """The site's cache as the pilot was told at registration (environment), or None."""
    root, limit = os.environ.get(reads.CACHE_DIR), os.environ.get(reads.CACHE_BYTES)
    if not root or not limit or int(limit) <= 0:
        return None
    return SiteCache(Path(root), int(limit))


def local_copy(chunk: dict, replicas: list[dict]) -> str | None:
    """The cached copy to read ``chunk`` from: the one the cache holds, or, when the job
    was told to stage its input in, a new one copied from the replica brokerage chose
    (else the first); None to read the replicas as they are.  Its reads are metered as
    the cache's.  A copy that fails is not an error here: the job reads the replicas,
    whose own errors say what is wrong."""
    cache = configured()
    if cache is None:
        return None
    path = chunk["path"]
    got = cache.lookup(path)
    if got is None and os.environ.get(reads.ACCESS) == Access.STAGE_IN and replicas:
        chosen = os.environ.get(reads.READ_FROM)
        first = next((r for r in replicas if r["endpoint"] == chosen), replicas[0])
        try:
            got = cache.stage(path, first["url"], first["endpoint"],
                              int(chunk.get("file_bytes") or 0))
        except Exception:
            return None
    if got is None:
        return None
    reads.remember(str(got), CACHE_ENDPOINT)
    return str(got)
