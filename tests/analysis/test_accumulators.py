"""merge / merge_all: each accumulator rule, the order kept, and errors that say where."""

from __future__ import annotations

import collections
import pickle
from typing import NamedTuple

import awkward as ak
import hist
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from panda_lab.analysis.accumulate import MergeError, merge, merge_all


def _hist() -> hist.Hist:
    return hist.Hist.new.Reg(50, -3, 3, name="x").Weight()


def test_per_chunk_histograms_merge_to_the_single_pass_fill():
    values = np.random.default_rng(1).normal(size=10_007)
    weights = np.random.default_rng(2).uniform(0.5, 1.5, size=values.size)
    whole = _hist().fill(values, weight=weights)
    parts = []
    for lo in range(0, values.size, 1000):
        parts.append(_hist().fill(values[lo : lo + 1000], weight=weights[lo : lo + 1000]))
    merged = merge_all(parts)
    assert np.allclose(merged.values(flow=True), whole.values(flow=True), rtol=1e-12)
    assert np.allclose(merged.variances(flow=True), whole.variances(flow=True), rtol=1e-12)
    counts = merge_all(
        hist.Hist.new.Reg(10, -3, 3).Int64().fill(values[lo : lo + 700])
        for lo in range(0, values.size, 700)
    )
    assert np.array_equal(
        counts.values(flow=True),
        hist.Hist.new.Reg(10, -3, 3).Int64().fill(values).values(flow=True),
    )


def test_merged_counts_keep_their_variances_and_weighted_ones_stay_unknown():
    """boost-histogram's ``a + b`` drops the variances of unweighted Double storage; a
    merged result without them draws no error bars (the monitor, ``lab.compare``)."""
    axis = hist.axis.Regular(4, 0, 4)
    a, b = hist.Hist(axis).fill([0.5, 1.5, 1.5]), hist.Hist(axis).fill([1.5, 2.5])
    merged = merge_all([a, b, hist.Hist(axis).fill([3.5])])
    assert np.array_equal(merged.variances(), [1, 3, 1, 1])
    assert a.variances() is not None and b.variances() is not None  # inputs untouched
    weighted = hist.Hist(axis).fill([0.5], weight=[2.0])
    assert merge(a, weighted).variances() is None and merge(weighted, a).variances() is None


def test_numbers_and_arrays():
    assert merge(1, 2) == 3
    assert merge(1, 2.5) == 3.5
    assert merge(np.int64(4), 1) == 5
    assert merge(np.float32(1.5), np.float32(2)) == np.float32(3.5)
    assert np.array_equal(merge(np.arange(3), np.ones(3)), [1, 2, 3])
    assert merge_all(range(101)) == 5050


def test_none_is_the_identity():
    h = _hist().fill([0.0])
    assert merge(None, h) is h and merge(h, None) is h
    assert merge_all([]) is None
    assert merge_all([None, 3, None, None, 4]) == 7
    assert merge_all([None, None]) is None


def test_dicts_merge_per_key_over_the_union_of_keys_without_touching_inputs():
    a = {"n": 1, "only_a": [1, 2], "nested": {"x": 1}}
    b = {"n": 2, "only_b": np.ones(2), "nested": {"x": 10, "y": 5}}
    out = merge(a, b)
    assert out["n"] == 3 and out["only_a"] == [1, 2] and np.array_equal(out["only_b"], [1, 1])
    assert out["nested"] == {"x": 11, "y": 5}
    assert a == {"n": 1, "only_a": [1, 2], "nested": {"x": 1}}
    assert b["nested"] == {"x": 10, "y": 5}


def test_dict_subclasses_keep_their_type():
    out = merge(collections.defaultdict(int, a=1), {"a": 2, "b": 3})
    assert isinstance(out, collections.defaultdict) and out == {"a": 3, "b": 3}
    counter = merge(collections.Counter(a=1), collections.Counter(a=2, b=1))
    assert isinstance(counter, collections.Counter) and counter == {"a": 3, "b": 1}


class Pair(NamedTuple):
    hist: hist.Hist
    n: int


def test_lists_and_tuples_merge_elementwise():
    assert merge([1, 2.0], [10, 20.0]) == [11, 22.0]
    assert merge((1, 2), (3, 4)) == (4, 6)
    pair = merge(Pair(_hist().fill([0.1]), 1), Pair(_hist().fill([0.2]), 2))
    assert isinstance(pair, Pair) and pair.n == 3 and pair.hist.sum().value == 2
    with pytest.raises(MergeError, match=r"result: cannot merge list with list of lengths 2 and 3"):
        merge([1, 2], [1, 2, 3])


def test_awkward_arrays_concatenate_in_chunk_order():
    parts = [ak.Array([[i] * (i % 3), [i]]) for i in range(37)]
    merged = merge_all(parts)
    assert ak.array_equal(merged, ak.concatenate(parts))


@given(st.lists(st.lists(st.integers(-5, 5), max_size=4), max_size=40))
def test_order_is_kept_whatever_the_tree_shape(chunks):
    arrays = [ak.Array(np.array(c, dtype=np.int64)) for c in chunks]
    merged = merge_all(arrays)
    flat = [x for c in chunks for x in c]
    assert (merged is None and not chunks) or ak.to_list(merged) == flat
    assert merge_all(sum(c) for c in chunks) == (sum(flat) if chunks else None)


class Tally:
    def __init__(self, n: int) -> None:
        self.n = n

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.n + other.n)


def test_any_object_with_add():
    assert merge_all([Tally(1), Tally(2), Tally(3)]).n == 6


def test_incompatible_types_name_the_key_path():
    a = {"hists": [_hist(), 1], "meta": {"n": 1}}
    b = {"hists": [np.zeros(3), 2], "meta": {"n": 1}}
    with pytest.raises(MergeError, match=r"result\['hists'\]\[0\]: cannot merge Hist with ndarray"):
        merge(a, b)
    with pytest.raises(TypeError, match=r"result\['meta'\]\['n'\]: str is not an accumulator"):
        merge({"meta": {"n": 1}}, {"meta": {"n": "x"}})
    with pytest.raises(MergeError, match="bool is not an accumulator"):
        merge(True, False)
    with pytest.raises(MergeError, match=r"cannot add arrays of shapes \(3,\) and \(4,\)"):
        merge(np.zeros(3), np.zeros(4))
    with pytest.raises(MergeError, match="cannot merge Tally with Tally"):
        merge(Tally(1), object.__new__(Tally))  # the second has no .n: __add__ fails


def test_histograms_with_other_axes_do_not_merge():
    other = hist.Hist.new.Reg(10, -3, 3, name="x").Weight()
    with pytest.raises(MergeError, match=r"result\['h'\]: histograms differ: axis 0 \('x'\): "
                       r"Regular\(50, -3, 3, name='x'\) vs Regular\(10, -3, 3, name='x'\)"):
        merge({"h": _hist()}, {"h": other})


def test_merge_error_is_a_type_error_and_pickles():
    err = MergeError("result['a']", "cannot merge int with str")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, TypeError)
    assert (back.path, back.reason, str(back)) == (err.path, err.reason, str(err))
