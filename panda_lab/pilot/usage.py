"""What a job and a pilot really use: the payload's peak resident memory and CPU time,
and the pilot's memory and CPU now.

PanDA's pilot reports each job's resource use with its final state (``maxRSS``,
``cpuConsumptionTime``, measured on the payload's processes, never the pilot's own:
pilot3's ``memory monitor``), and a pilot's load with its heartbeat.  Here:

* a job's ``peak_rss_mb`` is the peak resident memory (MB, 2**20 bytes) of the worker
  process that ran its payload, *during that job*: the worker is reused between jobs, so
  its lifetime high-water mark (``VmHWM``, ``ru_maxrss``) would carry an earlier job's
  peak into the next.  On Linux the mark is reset before each job (``/proc/self/clear_refs``
  ``5``, proc(5)); elsewhere the mark counts when it rose during the job, else the
  resident memory at its end (a lower bound).  Reaped child processes of the payload count
  with their own peak (``RUSAGE_CHILDREN``) when it rose during the job.  Resident
  memory the worker holds for its jobs counts too: the read cache's bytes, faulted in at
  the worker's start (``worker.prepare_memory``), and freed memory its allocator keeps
  (``allocator.py``), so a job reads at least that, and a job that fits within it reads
  no more;
* a job's ``cpu_s`` is the user + system CPU seconds of the worker process (and of its
  reaped children) during the job, from ``getrusage(2)``;
* a pilot's usage (:class:`PilotMeter`) is the resident memory of the pilot and its
  workers now (MB), their CPU seconds since the pilot started, and the CPU they used since
  the previous reading as a percentage of one core (psutil).
"""

from __future__ import annotations

import os
import re
import resource
import sys
import time
from dataclasses import dataclass

import psutil

MB = float(2**20)
_HWM = re.compile(rb"VmHWM:\s+(\d+)\s+kB")
#: ``ru_maxrss`` is in kilobytes on Linux, in bytes on macOS.
_MAXRSS_UNIT = 1.0 if sys.platform == "darwin" else 1024.0


def _cpu(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def _children_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * _MAXRSS_UNIT / MB


def _hwm_mb() -> float | None:
    """This process's resident high-water mark (MB), ``None`` where there is no /proc."""
    try:
        with open("/proc/self/status", "rb") as f:
            m = _HWM.search(f.read())
    except OSError:
        m = None
    if m is None:
        if sys.platform.startswith("linux"):
            return None
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _MAXRSS_UNIT / MB
    return int(m.group(1)) / 1024.0


def _reset_hwm() -> bool:
    """Reset this process's resident high-water mark to its resident memory now
    (Linux >= 4.0); ``False`` where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class JobUsage:
    """What one job used: ``peak_rss_mb`` (MB) and ``cpu_s`` (seconds); ``None`` where
    it could not be measured."""

    peak_rss_mb: float | None
    cpu_s: float | None


class JobMeter:
    """Measures one job in the process that runs its payload: make it just before the
    payload starts, call :meth:`stop` just after it ends."""

    def __init__(self) -> None:
        self.reset = _reset_hwm()
        self.hwm0 = _hwm_mb()
        self.children0 = _children_peak_mb()
        self.cpu0 = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN)

    def stop(self) -> JobUsage:
        """The job's :class:`JobUsage`, from this meter's start to now.  Never raises: a
        reading that fails gives ``None``."""
        try:
            cpu: float | None = round(
                _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN) - self.cpu0, 3)
        except OSError:
            cpu = None
        try:
            hwm = _hwm_mb()
            if hwm is not None and (self.reset or self.hwm0 is None or hwm > self.hwm0):
                peak: float | None = hwm
            else:  # the mark is an earlier job's: what is resident now is all we know
                peak = psutil.Process().memory_info().rss / MB
            children = _children_peak_mb()
            if children > self.children0 and peak is not None:
                peak = max(peak, children)
        except (OSError, psutil.Error):
            peak = None
        return JobUsage(round(peak, 1) if peak is not None else None, cpu)


class PilotMeter:
    """The pilot's usage with its workers (the pilot's child processes), for its
    heartbeats and reports: ``{"rss_mb", "cpu_s", "cpu_pct"}``."""

    def __init__(self) -> None:
        self.proc = psutil.Process(os.getpid())
        self.last: tuple[float, float] | None = None  # (monotonic time, cpu_s)

    def read(self) -> dict[str, float] | None:
        """``rss_mb``: resident memory of the pilot and its workers now (MB); ``cpu_s``:
        CPU seconds they used since the pilot started (workers that exited included);
        ``cpu_pct``: CPU used since the previous reading, in percent of one core (absent
        at the first).  ``None`` when psutil cannot read the processes."""
        try:
            rss = self.proc.memory_info().rss
            t = self.proc.cpu_times()
            cpu = t.user + t.system + t.children_user + t.children_system
            for child in self.proc.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                    ct = child.cpu_times()
                    cpu += ct.user + ct.system
                except psutil.Error:  # it exited meanwhile
                    continue
        except psutil.Error:
            return None
        now = time.monotonic()
        out = {"rss_mb": round(rss / MB, 1), "cpu_s": round(cpu, 2)}
        if self.last is not None and now - self.last[0] > 0.05:
            out["cpu_pct"] = round(max(0.0, 100 * (cpu - self.last[1]) / (now - self.last[0])), 1)
        self.last = (now, cpu)
        return out
