"""What a job and a pilot used, in words: one wording for the CLI, the widgets, the
panel's server side and the web monitor.

The numbers are PanDA's per-job ``maxRSS`` and ``cpuConsumptionTime`` and a pilot's load,
measured as panda_lab/pilot/usage.py says: a job's ``peak_rss_mb`` (the payload's peak
resident memory during the job, MB) and ``cpu_s`` (its CPU seconds); a pilot's
``rss_mb`` (resident memory with its workers now, MB), ``cpu_s`` (since it started) and
``cpu_pct`` (lately, percent of one core).  A number not measured is ``None`` and is
said so ("not measured"), never shown as 0.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["job_usage", "megabytes", "pilot_usage"]


def megabytes(mb: float) -> str:
    """``"230 MB"``, ``"1.2 GB"`` (GB = 1024 MB), ``"0.4 MB"``."""
    if mb >= 1024:
        return f"{mb / 1024:.1f} GB"
    return f"{mb:.0f} MB" if mb >= 10 else f"{mb:.1f} MB"


def _seconds(s: float) -> str:
    return f"{s:.2f} s" if s < 10 else f"{s:.0f} s"


def job_usage(job: Mapping) -> str:
    """A job record's use in words: ``"peak memory 230 MB, CPU 4.1 s (98 % of its 4.2 s
    run)"``; ``"memory and CPU not measured"`` when the record has neither (a job not
    ended, or whose worker died).  ``job`` has ``peak_rss_mb``, ``cpu_s`` and, for the
    share, ``started_at``/``ended_at`` (Unix seconds); missing keys read as not
    measured."""
    rss, cpu = job.get("peak_rss_mb"), job.get("cpu_s")
    if rss is None and cpu is None:
        return "memory and CPU not measured"
    parts = [f"peak memory {megabytes(rss)}" if rss is not None else "memory not measured"]
    if cpu is None:
        parts.append("CPU not measured")
    else:
        start, end = job.get("started_at"), job.get("ended_at")
        share = ""
        if start is not None and end is not None and end - start > 0.01:
            share = f" ({100 * cpu / (end - start):.0f} % of its {_seconds(end - start)} run)"
        parts.append(f"CPU {_seconds(cpu)}{share}")
    return ", ".join(parts)


def pilot_usage(pilot: Mapping) -> str:
    """A pilot record's use with its workers at its latest report: ``"412 MB, CPU 97 %,
    12 s CPU in all"`` (the percentage of one core since the report before);
    ``"usage not reported yet"`` before its first report of it."""
    rss, cpu, pct = pilot.get("rss_mb"), pilot.get("cpu_s"), pilot.get("cpu_pct")
    if rss is None:
        return "usage not reported yet"
    out = megabytes(rss)
    if pct is not None:
        out += f", CPU {pct:.0f} %"
    if cpu is not None:
        out += f", {_seconds(cpu)} CPU in all"
    return out
