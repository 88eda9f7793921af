"""What this process may really use: the container's CPUs and memory, not the host's.

In a container (Binder, Docker, Kubernetes) ``os.cpu_count()`` and the host's memory are
the machine's, while the limits that throttle and kill are the cgroup's: a Dask or a
pilot pool sized to the host is OOM-killed on Binder.  The limits are read as the kernel
documents them (``Documentation/admin-guide/cgroup-v2.rst`` and ``cgroup-v1/``):

* v2: ``cpu.max`` is ``"$MAX $PERIOD"`` (``max``: no quota), ``memory.max`` and
  ``memory.high`` are bytes or ``max``;
* v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota ``-1``: none),
  ``memory.limit_in_bytes`` (no limit reads as a huge page-rounded number);

in the process's own cgroup (``/proc/self/cgroup``) and every ancestor up to the mount, the
smallest limit winning, as the JVM's container support and Go's ``automaxprocs`` do.
Where the cgroup path is not visible under the mount (a container that sees its own
cgroup as the root), the mount's root is read.  Dask has the same idea
(``dask.system.cpu_count``, ``distributed.system.memory_limit``) but reads only the
mount's top files and is an optional dependency here; this module has no dependency.

Nothing here raises on a strange tree: an unreadable or garbage file is skipped and said
in :attr:`Resources.notes`; the host's values stand where no limit is found.  Only a bad
override (``PANDA_LAB_CPUS``, ``PANDA_LAB_MEMORY``) is an error, :class:`ResourceError`,
because a typo there should never silently mean "the host".

:func:`plan_local` turns the resources into the embedded default's sites: see its rule.
:func:`merge_memory` is the server's budget for the merged results it holds (the plan's
share, or ``PANDA_LAB_MERGE_MEMORY``), used by every server, embedded or not.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

#: Environment: usable CPUs (a positive number, fractions allowed).
CPUS_ENV = "PANDA_LAB_CPUS"
#: Environment: usable memory (``"1.5G"``, ``"1536M"``, ``"2GiB"``, or bytes).
MEMORY_ENV = "PANDA_LAB_MEMORY"
#: Environment: the memory the server's merged results may take (a size, as above).
MERGE_MEMORY_ENV = "PANDA_LAB_MERGE_MEMORY"
#: Environment: the root under which ``sys/`` and ``proc/`` are read (default ``/``).
SYSROOT_ENV = "PANDA_LAB_SYSROOT"

_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


class ResourceError(ValueError):
    """An override of the resources is not a valid value; the message names the variable."""


@dataclass(frozen=True)
class Resources:
    """CPUs and memory this process may use, with where they came from.

    ``cpus`` may be fractional (a quota of 1.5 CPUs); ``memory`` is in bytes.  ``host_*``
    are the machine's; ``source`` says what limited them (``"host"`` when nothing did),
    ``notes`` what was skipped and why."""

    cpus: float
    memory: int
    host_cpus: int
    host_memory: int
    source: str = "host"
    notes: tuple[str, ...] = field(default=())

    @property
    def cores(self) -> int:
        """Whole CPUs to plan for: ``cpus`` rounded to the nearest, at least 1."""
        return max(1, math.floor(self.cpus + 0.5))

    @property
    def memory_mb(self) -> int:
        return self.memory // 2**20

    def describe(self) -> str:
        """One line for logs and ``teach check``: ``"2 CPUs, 1536 MB (cgroup v2 ...)"``."""
        return f"{self.cpus:g} CPUs, {self.memory_mb} MB ({self.source})"


def parse_size(text: str) -> int:
    """``"1.5G"``, ``"1536M"``, ``"2GiB"``, ``"1048576"`` → bytes (binary units).
    ``ValueError`` for anything else or a size of zero."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size such as 1.5G, 1536M or a number of bytes")
    n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n <= 0:
        raise ValueError(f"{text!r} is not a positive size")
    return n


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _own_cgroups(root: Path) -> dict[str, str]:
    """``/proc/self/cgroup`` as ``{controller: path}``; v2's line under ``""``."""
    out: dict[str, str] = {}
    for line in (_read(root / "proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            out[controller.removeprefix("name=")] = parts[2]
    return out


def _levels(mount: Path, cgroup: str) -> list[Path]:
    """The directories from the mount down to the process's cgroup that exist (the mount
    alone when the cgroup's path is not visible under it)."""
    out = [mount]
    here = mount
    for part in [p for p in cgroup.split("/") if p and p not in (".", "..")]:
        here = here / part
        if not here.is_dir():
            return [mount]
        out.append(here)
    return out


class _Reader:
    """Collects the smallest limit over the levels, and notes on what it skipped."""

    def __init__(self) -> None:
        self.cpus: float | None = None
        self.memory: int | None = None
        self.notes: list[str] = []
        self.found: list[str] = []

    def _bad(self, path: Path, text: str) -> None:
        self.notes.append(f"{path}: cannot read {text[:40]!r}; ignored")

    def cpu(self, path: Path, quota: float, period: float) -> None:
        if quota > 0 and period > 0:
            value = quota / period
            if self.cpus is None or value < self.cpus:
                self.cpus = value
                self.found.append(f"{path.name} {quota:g}/{period:g}")

    def mem(self, path: Path, text: str | None) -> None:
        if text is None or text == "max":
            return
        try:
            value = int(text)
        except ValueError:
            self._bad(path, text)
            return
        if value > 0 and (self.memory is None or value < self.memory):
            self.memory = value
            self.found.append(f"{path.name} {value}")

    def v2_cpu(self, path: Path) -> None:
        text = _read(path)
        if text is None:
            return
        parts = text.split()
        if parts and parts[0] == "max":
            return
        try:
            quota, period = float(parts[0]), float(parts[1]) if len(parts) > 1 else 100_000.0
        except (ValueError, IndexError):
            self._bad(path, text)
            return
        self.cpu(path, quota, period)

    def v1_cpu(self, quota_path: Path, period_path: Path) -> None:
        q, p = _read(quota_path), _read(period_path)
        if q is None or p is None:
            return
        try:
            self.cpu(quota_path, float(q), float(p))
        except ValueError:
            self._bad(quota_path, f"{q} / {p}")


def _host_cpus(root: Path) -> int:
    """Online CPUs (``sys/devices/system/cpu/online``, e.g. ``"0-3,6"``), and on the real
    root the process's affinity too; ``os.cpu_count()`` when unreadable."""
    n = 0
    text = _read(root / "sys/devices/system/cpu/online") or ""
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            n += int(hi or lo) - int(lo) + 1
    except ValueError:
        n = 0
    if n <= 0:
        n = os.cpu_count() or 1
    if root == Path("/") and hasattr(os, "sched_getaffinity"):
        n = min(n, len(os.sched_getaffinity(0)))
    return max(1, n)


def _host_memory(root: Path) -> int:
    """``MemTotal`` of ``proc/meminfo`` in bytes; psutil's total when unreadable."""
    for line in (_read(root / "proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            try:
                return int(line.split()[1]) * 1024
            except (IndexError, ValueError):
                break
    import psutil

    return int(psutil.virtual_memory().total)


def detect(root: str | os.PathLike | None = None,
           environ: dict[str, str] | None = None) -> Resources:
    """The CPUs and memory this process may use.

    ``root`` (default ``$PANDA_LAB_SYSROOT`` or ``/``) is where ``sys/`` and ``proc/``
    are read; ``environ`` (default ``os.environ``) may override with ``PANDA_LAB_CPUS``
    and ``PANDA_LAB_MEMORY``, which win over the cgroup.  Returns :class:`Resources`;
    raises :class:`ResourceError` naming the variable for a bad override, nothing for a
    strange tree."""
    env = os.environ if environ is None else environ
    base = Path(root if root is not None else env.get(SYSROOT_ENV) or "/")
    host_cpus, host_memory = _host_cpus(base), _host_memory(base)
    r = _Reader()
    mine = _own_cgroups(base)
    cg = base / "sys/fs/cgroup"
    version = ""
    if (cg / "cgroup.controllers").is_file():
        version = "v2"
        for level in _levels(cg, mine.get("", "/")):
            r.v2_cpu(level / "cpu.max")
            r.mem(level / "memory.max", _read(level / "memory.max"))
            r.mem(level / "memory.high", _read(level / "memory.high"))
    else:
        cpu_mount = next((cg / d for d in ("cpu,cpuacct", "cpu", "cpuacct,cpu")
                          if (cg / d).is_dir()), None)
        if cpu_mount is not None:
            version = "v1"
            for level in _levels(cpu_mount, mine.get("cpu", "/")):
                r.v1_cpu(level / "cpu.cfs_quota_us", level / "cpu.cfs_period_us")
        if (cg / "memory").is_dir():
            version = "v1"
            for level in _levels(cg / "memory", mine.get("memory", "/")):
                r.mem(level / "memory.limit_in_bytes", _read(level / "memory.limit_in_bytes"))
    cpus = min(r.cpus, host_cpus) if r.cpus else float(host_cpus)
    memory = min(r.memory, host_memory) if r.memory else host_memory
    limited = (r.cpus is not None and r.cpus < host_cpus) or \
        (r.memory is not None and r.memory < host_memory)
    source = f"cgroup {version}: {', '.join(r.found)}" if limited else "host"
    over = []
    if env.get(CPUS_ENV):
        try:
            cpus = float(env[CPUS_ENV])
            if not (cpus > 0 and math.isfinite(cpus)):
                raise ValueError
        except ValueError:
            raise ResourceError(f"{CPUS_ENV}={env[CPUS_ENV]!r} must be a positive number of "
                                "CPUs, e.g. 2 or 1.5") from None
        over.append(CPUS_ENV)
    if env.get(MEMORY_ENV):
        try:
            memory = parse_size(env[MEMORY_ENV])
        except ValueError as exc:
            raise ResourceError(f"{MEMORY_ENV}: {exc}") from None
        over.append(MEMORY_ENV)
    if over:
        source = f"set by {' and '.join(over)}" + ("" if source == "host" else f"; {source}")
    return Resources(cpus, memory, host_cpus, host_memory, source, tuple(r.notes))


# ---- the embedded default's sites ----------------------------------------------------------

#: Resident memory measured here (2026-12, Python 3.11, numpy/awkward/uproot imported):
#: the server 88 MB, a pilot with its multiprocessing resource tracker 82 MB, an idle
#: payload worker 117 MB.  Rounded up.
SERVER_MB, PILOT_MB, WORKER_MB = 100, 90, 150
#: Kept for JupyterLab, the kernel and the results it holds: this or 30 %, the larger.
RESERVE_MB, RESERVE_SHARE = 512, 0.30
#: A payload's working memory for one job's chunk, at least (below it sites are merged).
MIN_CHUNK_MB = 40
#: Environment: a worker's cache of read arrays (panda_lab.analysis.readcache).
READ_CACHE_ENV = "PANDA_LAB_READ_CACHE"
#: The most a worker's read cache is given (the cache's own default, 256 MiB).
CACHE_MAX_MB = 256
#: The read cache's limit per worker process when ``$PANDA_LAB_READ_CACHE`` is unset:
#: 256 MiB, about two of the benchmark's 250,000-event chunks over all branches, small
#: next to a worker's working memory.
READ_CACHE_DEFAULT_BYTES = CACHE_MAX_MB * 2**20
#: Events one MB of a job's working memory holds: the dimuon analysis peaked at 90 MB
#: over its idle worker for 400k events (~4.4k per MB); half of that leaves room for
#: analyses that read more columns.
EVENTS_PER_MB = 2000
#: The server's merged results (each task's merged value and its pickled copy, the results
#: waiting to be merged): this share of the memory, within these bounds, in MB.  The
#: merged histograms of an analysis take kilobytes; concatenated awkward arrays grow with
#: the events, and are what this bounds.
MERGE_SHARE, MERGE_MIN_MB, MERGE_MAX_MB = 1 / 32, 16, 512


@dataclass(frozen=True)
class LocalPlan:
    """The embedded default's shape: ``sites`` local sites (3: grid, cloud, hpc; 1 when
    memory is too short for three pilots), each with ``pilots`` pilots of ``slots``
    payload workers, and the most events one job of an analysis may read."""

    sites: int
    pilots: int
    slots: int
    max_events_per_job: int
    chunk_mb: int
    note: str
    #: Each worker's cache of read arrays (``PANDA_LAB_READ_CACHE``), inside its share.
    cache_mb: int = 0
    #: The server's merged results, at most (:func:`merge_memory`), inside its share.
    merge_mb: int = 0
    #: Payloads the local sites' pilots run at once, together (0: no limit): the cores,
    #: when the sites have more workers than that (:mod:`panda_lab.pilot.cores`).
    shared_cores: int = 0


def merge_share_mb(res: Resources) -> int:
    """The memory, in MB, the plan gives the server's merged results: :data:`MERGE_SHARE`
    of ``res.memory`` within [:data:`MERGE_MIN_MB`, :data:`MERGE_MAX_MB`]."""
    return int(min(MERGE_MAX_MB, max(MERGE_MIN_MB, res.memory_mb * MERGE_SHARE)))


def merge_memory(res: Resources | None = None,
                 environ: dict[str, str] | None = None) -> tuple[int, str]:
    """The server's budget for merged results: ``(bytes, where it came from)``.

    ``$PANDA_LAB_MERGE_MEMORY`` (a size: ``"256M"``) when set, else the plan's share of
    ``res`` (default: :func:`detect`).  Raises :class:`ResourceError` naming the variable
    for a bad value (of it, or of the overrides :func:`detect` reads)."""
    env = os.environ if environ is None else environ
    if env.get(MERGE_MEMORY_ENV):
        try:
            return parse_size(env[MERGE_MEMORY_ENV]), f"set by {MERGE_MEMORY_ENV}"
        except ValueError as exc:
            raise ResourceError(f"{MERGE_MEMORY_ENV}: {exc}") from None
    res = res or detect(environ=env)
    return merge_share_mb(res) * 2**20, f"{MERGE_SHARE:.1%} of {res.describe()}"


def plan_note(plan: LocalPlan, environ: dict[str, str] | None = None) -> str:
    """The plan's note, with the merged results' budget and the workers' read cache as
    the server will use them: the plan's, or ``$PANDA_LAB_MERGE_MEMORY`` and
    ``$PANDA_LAB_READ_CACHE`` when set (said so).  Raises :class:`ResourceError` naming
    the variable for a bad value."""
    env = os.environ if environ is None else environ
    note = plan.note
    if (env.get(READ_CACHE_ENV) or "").strip():
        note = note.replace(f"{plan.cache_mb} MB of read cache per worker",
                            f"{read_cache_mb(env)} MB of read cache per worker (set by "
                            f"{READ_CACHE_ENV})", 1)
    if not env.get(MERGE_MEMORY_ENV):
        return note
    budget, source = merge_memory(environ=env)
    return note.replace(f"{plan.merge_mb} MB for the server's merged results",
                        f"{budget // 2**20} MB for the server's merged results "
                        f"({source})", 1)


def read_cache_limit(text: str | None) -> int:
    """The read cache's limit in bytes that ``text`` (``$PANDA_LAB_READ_CACHE``) gives:
    whole bytes, or a size with uproot's units (``"512 MB"``, ``"1 GiB"``); ``None`` or
    empty: :data:`READ_CACHE_DEFAULT_BYTES`; ``0``: off.  Raises :class:`ValueError`
    naming the variable for anything that is no size (:mod:`panda_lab.analysis.readcache`
    reads its limit with this)."""
    if text is None or not text.strip():
        return READ_CACHE_DEFAULT_BYTES
    text = text.strip()
    try:
        if text.isdigit():
            return int(text)
        import uproot  # here: only a size with units needs it

        return int(uproot._util.memory_size(text))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{READ_CACHE_ENV}={text!r} is not a size: give bytes or a size "
                         f"with units such as '512 MB' or '1 GiB' (0 turns it off)") from exc


def read_cache_mb(environ: dict[str, str] | None = None) -> int:
    """``$PANDA_LAB_READ_CACHE`` in MB (2**20 bytes; 0: off), by :func:`read_cache_limit`.
    Raises :class:`ResourceError` naming the variable for a value that is no size."""
    env = os.environ if environ is None else environ
    try:
        return read_cache_limit(env.get(READ_CACHE_ENV)) // 2**20
    except ValueError as exc:
        raise ResourceError(str(exc)) from None


def plan_local(res: Resources) -> LocalPlan:
    """Size the embedded default to ``res``.

    Rule: keep ``max(512 MB, 30 %)`` of the memory for JupyterLab and the kernel, and the
    server's share (its process and its merged results, :func:`merge_share_mb`); three
    sites of one pilot each when three pilots with one worker and :data:`MIN_CHUNK_MB` of
    working memory fit in the rest, else one site.  Workers per
    pilot: the cores divided among the sites (at least one), fewer where memory says so;
    when that makes more workers than cores (three sites on one or two cores), the pilots
    share the cores (``shared_cores``): at most that many jobs run at once over them all.
    What is left per worker is shared by its read cache (a third, at most
    :data:`CACHE_MAX_MB`; pilots that share the cores share that per core: each worker's
    is scaled by cores / workers) and its chunk's working memory, which caps an analysis job at
    :data:`EVENTS_PER_MB` events per MB of it.  Never zero of anything: when even one
    worker does not fit, the note says so."""
    merge_mb = merge_share_mb(res)
    budget = (res.memory_mb - max(RESERVE_MB, int(RESERVE_SHARE * res.memory_mb)) - SERVER_MB
              - merge_mb)
    per_worker = WORKER_MB + MIN_CHUNK_MB
    sites = 3 if budget >= 3 * (PILOT_MB + per_worker) else 1
    fit = (budget - sites * PILOT_MB) // (sites * per_worker)
    slots = max(1, min(res.cores // sites, fit))
    room = (budget - sites * PILOT_MB) // (sites * slots) - WORKER_MB
    # A third of what is left per worker, at most the cache's own default, holds the
    # arrays it read (re-runs); the rest is the job's working memory.
    cache_mb = max(0, min(CACHE_MAX_MB, (room - MIN_CHUNK_MB) // 3))
    # Three single-worker pilots on two cores would run three payloads on two cores, each
    # slower and the server starved: the pilots then take turns on the cores.
    shared = res.cores if sites * slots > res.cores else 0
    if shared:
        # ... and share the cores' read cache: together they hold what one worker per
        # core would.  Every array a cache keeps is memory its worker takes anew during
        # a first run; three full caches on two cores took a first run 3-5 % longer
        # (workers' system time, benchmarks/README.md, "Dataset analysis").
        cache_mb = cache_mb * shared // (sites * slots)
    chunk_mb = max(MIN_CHUNK_MB, room - cache_mb)
    note = (f"{sites} site(s) x 1 pilot x {slots} worker(s)"
            + (f", {shared} job(s) at once over all of them" if shared else "")
            + f", {chunk_mb} MB per job and "
            f"{cache_mb} MB of read cache per worker, {merge_mb} MB for the server's merged "
            f"results, for {res.describe()}")
    if room < MIN_CHUNK_MB:
        note += (f"; {res.memory_mb} MB is less than one pilot needs with room for "
                 f"JupyterLab: expect memory errors (set {MEMORY_ENV} or use --sites)")
    return LocalPlan(sites, 1, slots, chunk_mb * EVENTS_PER_MB, chunk_mb, note, cache_mb,
                     merge_mb, shared)
