"""What a job and a pilot really use: the payload's peak memory and CPU time.

The kind of bug fixed here: resource numbers that read 0 or the pilot's own instead of
the payload's.  Its members, each tested: a job's memory read as the request
(``memory_mb``, 0 by default) instead of a measurement; a reused worker's lifetime
high-water mark giving an earlier job's peak to the next job; CPU time of the worker's
whole life (or of the pilot) instead of this job's, or the wall time read as CPU (a
sleeping job counted as busy); a pilot's usage without its workers'.  The report's way
to the job's and the pilot's records: tests/store/test_usage_store.py and
tests/cli/test_cli.py (``panda-lab job ID`` against a real server and pilot).
"""

from __future__ import annotations

import os
import time

import cloudpickle
import pytest

from panda_lab.pilot.usage import JobMeter, PilotMeter
from panda_lab.pilot.worker import Worker

MB = 2**20


def hold(mb):
    """Touch ``mb`` MB for a moment, then free them."""
    block = bytearray(mb * MB)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(0.05)
    return len(block) // MB


def burn(seconds):
    """Keep one core busy until this process used ``seconds`` more CPU time (on a free
    core, as much wall time; a shared test machine may stretch the wall time)."""
    end, n = time.process_time() + seconds, 0
    while time.process_time() < end:
        n += 1
    return n > 0


def nap(seconds):
    time.sleep(seconds)
    return True


def run(worker, fn, *args, job_id=1):
    payload = cloudpickle.dumps((cloudpickle.dumps(fn), args, {}))
    worker.run({"id": job_id, "task": 1, "payload": payload}, None, time.time())
    while True:
        _, outcome = worker.receive()
        if outcome is None or hasattr(outcome, "ok"):
            return outcome


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


def test_a_job_reports_its_payloads_peak_memory_not_the_request_nor_an_earlier_jobs(worker):
    baseline = run(worker, nap, 0.0, job_id=1)
    assert baseline.ok and baseline.peak_rss_mb is not None
    big = run(worker, hold, 200, job_id=2)
    assert big.ok and big.peak_rss_mb is not None
    # the 200 MB are the payload's; what is above them is the worker's own (Python,
    # numpy, the payload module): a sane bound, not the host's or the pilot's
    assert 200 <= big.peak_rss_mb <= 200 + baseline.peak_rss_mb + 60, big.peak_rss_mb
    # the same worker process next: its high-water mark must not lend this job 200 MB
    small = run(worker, nap, 0.0, job_id=3)
    assert small.ok and small.peak_rss_mb < big.peak_rss_mb - 150, small.peak_rss_mb


def test_a_job_reports_its_own_cpu_time_close_to_its_wall_when_busy_and_none_asleep(worker):
    busy = run(worker, burn, 0.4, job_id=4)
    wall = busy.ended_at - busy.started_at
    assert busy.ok and busy.cpu_s is not None
    # one busy core: the CPU the payload burned, which is its wall time on a free core
    assert 0.4 <= busy.cpu_s <= min(0.55, wall + 0.05), (busy.cpu_s, wall)
    asleep = run(worker, nap, 0.5, job_id=5)
    # this job's CPU only, not the worker's life so far (which holds the busy second)
    assert asleep.ok and asleep.cpu_s < 0.1, asleep.cpu_s


def test_the_meter_falls_back_when_the_mark_cannot_be_reset(monkeypatch):
    """Without /proc/self/clear_refs the old mark counts only when it rose in the job,
    else the resident memory at the end: never an earlier peak."""
    import panda_lab.pilot.usage as usage

    hold(150)  # this process's high-water mark is now at least 150 MB above its use
    mark = usage._hwm_mb()
    monkeypatch.setattr(usage, "_reset_hwm", lambda: False)
    used = JobMeter().stop()
    assert used.peak_rss_mb is not None and used.peak_rss_mb < mark - 100, (used, mark)
    assert used.peak_rss_mb <= usage.psutil.Process().memory_info().rss / MB + 5


def test_the_pilot_meter_counts_its_workers_and_a_rate_after_the_first_reading(worker):
    run(worker, nap, 0.0, job_id=6)  # the worker process runs: it is the meter's child
    meter = PilotMeter()
    first = meter.read()
    assert first is not None and "cpu_pct" not in first
    import psutil

    own = psutil.Process().memory_info().rss / MB
    assert first["rss_mb"] > own  # the worker's memory counts with the pilot's
    burn(0.3)
    second = meter.read()
    # cpu_s is kept to 0.01 s: two readings each rounded may lie 0.01 closer
    assert first["cpu_s"] + 0.29 <= second["cpu_s"] <= first["cpu_s"] + 0.5
    assert 0 < second["cpu_pct"] <= 100 * (os.cpu_count() or 1) + 5, second
