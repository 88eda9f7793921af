"""A payload worker faults its read cache's memory in when it starts, not during the first
run over new data.

The kind of cost removed here: memory a worker keeps growing into while it runs jobs
(the read cache filling with each chunk's arrays), each new 4 KiB page a page fault the
job pays for, zeroed by the kernel, on the cores the analysis runs on.  Its members, each
in a real process: arrays kept alive chunk after chunk (the cache's way) take few page
faults after :func:`allocator.reserve` and one per page without; a reservation made in
another thread would serve nothing (glibc gives each thread its own arena), so it is made
in the thread that runs the jobs; and through the pilot's own worker process: the worker
started ahead of its jobs (as the pilot starts them) holds the cache's bytes before its
first job, which reports them in its ``peak_rss_mb``, and a job then keeps arrays without
faulting them in; a worker whose cache is off (``PANDA_LAB_READ_CACHE=0``), whose
allocator is the C library's own (``PANDA_LAB_MALLOC=system``), or that was started for
a job already waiting (its walltime running) reserves nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import cloudpickle
import psutil

# the same glibc check and job runner as the allocator's own tests (this directory)
from test_allocator import _run, needs_glibc

from panda_lab.pilot import allocator
from panda_lab.pilot.worker import Worker
from panda_lab.resources import READ_CACHE_ENV

MIB = 2**20
_KEPT: list = []


def faults_keeping(n: int) -> int:
    """Minor page faults of making ``n`` arrays of 2 MiB and keeping them all, as the
    read cache keeps a chunk's arrays."""
    import resource

    import numpy as np

    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    _KEPT.extend(np.ones(2 * MIB // 8) for _ in range(n))
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0


def _fresh(reserve_mib: int, thread: bool = False) -> tuple[int, int]:
    """In a fresh Python with the workers' allocator: reserve, then keep 24 arrays of
    2 MiB; ``(bytes reserved, page faults keeping them)``."""
    code = textwrap.dedent(f"""
        import json, sys, threading
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from panda_lab.pilot import allocator
        from test_reserve import faults_keeping
        assert allocator.keep_freed_memory()
        got = []
        if {thread!r}:
            t = threading.Thread(target=lambda: got.append(allocator.reserve({reserve_mib} << 20)))
            t.start(); t.join()
        else:
            got.append(allocator.reserve({reserve_mib} << 20))
        print(json.dumps([got[0], faults_keeping(24)]))
    """)
    env = {k: v for k, v in os.environ.items()
           if k not in allocator.GLIBC_SETTINGS and k != allocator.MALLOC_ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return tuple(json.loads(out.splitlines()[-1]))


@needs_glibc
def test_kept_arrays_take_no_page_faults_after_a_reservation():
    reserved, with_ = _fresh(64)
    nothing, without = _fresh(0)
    assert reserved == 64 * MIB and nothing == 0
    # 48 MiB kept: a fault per 4 KiB page without (12,288), next to none with
    assert without > 5000, without
    assert with_ < 500, with_


@needs_glibc
def test_a_reservation_in_another_thread_would_serve_nothing():
    """Why :func:`reserve` runs in the worker's main thread: glibc's other arenas."""
    reserved, faults = _fresh(64, thread=True)
    assert reserved == 64 * MIB
    assert faults > 5000, faults


def test_nothing_is_reserved_for_nothing():
    assert allocator.reserve(0) == 0
    assert allocator.reserve(-1) == 0


def _settled(pid: int) -> None:
    """Wait until the process's resident memory has not grown for half a second (its
    imports and reservation done), 30 s at most."""
    last, since, end = -1, time.monotonic(), time.monotonic() + 30
    while time.monotonic() < end:
        rss = psutil.Process(pid).memory_info().rss
        if rss != last:
            last, since = rss, time.monotonic()
        elif time.monotonic() - since > 0.5:
            return
        time.sleep(0.05)


def _worker(monkeypatch, cache: str, malloc: str = "keep",
            ahead: bool = True) -> tuple[int, int, float]:
    """A pilot's worker with ``PANDA_LAB_READ_CACHE=cache``, started as the pilot starts
    its workers (``ahead``) or for a job waiting: its resident MiB after a first, empty
    job, the page faults of a job keeping 24 arrays of 2 MiB, and the empty job's
    reported ``peak_rss_mb``."""
    monkeypatch.setenv(READ_CACHE_ENV, cache)
    monkeypatch.setenv(allocator.MALLOC_ENV, malloc)
    for name in allocator.GLIBC_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    w = Worker()
    try:
        if ahead:
            w.ensure(ahead=True)
            _settled(w.proc.pid)  # a job sent sooner would end the reservation
        first = _run(w, len, ())
        rss = psutil.Process(w.proc.pid).memory_info().rss // MIB
        out = _run(w, faults_keeping, 24)
    finally:
        w.close()
    assert first.ok and out.ok, out.error
    return rss, cloudpickle.loads(out.result), first.peak_rss_mb


@needs_glibc
def test_the_pilots_worker_holds_its_cache_before_its_first_job(monkeypatch):
    rss_on, faults_on, peak_on = _worker(monkeypatch, "128 MB")
    rss_off, faults_off, peak_off = _worker(monkeypatch, "0")
    assert rss_on - rss_off >= 120, (rss_on, rss_off)
    assert faults_on < 500, faults_on
    assert faults_off > 5000, faults_off
    # the reserved memory is the worker's resident memory, so it is in what every job
    # of that worker reports (usage.py)
    assert peak_on - peak_off >= 120, (peak_on, peak_off)


@needs_glibc
def test_no_reservation_where_the_user_or_a_waiting_job_says_not(monkeypatch):
    _rss_off, _faults, peak_off = _worker(monkeypatch, "0")
    # the C library's own allocator: nothing reserved, as the user asked
    _rss, faults_system, peak_system = _worker(monkeypatch, "128 MB", malloc="system")
    assert faults_system > 5000, faults_system
    assert abs(peak_system - peak_off) < 60, (peak_system, peak_off)
    # a worker started for a job already waiting (its process had died): the job's
    # walltime runs, so it does not wait for the reservation
    _rss, faults_late, peak_late = _worker(monkeypatch, "128 MB", ahead=False)
    assert faults_late > 5000, faults_late
    assert abs(peak_late - peak_off) < 60, (peak_late, peak_off)


@needs_glibc
def test_a_reservation_is_bounded_by_what_the_allocator_can_keep():
    """``mallopt`` takes a C int: a threshold past 2 GiB wrapped round, and the memory
    was written and handed back (4 GiB), or never trimmed (2-4 GiB).  Checked without
    faulting anything in: the bound is applied before any block is taken."""
    assert allocator.RESERVE_MAX + allocator.TRIM_THRESHOLD <= 2**31 - 1
    assert allocator.RESERVE_MAX % allocator.RESERVE_BLOCK == 0


@needs_glibc
def test_a_job_that_comes_ends_the_reservation():
    """A job sent to a worker still reserving does not wait for it (its walltime runs):
    the reservation stops at the next block."""
    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 2

    assert allocator.keep_freed_memory()
    got = allocator.reserve(1 << 30, stop)
    assert got == 2 * allocator.RESERVE_BLOCK, got
