"""The task stream in a notebook: each attempt a bar on its pilot's row, from when the
pilot started it to when it ended (or now), coloured by its state, failures marked.

Dask's task-stream plot (distributed's dashboard, one row per worker thread) drawn from
panda-lab's own job records (``pilot_id``, ``site``, ``started_at``, ``ended_at``: the
server's job list with every attempt), the same rules as the JupyterLab panel's
(extension/src/timeline.ts): rows by site then pilot, x in seconds since the first start,
attempts never started on a pilot counted apart.  :func:`layout` is pure; :func:`svg`
draws it as an inline SVG with its colours inline (grey ink, readable on light and dark
themes).

Each pilot's row also says what it used (per-pilot memory and CPU, as Dask's dashboard
shows per worker): the pilot's latest report (``rss_mb``, ``cpu_pct``, ``cpu_s`` of
``GET /api/pilots``) and its attempts' own measurements here (largest ``peak_rss_mb``,
summed ``cpu_s``), in the words of :mod:`panda_lab.model.usage`.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from panda_lab.model import JOB_UNSUCCESSFUL, JobState
from panda_lab.model.usage import job_usage, megabytes, pilot_usage

#: Marked as failures: ended without a result, but not ``closed`` (never ran).
FAILED_STATES: frozenset[str] = frozenset(JOB_UNSUCCESSFUL) - {JobState.CLOSED}
ROW_PX, GUTTER_PX = 18, 130
INK = "#8c8c8c"


@dataclass
class Bar:
    """One attempt on a row, ``x0``/``x1`` in seconds since the stream's first start."""

    job: int
    job_index: int
    attempt: int
    row: int
    x0: float
    x1: float
    state: str
    failed: bool
    open: bool
    title: str


@dataclass
class Stream:
    """The attempts laid out: row labels ("SITE · pilot N"), bars, the span in seconds,
    ``t0`` (Unix seconds of the first start) and attempts never started on a pilot."""

    rows: list[str] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    span: float = 0.0
    t0: float = 0.0
    not_started: int = 0
    #: Per row: what its pilot and its attempts here used, in words.
    usage: list[str] = field(default_factory=list)


def seconds(s: float) -> str:
    """``"2.5 s"``, ``"42 s"``, ``"3.5 min"``."""
    return f"{s:.1f} s" if s < 10 else f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def row_usage(pilot: dict | None, mine: list[dict]) -> str:
    """A row's use: its pilot's latest report (``pilot`` a record of ``GET
    /api/pilots``, None when unknown) and the largest peak memory and the CPU seconds
    of its attempts here (``mine``, job records), e.g. ``"now 412 MB, CPU 97 %, 12 s CPU
    in all; jobs here: peak 231 MB, 8.4 s CPU"`` ("last" instead of "now" for a pilot
    that is not running)."""
    if pilot is None:
        now = "pilot usage unknown"
    elif pilot.get("rss_mb") is None:
        now = "pilot usage not reported yet"
    else:
        now = ("now " if pilot.get("state", "running") == "running" else "last ") + \
            pilot_usage(pilot)
    peaks = [a["peak_rss_mb"] for a in mine if a.get("peak_rss_mb") is not None]
    cpus = [a["cpu_s"] for a in mine if a.get("cpu_s") is not None]
    if not peaks and not cpus:
        return f"{now}; jobs here: not measured yet"
    here = [f"peak {megabytes(max(peaks))}" if peaks else "memory not measured",
            f"{sum(cpus):.1f} s CPU" if cpus else "CPU not measured"]
    return f"{now}; jobs here: {', '.join(here)}"


def layout(attempts: list[dict], now: float, pilots: dict[int, dict] | None = None
           ) -> Stream:
    """Lay a task's attempts (job records of any order, with ``id``, ``job_index``,
    ``attempt``, ``state``, ``site``, ``pilot_id``, ``started_at``, ``ended_at``,
    ``error_message``, ``peak_rss_mb``, ``cpu_s``) on pilot rows; ``now`` (Unix
    seconds) ends the open ones; ``pilots`` (records of ``GET /api/pilots`` by id) give
    each row its pilot's usage (:func:`row_usage`)."""
    drawn = [a for a in attempts if a.get("started_at") is not None
             and a.get("pilot_id") is not None]
    keys = sorted({(a.get("site") or "-", int(a["pilot_id"])) for a in drawn})
    row_of = {k: i for i, k in enumerate(keys)}
    t0 = min((a["started_at"] for a in drawn), default=now)
    bars = []
    for a in drawn:
        start = a["started_at"]
        end = a["ended_at"] if a.get("ended_at") is not None else max(now, start)
        error = (a.get("error_message") or "")[:120]
        bars.append(Bar(a["id"], a["job_index"], a["attempt"],
                        row_of[(a.get("site") or "-", int(a["pilot_id"]))],
                        start - t0, max(end, start) - t0, a["state"],
                        a["state"] in FAILED_STATES, a.get("ended_at") is None,
                        f"job #{a['job_index']} attempt {a['attempt']}: {a['state']}, "
                        f"{seconds(max(end - start, 0))}" + (f" ({error})" if error else "")
                        + (f"; {job_usage(a)}" if a.get("ended_at") is not None else "")))
    span = max((b.x1 for b in bars), default=0.0)
    usage = [row_usage((pilots or {}).get(p), [a for a in drawn if int(a["pilot_id"]) == p])
             for _, p in keys]
    return Stream([f"{s} · pilot {p}" for s, p in keys], bars,
                  max(span, 1e-3) if bars else 0.0, t0, len(attempts) - len(drawn), usage)


def svg(stream: Stream, colours: dict[str, str], width: int = 600) -> str:
    """The stream as an inline ``<svg class='panda-stream'>`` ``width`` pixels wide: a bar
    per attempt (``colours`` by state, a tooltip with job, attempt, state, duration,
    error and what it used), a cross at the end of a failed one, row labels and a time
    axis; then each row's memory and CPU (``panda-stream-usage``).  A stream
    without bars is a line of text saying no job has started on a pilot."""
    if not stream.bars:
        return "<i class='panda-stream'>no job has started on a pilot yet</i>"
    plot = width - GUTTER_PX - 8
    height = len(stream.rows) * ROW_PX + 20

    def x(s: float) -> float:
        return GUTTER_PX + plot * s / stream.span

    parts = [f"<svg class='panda-stream' width='{width}' height='{height}' "
             f"viewBox='0 0 {width} {height}' role='img' aria-label='task stream: "
             f"{len(stream.bars)} attempts on {len(stream.rows)} pilots' "
             f"font-family='sans-serif' font-size='11'>"]
    for i, label in enumerate(stream.rows):
        y = (i + 1) * ROW_PX
        tip = (f"<title>{html.escape(label)}: {html.escape(stream.usage[i])}</title>"
               if i < len(stream.usage) else "")
        parts.append(f"<text x='2' y='{i * ROW_PX + 13}' fill='{INK}'>{tip}"
                     f"{html.escape(label)}</text><line x1='{GUTTER_PX}' x2='{width - 8}' "
                     f"y1='{y}' y2='{y}' stroke='{INK}' stroke-opacity='0.3'/>")
    for b in stream.bars:
        x0 = x(b.x0)
        parts.append(f"<rect class='panda-stream-bar' data-state='{b.state}' "
                     f"x='{x0:.1f}' y='{b.row * ROW_PX + 3}' "
                     f"width='{max(x(b.x1) - x0, 2):.1f}' height='{ROW_PX - 6}' "
                     f"fill='{colours.get(b.state, INK)}'><title>{html.escape(b.title)}"
                     f"</title></rect>")
        if b.failed:
            cx, cy = x(b.x1), b.row * ROW_PX + ROW_PX / 2
            parts.append(f"<path class='panda-stream-failed' d='M{cx - 4:.1f} {cy - 4} "
                         f"L{cx + 4:.1f} {cy + 4} M{cx - 4:.1f} {cy + 4} L{cx + 4:.1f} "
                         f"{cy - 4}' stroke='{colours.get(b.state, '#c62828')}' "
                         "stroke-width='2'/>")
    axis = len(stream.rows) * ROW_PX + 14
    for f, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
        parts.append(f"<text x='{x(f * stream.span):.1f}' y='{axis}' fill='{INK}' "
                     f"text-anchor='{anchor}'>{seconds(f * stream.span)}</text>")
    parts.append("</svg>")
    if stream.usage:  # per-pilot memory and CPU, one line a row
        parts.append("<div class='panda-stream-usage' style='font-size:11px'>" + "".join(
            f"<div><b>{html.escape(label)}</b>: {html.escape(use)}</div>"
            for label, use in zip(stream.rows, stream.usage, strict=True)) + "</div>")
    if stream.not_started:
        parts.append(f"<div class='panda-note'>{stream.not_started} attempts not started "
                     "on a pilot</div>")
    return "".join(parts)
