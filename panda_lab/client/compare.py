"""Two runs of an analysis side by side: ``lab.compare(a, b)`` (a re-run with a changed
cut against the previous one).

Each histogram that both merged results hold at the same key path is overlaid, with the
ratio b/a under it, and summed up in numbers: totals, their ratio, and the chi-square of
the difference over the bins, sum (a_i - b_i)^2 / (var a_i + var b_i) with ndf the bins
where either has a variance (the two-sample test of unnormalised histograms, as in ROOT's
``TH1::Chi2Test`` without its normalisation).  It assumes independent samples: two runs
over the same events are correlated, so their chi2/ndf reads low; it says "the same
within errors", not "compatible".  Only final tasks are compared, and only histograms of
the same binning: anything else raises, naming the task or the key path.
"""

from __future__ import annotations

import base64
import html
import pickle
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from panda_lab.model import TASK_FINAL
from panda_lab.model.outcome import summary_of
from panda_lab.widgets.histplot import (
    COLOURS,
    INK,
    draw,
    errors,
    figure,
    find_histograms,
    hep_axes,
    render,
)

if TYPE_CHECKING:
    from panda_lab.client.session import Lab


@dataclass
class Run:
    """One side of a comparison: the task's record and its merged result."""

    info: dict
    result: Any
    events: int
    total_events: int

    @property
    def label(self) -> str:
        """``"task 12 'dimuon'"``: how the figure and the errors name it."""
        return f"task {self.info['id']} {self.info['name']!r}"


@dataclass
class Comparison:
    """What :func:`compare` returns.

    ``tasks``: one row per run (``a``, ``b``) with ``id``, ``name``, ``state``, ``label``
    (the outcome), ``events``, ``total_events``, ``wall_s`` (seconds).  ``histograms``:
    one row per key path both hold, with ``total_a``, ``total_b`` (sums of the bins,
    without flow), ``ratio`` (total_b / total_a), ``chi2``, ``ndf``, ``chi2_ndf``.
    ``only_in_a``/``only_in_b``: key paths of histograms one run has and the other not.
    :attr:`figure` draws the overlays; in a notebook the object shows as HTML."""

    a: Run
    b: Run
    tasks: pd.DataFrame
    histograms: pd.DataFrame
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    _figure: Any = None

    @property
    def figure(self) -> Any:
        """A matplotlib ``Figure``: per key path, both histograms overlaid (HEP style) and
        the ratio b/a under them; drawn once, on first use."""
        if self._figure is None:
            self._figure = overlay(self.a, self.b, list(self.histograms.index))
        return self._figure

    def _repr_html_(self) -> str:
        svg = render(self.figure, "svg").decode()
        svg = svg[svg.index("<svg"):]  # inline: without the XML prolog
        extra = "".join(f"<p>only in {html.escape(run.label)}: {html.escape(', '.join(p))}</p>"
                        for run, p in ((self.a, self.only_in_a), (self.b, self.only_in_b)) if p)
        return (f"<div class='panda-compare'>{self.tasks.to_html()}"
                f"{self.histograms.to_html(float_format=lambda v: f'{v:.4g}')}{extra}"
                f"<div>{svg}</div></div>")

    def __repr__(self) -> str:
        return (f"<Comparison of {self.a.label} and {self.b.label}>\n"
                f"{self.tasks.to_string()}\n{self.histograms.to_string()}")


def compare(lab: Lab | Any, a: Any, b: Any | None = None,
            timeout: float = 30.0) -> Comparison:
    """Compare the merged results of two finished analysis tasks.

    ``a``, ``b``: task ids, names (the newest task of that name) or handles; as
    ``panda_lab.compare(a, b)`` with two handles, the lab is the first handle's (with
    ids or names, the local server of :func:`panda_lab.connect`).  Waits up to
    ``timeout`` seconds for the last results of a final task to be merged.  Returns a
    :class:`Comparison`.  Raises :class:`ValueError` when a task is not final ("still
    running: wait for it with task.wait()"), is not an analysis, its results could not
    be merged or hold no histogram; when no key path holds a histogram in both; and when
    the histograms of one key path are binned differently (the path, both bin counts and
    ranges).  :class:`~panda_lab.http.ApiError` (404) for an unknown task."""
    if b is None:  # panda_lab.compare(a, b): no lab given
        if hasattr(lab, "api") and not hasattr(lab, "id"):
            raise TypeError("compare(lab, a, b) needs two tasks; only one was given")
        lab, a, b = _lab_of(lab), lab, a
    run_a, run_b = fetch(lab, a, timeout), fetch(lab, b, timeout)
    ha, hb = find_histograms(run_a.result), find_histograms(run_b.result)
    common = [p for p in ha if p in hb]
    if not common:
        raise ValueError(f"{run_a.label} and {run_b.label} have no histogram at the same "
                         f"key path: {sorted(ha) or 'none'} against {sorted(hb) or 'none'}")
    rows = {}
    for path in common:
        same_binning(path, run_a, ha[path], run_b, hb[path])
        rows[path] = numbers(ha[path], hb[path])
    histograms = pd.DataFrame.from_dict(rows, orient="index")
    histograms.index.name = "histogram"
    tasks = pd.DataFrame([task_row(run_a), task_row(run_b)], index=["a", "b"])
    return Comparison(run_a, run_b, tasks, histograms,
                      [p for p in ha if p not in hb], [p for p in hb if p not in ha])


def _lab_of(task: Any) -> Lab:
    """The lab of a handle, else the local server's (``panda_lab.connect()``)."""
    lab = getattr(task, "lab", None)
    if lab is not None:
        return lab
    from panda_lab.client.session import connect

    return connect()


def task_id(task: Any) -> int | str:
    """A task's id or name from an id, a name or a handle (anything with ``id``)."""
    return getattr(task, "id", task)


def fetch(lab: Lab, task: Any, timeout: float) -> Run:
    """A final analysis task's record and merged result; raises as :func:`compare`."""
    info = lab.task_info(task_id(task))
    label = f"task {info['id']} {info['name']!r}"
    if info["state"] not in TASK_FINAL:
        raise ValueError(f"{label} is still {info['state']}: compare needs finished tasks; "
                         f"wait for it with task.wait() (or lab.wait({info['id']}))")
    if info["options"].get("kind") != "analysis":
        raise ValueError(f"{label} is not an analysis (lab.analyze): it has no merged "
                         "histograms to compare")
    deadline = time.monotonic() + timeout
    part = lab.api.get(f"/api/tasks/{info['id']}/partial")
    while not part.get("final") and not part.get("merge_error") \
            and time.monotonic() < deadline:
        time.sleep(0.05)  # the merger is finishing the last results
        part = lab.api.get(f"/api/tasks/{info['id']}/partial")
    if part.get("merge_error"):
        raise ValueError(f"{label}: its results could not be merged "
                         f"({part['merge_error'].get('message', '')}); nothing to compare")
    result = pickle.loads(base64.b64decode(part["data"])) if part["data"] else None
    return Run(info, result, part["events"], part["total_events"])


def same_binning(path: str, run_a: Run, h_a: Any, run_b: Run, h_b: Any) -> None:
    """Raise ``ValueError`` naming ``path`` and both binnings when the edges differ."""
    ea = np.asarray(h_a.axes[0].edges, dtype=float)
    eb = np.asarray(h_b.axes[0].edges, dtype=float)
    if len(ea) == len(eb) and np.allclose(ea, eb):
        return

    def says(e: np.ndarray) -> str:
        return f"{len(e) - 1} bins from {e[0]:g} to {e[-1]:g}"

    detail = (f"{says(ea)} against {says(eb)}" if says(ea) != says(eb)
              else "the same count and range, different edges")
    raise ValueError(f"histogram {path!r} is binned differently: {run_a.label} has "
                     f"{says(ea)}, {run_b.label} {says(eb)} ({detail}); rebin one to the "
                     "other's edges to compare them")


def numbers(h_a: Any, h_b: Any) -> dict:
    """Totals, their ratio and the chi-square of the difference (the module's rule);
    chi2 is NaN and ndf 0 when either histogram's variances are unknown."""
    va, vb = np.asarray(h_a.values(), float), np.asarray(h_b.values(), float)
    total_a, total_b = float(va.sum()), float(vb.sum())
    ea, eb = errors(h_a), errors(h_b)
    if ea is None or eb is None:  # variances unknown (weights in Double storage): no chi2
        chi2, ndf = float("nan"), 0
    else:
        var = ea ** 2 + eb ** 2
        used = var > 0
        chi2 = float(np.sum((va[used] - vb[used]) ** 2 / var[used]))
        ndf = int(used.sum())
    return {"total_a": total_a, "total_b": total_b,
            "ratio": total_b / total_a if total_a else float("nan"),
            "chi2": chi2, "ndf": ndf, "chi2_ndf": chi2 / ndf if ndf else float("nan")}


def task_row(run: Run) -> dict:
    """One row of :attr:`Comparison.tasks`."""
    summary = summary_of(run.info)
    return {"id": run.info["id"], "name": run.info["name"], "state": run.info["state"],
            "label": summary.get("label", ""), "events": run.events,
            "total_events": run.total_events, "wall_s": summary.get("wall_s")}


def overlay(run_a: Run, run_b: Run, paths: list[str]) -> Any:
    """The comparison's figure: a column per key path, overlay above, ratio b/a below."""
    ha, hb = find_histograms(run_a.result), find_histograms(run_b.result)
    n = max(len(paths), 1)
    fig = figure(5.0 * n, 4.6)
    grid = fig.add_gridspec(2, n, height_ratios=(3, 1), hspace=0.08, wspace=0.3,
                            left=0.12 / n, right=1 - 0.03 / n, bottom=0.12, top=0.92)
    for i, path in enumerate(paths):
        top = fig.add_subplot(grid[0, i])
        bottom = fig.add_subplot(grid[1, i], sharex=top)
        for run, h, colour in ((run_a, ha[path], COLOURS[0]), (run_b, hb[path], COLOURS[1])):
            draw(top, h, path, colour=colour,
                 label=f"{run.label}: {run.events:,} events")
        top.set_title(path, loc="left", color=INK, fontsize="medium")
        legend = top.legend(fontsize="small", frameon=False)
        for t in legend.get_texts():
            t.set_color(INK)
        xlabel = top.get_xlabel()
        top.set_xlabel("")
        top.tick_params(labelbottom=False)
        ratio_panel(bottom, ha[path], hb[path])
        bottom.set_xlabel(xlabel, loc="right")
        hep_axes(bottom)
    return fig


def ratio_panel(ax: Any, h_a: Any, h_b: Any) -> None:
    """b/a per bin with its error (both errors propagated), where a has entries."""
    edges = np.asarray(h_a.axes[0].edges, dtype=float)
    centres = (edges[1:] + edges[:-1]) / 2
    va, vb = np.asarray(h_a.values(), float), np.asarray(h_b.values(), float)
    ea, eb = errors(h_a), errors(h_b)
    ea = np.zeros_like(va) if ea is None else ea  # unknown: drawn without error bars
    eb = np.zeros_like(vb) if eb is None else eb
    ok = va > 0
    r = np.divide(vb, va, out=np.full_like(vb, np.nan), where=ok)
    err = np.full_like(r, np.nan)
    err[ok] = np.sqrt((eb[ok] / va[ok]) ** 2 + (vb[ok] * ea[ok] / va[ok] ** 2) ** 2)
    ax.errorbar(centres[ok], r[ok], yerr=err[ok], fmt="o", markersize=3, color=COLOURS[1])
    ax.axhline(1.0, color=INK, lw=0.8, ls="--")
    ax.set_ylabel("b / a", loc="center")
    finite = r[ok][np.isfinite(r[ok])]
    spread = float(np.nanmax(np.abs(finite - 1))) if len(finite) else 0.5
    ax.set_ylim(max(0.0, 1 - min(spread, 1.0) * 1.2), 1 + min(spread, 1.0) * 1.2 + 1e-3)
