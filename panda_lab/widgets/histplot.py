"""A merged histogram drawn as a physicist draws it: HEP style, error bars, units and bin
width on the axes, and a plain mark while the result is still partial.

The conventions are the HEP ones that mplhep draws (its ``histplot`` does the drawing):
ticks inside on all four sides with minor ticks, axis titles at the axis ends, the
y title "Events / <bin width> <unit>" (PDG and the LHC experiments' plotting rules), and
error bars of sqrt(N) for counts or sqrt(sum of w^2) for weighted storage.  Figures are
drawn without pyplot, and never through matplotlib's global style, so a monitor's
thread does not change a notebook's own plots.  The background is transparent and the
text a mid grey, readable on JupyterLab's light and dark themes alike.
"""

from __future__ import annotations

import io
import re
import threading
from typing import Any

import numpy as np

#: Colours that read on a white and on a near-black background.
INK = "#8c8c8c"
COLOURS = ("#3f90da", "#e76300", "#2ca02c", "#b9ac70")
PARTIAL_COLOUR = "#e76300"

#: ``svg.fonttype`` is read from matplotlib's settings when an SVG is written: the lock
#: keeps two drawings from changing it under each other.
_SVG_LOCK = threading.Lock()
_UNIT = re.compile(r"[\[(]\s*([^\[\]()]+?)\s*[\])]\s*$")

#: Set once matplotlib and mplhep are imported (:func:`warm`).
_READY = threading.Event()
_WARMING = threading.Lock()


def _import_plotting() -> None:
    import matplotlib.backends.backend_agg  # noqa: F401
    import mplhep  # noqa: F401


def warm() -> None:
    """Import what drawing needs (matplotlib, mplhep, its fonts) in a thread of its own,
    once; returns at once.  The first import takes seconds (10 s on a loaded 2-core
    machine): a monitor that imported it on its own thread stopped updating its counts
    that long, which is all of a short task."""
    if _READY.is_set() or not _WARMING.acquire(blocking=False):
        return

    def run() -> None:
        try:
            _import_plotting()
        finally:
            _READY.set()

    threading.Thread(target=run, daemon=True, name="panda-plot-import").start()


def ready(wait: float | None = 0.0) -> bool:
    """Whether drawing is ready (:func:`warm` started if not); ``wait`` seconds to wait
    for it (``None``: until it is)."""
    warm()
    return _READY.wait(wait)


def find_histograms(result: Any, depth: int = 3) -> dict[str, Any]:
    """Every one-dimensional histogram (hist or boost-histogram) in a result, by key path.

    ``result`` is the histogram itself (path ``""``) or a dict (also coffea's
    accumulators) nested up to ``depth`` levels; paths are dotted (``"muons.pt"``), in
    the result's order.  Returns ``{}`` when there is none."""
    if _is_hist_1d(result):
        return {"": result}
    found: dict[str, Any] = {}
    if depth and isinstance(result, dict):
        for key, value in result.items():
            for path, h in find_histograms(value, depth - 1).items():
                found[f"{key}.{path}" if path else str(key)] = h
    return found


def _is_hist_1d(obj: Any) -> bool:
    axes = getattr(obj, "axes", None)
    if axes is None or not callable(getattr(obj, "values", None)):
        return False
    try:
        return len(axes) == 1
    except TypeError:
        return False


def unit_of(label: str) -> str:
    """The unit at the end of an axis label in brackets or parentheses
    (``"m [GeV]"``, ``"p_T (GeV/c)"``), else ``""``."""
    m = _UNIT.search(label or "")
    return m.group(1) if m else ""


def bin_width(edges: np.ndarray) -> float | None:
    """The width of equal bins, ``None`` for bins of different widths."""
    widths = np.diff(np.asarray(edges, dtype=float))
    if len(widths) == 0:
        return None
    return float(widths[0]) if np.allclose(widths, widths[0], rtol=1e-6) else None


def y_label(edges: np.ndarray, unit: str) -> str:
    """``"Events / 1 GeV"``, ``"Events / 0.25"`` without a unit, ``"Events / bin"`` for
    bins of different widths."""
    width = bin_width(edges)
    if width is None:
        return "Events / bin"
    return f"Events / {width:.4g}" + (f" {unit}" if unit else "")


def x_label(h: Any, name: str) -> str:
    """The axis's label, else its name, else the histogram's key path."""
    axis = h.axes[0]
    return getattr(axis, "label", None) or getattr(axis, "name", None) or name or "x"


def errors(h: Any) -> np.ndarray | None:
    """Per-bin error bars: sqrt of the variances (sum of w^2 for weighted storage, the
    counts for unweighted), sqrt of the counts for a histogram without ``variances()``.
    ``None`` when they are unknown: weights filled into a storage that keeps no sum of
    w^2 (hist's ``Double``), where sqrt(counts) would be wrong."""
    if not callable(getattr(h, "variances", None)):
        return np.sqrt(np.maximum(np.asarray(h.values(), dtype=float), 0.0))
    variances = h.variances()
    if variances is None:
        return None
    return np.sqrt(np.maximum(np.asarray(variances, dtype=float), 0.0))


#: Said on a figure whose histogram cannot have error bars.
NO_ERRORS = "no error bars: weighted fill without Weight storage"


def hep_axes(ax: Any) -> None:
    """The HEP look on one axes, without touching matplotlib's global style: ticks in,
    on all four sides, minor ticks, grey ink, titles at the axis ends."""
    ax.set_facecolor("none")
    ax.minorticks_on()
    ax.tick_params(which="both", direction="in", top=True, right=True, colors=INK,
                   labelcolor=INK)
    ax.tick_params(which="major", length=6)
    ax.tick_params(which="minor", length=3)
    for spine in ax.spines.values():
        spine.set_color(INK)
    ax.xaxis.label.set_color(INK)
    ax.yaxis.label.set_color(INK)


def draw(ax: Any, h: Any, name: str = "", *, label: str | None = None,
         colour: str = COLOURS[0], log: bool = False) -> None:
    """One histogram on ``ax``: mplhep's error-bar markers with a step line under them
    (the line alone, and :data:`NO_ERRORS` on the axes, when the errors are unknown),
    the axis titles (x from the axis label, y with bin width and unit) and the y scale
    (``log``: logarithmic, the lower limit at half the smallest positive count)."""
    import mplhep

    edges = np.asarray(h.axes[0].edges, dtype=float)
    values = np.asarray(h.values(), dtype=float)
    mplhep.histplot(values, edges, ax=ax, histtype="step", color=colour, lw=1, yerr=False)
    yerr = errors(h)
    if yerr is None:  # unknown: drawn as a line only, and said on the figure
        mplhep.histplot(values, edges, ax=ax, histtype="step", color=colour, lw=1,
                        yerr=False, label=label)
        ax.text(0.02, 0.95, NO_ERRORS, transform=ax.transAxes, color=INK,
                fontsize="small", va="top")
    else:
        mplhep.histplot(values, edges, ax=ax, histtype="errorbar", color=colour,
                        yerr=yerr, markersize=3, label=label)
    xl = x_label(h, name)
    ax.set_xlabel(xl, loc="right")
    ax.set_ylabel(y_label(edges, unit_of(xl)), loc="top")
    ax.set_xlim(edges[0], edges[-1])
    scale(ax, values, log)
    hep_axes(ax)


def scale(ax: Any, values: np.ndarray, log: bool) -> None:
    """Linear from 0, or logarithmic from half the smallest positive value."""
    top = float(np.max(values)) if len(values) else 1.0
    if log:
        positive = values[values > 0]
        bottom = float(positive.min()) / 2 if len(positive) else 0.5
        ax.set_yscale("log")
        ax.set_ylim(bottom, max(top, bottom * 10) * 5)
    else:
        ax.set_ylim(0, max(top, 1.0) * 1.25)


def figure(width: float = 5.0, height: float = 3.4) -> Any:
    """A matplotlib ``Figure`` (inches) with an Agg canvas, made without pyplot, its
    background transparent."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    fig.patch.set_alpha(0.0)
    return fig


def plot_histogram(h: Any, name: str = "", *, log: bool = False,
                   events: tuple[int, int] | None = None, final: bool = True,
                   width: float = 5.0, height: float = 3.4) -> Any:
    """A 1-D histogram as a HEP figure; returns the matplotlib ``Figure``.

    ``name``: its key path in the result (the x title when the axis has no label, and the
    title).  ``events``: ``(events merged, events in all)``; while not ``final`` the top
    right says "partial: N of M events"; a final result that lacks events says "final:
    N of M events (rest not processed)"; a complete final one carries no mark.
    ``width``/``height`` in inches.  ``h`` needs ``axes[0].edges`` and ``values()``
    (hist, boost-histogram); ``variances()`` is used when there is one."""
    fig = figure(width, height)
    ax = fig.add_subplot()
    draw(ax, h, name, log=log)
    if name:
        ax.set_title(name, loc="left", color=INK, fontsize="medium")
    mark = events_mark(events, final)
    if mark:
        ax.set_title(mark, loc="right", color=PARTIAL_COLOUR, fontsize="medium")
    fig.subplots_adjust(left=0.16, right=0.96, bottom=0.16, top=0.9)
    return fig


def events_mark(events: tuple[int, int] | None, final: bool) -> str:
    """What a figure says of the events behind it: "partial: N of M events" until
    ``final``; after it "final: N of M events (rest not processed)" when events were
    lost, else nothing (``""``)."""
    if events is None:
        return "" if final else "partial"
    done, total = events
    if not final:
        return f"partial: {done:,} of {total:,} events"
    if done < total:
        return f"final: {done:,} of {total:,} events (rest not processed)"
    return ""


def render(fig: Any, fmt: str = "svg") -> bytes:
    """A figure's bytes: ``"svg"`` (text kept as text, sharp at any width) or ``"png"``
    (at 2x of 96 dpi, for high-DPI screens).  Raises ``ValueError`` for another format."""
    import matplotlib

    buf = io.BytesIO()
    if fmt == "svg":
        with _SVG_LOCK, matplotlib.rc_context({"svg.fonttype": "none"}):
            fig.savefig(buf, format="svg", transparent=True)
    elif fmt == "png":
        fig.savefig(buf, format="png", dpi=192, transparent=True)
    else:
        raise ValueError(f"fmt: 'svg' or 'png', not {fmt!r}")
    return buf.getvalue()
