"""The merged histogram as the monitor draws it, read back from its SVG.

Kind tested: a plot that misstates what it shows.  Members: a y axis without the bin
width or with the wrong unit (a unit in brackets, in parentheses, none, bins of different
widths); counts drawn without error bars, or with sqrt(N) where the storage holds
weights; a partial result without its "partial" mark, a final one that keeps it, a final
one that lost events and says nothing; sqrt(N) error bars on weights filled
into a storage without their squares; a log toggle that leaves the axis linear; a
nested result where only the first histogram can be seen.
"""

from __future__ import annotations

import re

import hist
import numpy as np
import pytest

from panda_lab.widgets.histplot import (
    NO_ERRORS,
    errors,
    events_mark,
    find_histograms,
    plot_histogram,
    render,
    unit_of,
    y_label,
)


def texts(svg: bytes) -> list[str]:
    """The text elements of an SVG written with its text kept as text."""
    return [t.strip() for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg.decode())
            if t.strip()]


def mass_hist(storage=None) -> hist.Hist:
    h = hist.Hist(hist.axis.Regular(60, 60.0, 120.0, name="mass", label="m_mumu [GeV]"),
                  storage=storage or hist.storage.Double())
    return h.fill(np.random.default_rng(7).normal(91.0, 5.0, 2_000))


@pytest.mark.parametrize(("label", "unit"), [
    ("m_mumu [GeV]", "GeV"), ("p_T (GeV/c)", "GeV/c"), (r"$m_{\mu\mu}$ [GeV]", "GeV"),
    ("eta", ""), ("", ""), ("n [jets] per event", ""),
])
def test_the_unit_comes_from_brackets_or_parentheses_at_the_end(label, unit):
    assert unit_of(label) == unit


def test_the_y_title_gives_the_bin_width_with_its_unit():
    assert y_label(np.linspace(60, 120, 61), "GeV") == "Events / 1 GeV"
    assert y_label(np.linspace(60, 120, 121), "GeV") == "Events / 0.5 GeV"
    assert y_label(np.linspace(-2.5, 2.5, 21), "") == "Events / 0.25"
    assert y_label(np.array([0.0, 1.0, 5.0]), "GeV") == "Events / bin"


def test_the_svg_carries_the_axis_titles_and_the_partial_mark():
    svg = render(plot_histogram(mass_hist(), "mass", events=(30_000, 120_000), final=False))
    found = texts(svg)
    assert "m_mumu [GeV]" in found and "Events / 1 GeV" in found
    assert "partial: 30,000 of 120,000 events" in found
    final = texts(render(plot_histogram(mass_hist(), "mass", events=(120_000, 120_000))))
    assert "Events / 1 GeV" in final and not any("partial" in t for t in final)


def test_a_final_result_that_lost_events_says_so():
    assert events_mark((90, 120), final=True) == "final: 90 of 120 events (rest not processed)"
    assert events_mark((120, 120), final=True) == ""
    assert events_mark(None, final=False) == "partial"
    found = texts(render(plot_histogram(mass_hist(), "mass", events=(90, 120))))
    assert "final: 90 of 120 events (rest not processed)" in found


def test_error_bars_are_sqrt_n_for_counts_and_sqrt_w2_for_weights():
    h = mass_hist()
    assert np.allclose(errors(h), np.sqrt(h.values()))
    w = hist.Hist(hist.axis.Regular(4, 0, 4), storage=hist.storage.Weight())
    w.fill([0.5, 0.5, 1.5], weight=[2.0, 3.0, 0.5])
    assert np.allclose(errors(w), [np.sqrt(13.0), 0.5, 0.0, 0.0])  # not sqrt(5), sqrt(0.5)
    # weights filled into Double storage: no sum of w^2, so no error bars, and it says so
    d = hist.Hist(hist.axis.Regular(4, 0, 4)).fill([0.5, 1.5], weight=[2.0, 3.0])
    assert errors(d) is None
    unknown = plot_histogram(d, "w")
    assert not [c for c in unknown.axes[0].containers if getattr(c, "has_yerr", False)]
    assert NO_ERRORS in texts(render(unknown))
    fig = plot_histogram(h, "mass")
    ax = fig.axes[0]
    bars = [c for c in ax.containers if getattr(c, "has_yerr", False)]
    assert bars, "no error bars drawn"
    segments = bars[0].lines[2][0].get_segments()
    lengths = sorted(abs(s[1][1] - s[0][1]) for s in segments)
    drawn = sorted(2 * errors(h))
    assert np.allclose(lengths, drawn)


def test_the_log_toggle_makes_the_y_axis_logarithmic_from_above_zero():
    h = mass_hist()
    assert plot_histogram(h, "mass").axes[0].get_yscale() == "linear"
    ax = plot_histogram(h, "mass", log=True).axes[0]
    assert ax.get_yscale() == "log"
    low, high = ax.get_ylim()
    assert 0 < low <= h.values()[h.values() > 0].min() and high > h.values().max()


def test_every_histogram_of_a_nested_result_can_be_chosen():
    h1, h2 = mass_hist(), mass_hist(hist.storage.Weight())
    result = {"n": 3, "mass": h1, "muons": {"pt": h2, "tag": "x", "2d": hist.Hist(
        hist.axis.Regular(2, 0, 1), hist.axis.Regular(2, 0, 1))}}
    found = find_histograms(result)
    assert list(found) == ["mass", "muons.pt"]        # 2-D left out: not drawable as 1-D
    assert found["muons.pt"] is h2
    assert find_histograms(h1) == {"": h1} and find_histograms({"n": 1}) == {}
    assert "muons.pt" in texts(render(plot_histogram(found["muons.pt"], "muons.pt")))


def test_png_is_drawn_at_twice_the_screen_resolution():
    png = render(plot_histogram(mass_hist(), "mass", width=5.0, height=3.4), "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(png[16:20], "big")
    assert width == 5 * 192
    with pytest.raises(ValueError, match="fmt"):
        render(plot_histogram(mass_hist()), "gif")
