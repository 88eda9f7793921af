"""The task stream of the notebook's monitor: attempts as bars on their pilots' rows.

Kind tested: a plot that misstates what it shows.  Members: an attempt on the wrong
pilot's row or at the wrong time; a failed attempt without its mark, or a cancelled one
marked as not failed, or a ``closed`` one (never ran) marked as a failure; an attempt
still running drawn as ended; attempts never started drawn as if they ran, or dropped
without a word.
"""

from __future__ import annotations

import re

from panda_lab.widgets.monitor import COLOURS
from panda_lab.widgets.stream import layout, row_usage, svg


def attempt(i, state, site, pilot, start, end, attempt=1, error=None):
    return {"id": i, "job_index": i, "attempt": attempt, "state": state, "site": site,
            "pilot_id": pilot, "started_at": start, "ended_at": end, "error_message": error}


ATTEMPTS = [
    attempt(1, "finished", "LOCAL-HPC", 7, 100.0, 104.0),
    attempt(2, "failed", "LOCAL-GRID", 3, 101.0, 102.0, error="ValueError: bad input"),
    attempt(3, "running", "LOCAL-GRID", 3, 102.5, None),
    attempt(4, "cancelled", "LOCAL-GRID", 12, 101.0, 103.0),
    attempt(5, "closed", None, None, None, 103.0),
    attempt(6, "activated", "LOCAL-HPC", None, None, None),
]


def test_attempts_sit_on_their_pilots_rows_at_their_times():
    s = layout(ATTEMPTS, now=106.0)
    assert s.rows == ["LOCAL-GRID · pilot 3", "LOCAL-GRID · pilot 12", "LOCAL-HPC · pilot 7"]
    bars = {b.job: b for b in s.bars}
    assert sorted(bars) == [1, 2, 3, 4] and s.not_started == 2
    assert (bars[1].row, bars[1].x0, bars[1].x1) == (2, 0.0, 4.0)
    assert (bars[2].row, bars[3].row, bars[4].row) == (0, 0, 1)
    assert bars[3].open and bars[3].x1 == 6.0 and not bars[1].open     # running: until now
    assert s.span == 6.0 and s.t0 == 100.0
    assert [b.job for b in s.bars if b.failed] == [2, 4]                 # closed never ran
    assert "ValueError: bad input" in bars[2].title and "1.0 s" in bars[2].title


def test_the_svg_colours_bars_by_state_and_marks_failures():
    out = svg(layout(ATTEMPTS, now=106.0), COLOURS)
    assert len(re.findall(r"<rect class='panda-stream-bar'", out)) == 4
    assert out.count("class='panda-stream-failed'") == 2
    assert "data-state='failed' x='207.0'" in out   # 1 s of 6 into a 462 px plot after 130
    for state in ("finished", "failed", "running", "cancelled"):
        assert re.search(rf"data-state='{state}'[^>]*fill='{COLOURS[state]}'", out), state
    assert "LOCAL-HPC · pilot 7" in out and "6.0 s" in out
    assert "2 attempts not started on a pilot" in out
    assert svg(layout([ATTEMPTS[5]], now=1.0), COLOURS).endswith(
        "no job has started on a pilot yet</i>")


def test_each_pilots_row_says_its_memory_and_cpu_from_the_pilot_and_its_jobs():
    """Kind: resource numbers that read 0 or the pilot's own instead of the payload's.
    A row gives its pilot's usage (the pilot's report) and its jobs' own peaks (the
    payload's measurement), apart; a pilot or a job not measured says so, not 0."""
    measured = [dict(ATTEMPTS[0], peak_rss_mb=231.4, cpu_s=3.9),
                dict(ATTEMPTS[1], peak_rss_mb=80.0, cpu_s=0.4), ATTEMPTS[2], ATTEMPTS[3]]
    pilots = {7: {"id": 7, "rss_mb": 412.0, "cpu_s": 12.3, "cpu_pct": 97.4},
              3: {"id": 3, "state": "finished", "rss_mb": None, "cpu_s": None, "cpu_pct": None}}
    s = layout(measured, now=106.0, pilots=pilots)
    by_row = dict(zip(s.rows, s.usage, strict=True))
    assert by_row["LOCAL-HPC · pilot 7"] == \
        "now 412 MB, CPU 97 %, 12 s CPU in all; jobs here: peak 231 MB, 3.9 s CPU"
    assert by_row["LOCAL-GRID · pilot 3"] == \
        "pilot usage not reported yet; jobs here: peak 80 MB, 0.4 s CPU"
    assert by_row["LOCAL-GRID · pilot 12"] == \
        "pilot usage unknown; jobs here: not measured yet"
    bars = {b.job: b for b in s.bars}
    assert "peak memory 231 MB, CPU 3.90 s (98 % of its 4.00 s run)" in bars[1].title
    assert "memory and CPU not measured" in bars[4].title and "memory" not in bars[3].title
    out = svg(s, COLOURS)
    assert "class='panda-stream-usage'" in out
    assert "<b>LOCAL-HPC · pilot 7</b>: now 412 MB, CPU 97 %" in out
    assert "<title>LOCAL-HPC · pilot 7: now 412 MB" in out
    gone = {"state": "finished", "rss_mb": 50.0, "cpu_s": 2.0, "cpu_pct": None}
    assert row_usage(gone, []) == "last 50 MB, 2.00 s CPU in all; jobs here: not measured yet"
