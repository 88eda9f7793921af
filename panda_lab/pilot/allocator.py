"""The payload worker's memory allocator: a chunk's freed arrays are kept for the next
chunk, not handed back to the kernel and faulted in again.

Why: glibc's ``malloc`` serves a block of ``M_MMAP_THRESHOLD`` or more (128 KiB at
first) with its own ``mmap`` and unmaps it when freed, and gives the top of its heap back
(``M_TRIM_THRESHOLD``) once that much is free there.  Both thresholds rise on their own
(up to 32 MiB and twice that), but an analysis chunk allocates tens of MB of arrays and
frees them all at its end, so the heap is trimmed after every chunk and the next chunk's
arrays are fresh pages again: each 4 KiB page a page fault, zeroed by the kernel.  On the
benchmark's 32 chunks of 250,000 events that was 0.5-0.6 s of system time of the
workers' 3.5 s (``benchmarks/bench_analysis.py``); 20 arrays of 2 MiB allocated and freed
five times make 10,200 page faults each time, and none after the first with the settings
below.  Dask's workers tune the same allocator the other way, for memory given back
(``MALLOC_TRIM_THRESHOLD_``, distributed's "nanny.pre-spawn-environ").

What: each payload worker, at its start, fixes ``M_MMAP_THRESHOLD`` at
:data:`MMAP_THRESHOLD` (32 MiB, glibc's largest) and ``M_TRIM_THRESHOLD`` at
:data:`TRIM_THRESHOLD` (128 MiB) with ``mallopt(3)``.  Arrays of 32 MiB or more are
still mapped and unmapped each time.  A worker keeps up to about 128 MiB of freed memory
at its heap's top beyond what its jobs hold (memory freed below a block still in use stays
resident whatever the settings: 200 arrays of 1 MiB freed under one small live block kept
246 MB with glibc's own settings and with these).  That memory is resident, so it is in what
the pilot measures and reports: a job's ``peak_rss_mb`` (the worker's resident memory,
pilot/usage.py) may include memory an earlier job freed.  Measured on the benchmark's
job function in a process pool, the workers' resident memory after a run was the same
either way (about 378 MB each).

And each payload worker, at its start, faults its read cache's memory in
(:func:`reserve`, ``$PANDA_LAB_READ_CACHE`` bytes, 256 MiB by default) and keeps it free
in its heap: the cache fills during the first run over new data, and without this every
page of its growth was a page fault during that run.

Not done: where the C library is not glibc (macOS, musl), where the pilot's environment
already sets glibc's own settings (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_TOP_PAD_`` or ``GLIBC_TUNABLES``: the user's choice stands), or with
``PANDA_LAB_MALLOC=system``.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Mapping

__all__ = ["GLIBC_SETTINGS", "MALLOC_ENV", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "check",
           "keep_freed_memory"]

#: The environment variable: ``keep`` (the default, empty or unset) or ``system``
#: (glibc's own behaviour).
MALLOC_ENV = "PANDA_LAB_MALLOC"
#: ``mallopt`` parameters (glibc's ``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Bytes: blocks smaller than this come from the heap (glibc's maximum on 64-bit).
MMAP_THRESHOLD = 32 * 2**20
#: Bytes of free memory at the heap's top before it is given back to the kernel.
TRIM_THRESHOLD = 128 * 2**20
#: glibc's environment variables for the same settings: set, they are the user's.
GLIBC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                  "GLIBC_TUNABLES")
_CHOICES = ("keep", "system")


def check(environ: Mapping[str, str] | None = None) -> str:
    """``$PANDA_LAB_MALLOC`` read: ``"keep"`` or ``"system"``.  Raises
    :class:`ValueError` naming the variable for any other value."""
    env = os.environ if environ is None else environ
    value = (env.get(MALLOC_ENV) or "keep").strip().lower() or "keep"
    if value not in _CHOICES:
        raise ValueError(f"{MALLOC_ENV}={env.get(MALLOC_ENV)!r}: give 'keep' (a payload "
                         f"worker keeps freed memory for its next chunk, the default) or "
                         f"'system' (the C library's own behaviour)")
    return value


def keep_freed_memory(environ: Mapping[str, str] | None = None) -> bool:
    """In a payload worker: set the allocator as the module says.  Returns whether it
    was set; ``False`` (nothing changed) off glibc, with ``PANDA_LAB_MALLOC=system``,
    with an invalid ``PANDA_LAB_MALLOC`` (the pilot refuses that at its start) or with
    one of :data:`GLIBC_SETTINGS` in the environment.  Never raises."""
    env = os.environ if environ is None else environ
    try:
        if check(env) != "keep":
            return False
    except ValueError:
        return False
    if any(env.get(name) for name in GLIBC_SETTINGS):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
            bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, ValueError, AttributeError):  # no confstr name, no libc, no mallopt
        return False


#: Bytes of each block :func:`reserve` faults in: under :data:`MMAP_THRESHOLD`, so it
#: comes from the heap, and stays there when freed.
RESERVE_BLOCK = 16 * 2**20
#: ``madvise(2)``'s advice to fault a range in for writing, in one call (Linux 5.14).
MADV_POPULATE_WRITE = 23
#: The most :func:`reserve` keeps: ``mallopt`` takes a C ``int``, so the trim threshold
#: (:data:`TRIM_THRESHOLD` plus the reservation) stays under 2 GiB.
RESERVE_MAX = (2**31 - 1 - TRIM_THRESHOLD) // RESERVE_BLOCK * RESERVE_BLOCK


def reserve(nbytes: int, stop: Callable[[], bool] | None = None) -> int:
    """In a payload worker whose allocator :func:`keep_freed_memory` set, at its start:
    fault ``nbytes`` of the heap in now and keep them, free, for the jobs to come.
    Returns the bytes reserved (0: nothing done).  Never raises.

    Why: a worker's read cache (``panda_lab.analysis.readcache``) keeps what each chunk
    read, so during the first run over new data the worker's memory grows by the cache's
    size, and every 4 KiB page of that growth is a page fault, zeroed by the kernel:
    measured on the benchmark's job function, 11 chunks of 250,000 events in one
    process with the 256 MiB cache took 65,000 page faults and 0.95-1.0 s, against 9,700
    and 0.84-0.87 s with the cache off.  Faulted in at the worker's start (0.09-0.14 s for
    256 MiB, while the lab starts and before any job), the same run took 1,500 page
    faults and 0.85 s: the cache costs the first run nothing.

    How: blocks of :data:`RESERVE_BLOCK` bytes are allocated in the calling thread (the
    one that runs the jobs: glibc gives each thread its own arena), faulted in with
    ``madvise(MADV_POPULATE_WRITE)`` (written with ``memset`` where the kernel lacks it),
    and freed; ``M_TRIM_THRESHOLD`` rises by ``nbytes`` so that glibc keeps them.  The
    memory is resident from then on, so it is in what the pilot reports of the worker.
    At most :data:`RESERVE_MAX` and a quarter of the memory free now are reserved (a
    larger cache fills the rest as it goes).  ``stop``: asked before each block; when it
    says True (a job has come), the reservation ends there, so no job waits for it.
    """
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        free = RESERVE_MAX
    nbytes = min(nbytes, RESERVE_MAX, free // 4)
    if nbytes <= 0:
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        if not libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD + nbytes):
            return 0
        page = os.sysconf("SC_PAGE_SIZE")
        blocks = []
        try:
            for _ in range(-(-nbytes // RESERVE_BLOCK)):
                if stop is not None and stop():
                    break
                p = libc.malloc(RESERVE_BLOCK)
                if not p:
                    break
                blocks.append(p)
                start = -(-p // page) * page
                length = (p + RESERVE_BLOCK - start) // page * page
                if libc.madvise(start, length, MADV_POPULATE_WRITE) != 0:
                    libc.memset(p, 0, RESERVE_BLOCK)
        finally:
            for p in blocks:
                libc.free(p)
        return len(blocks) * RESERVE_BLOCK
    except (OSError, ValueError, AttributeError):
        return 0
