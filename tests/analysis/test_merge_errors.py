"""Results that cannot be merged: said at once, where and why, never blamed on the data.

The kind: every way accumulating the chunks' results into a task's result can fail, and the
ways that look like failures but are the accumulator rules (coffea's ``accumulate``: ``None``
is the identity, a key missing on one side takes the other's value).  Members tested:

* histograms that differ: bins, edges, axis type, axis name, storage, flow bins (which
  boost-histogram would add into garbage), dimension; growing category axes still merge
  (``test_histogram_differences_are_named``, ``test_growing_categories_still_merge``);
* a type mismatch under one key: histogram with number, dict with number, set with list
  (``test_type_mismatch_under_a_key_names_both_types``);
* arrays that cannot be merged: numpy arrays of other shapes or dimensions, awkward arrays that
  would only concatenate into a union (other dimension, other dtype kind, other record fields);
  numeric promotion still concatenates (``test_arrays_that_cannot_be_merged``);
* a result that is not an accumulator: ``str``, ``bool``, an object without ``+``, refused even
  as the first or only result (``test_non_accumulators_are_refused_even_alone``);
* mappings of unrelated types refused, related ones keep the more derived type; sets union
  (``test_mapping_and_set_rules_follow_coffea``);
* missing keys and ``None`` are the identity (``test_missing_keys_and_none_are_the_identity``);
* a conflict deep in nested dicts names the full key path
  (``test_a_deep_conflict_names_the_full_key_path``);
* the error pickles and travels as JSON with its context (``test_merge_error_travels``).

Through a real server and pilots (``test_*_through_the_server``): the issue's example (10 bins for
one file, 20 for another, nested under ``mass/hist``) fails the task at once with a
:class:`MergeError` naming the job, the file and entry range, the key path and the bins, on the
event stream, in ``result()``, ``report()``, ``partial()`` and the monitor's snapshot; a type
mismatch under a key; a result that does not unpickle on the server; a processor returning a
``str`` (refused on the pilot, category ``merge``); a job of two files whose own chunks disagree
(merged on the pilot); and missing keys with ``None`` chunks, which merge.  An analysis ends
only once its results are merged, also after a ``retry`` (``test_a_retried_analysis_...``).
"""

from __future__ import annotations

import collections
import pickle
import threading
import time

import awkward as ak
import hist
import numpy as np
import pytest
from harness import ServerProcess

from panda_lab.analysis.accumulate import MergeError, merge, merge_all
from panda_lab.analysis.sample import make_sample
from panda_lab.client.analysis import IncompleteResult
from panda_lab.widgets.snapshot import take

R = hist.axis.Regular


def _h(*axes, storage=None) -> hist.Hist:
    return hist.Hist(*axes, storage=storage or hist.storage.Double())


# ---- the rules, without a server ------------------------------------------------------


@pytest.mark.parametrize(("left", "right", "said"), [
    (_h(R(10, 0, 150, name="mass")), _h(R(20, 0, 150, name="mass")),
     "axis 0 ('mass'): Regular(10, 0, 150, name='mass') vs Regular(20, 0, 150, name='mass')"),
    (_h(R(10, 0, 150, name="mass")), _h(R(10, 0, 120, name="mass")),
     "Regular(10, 0, 150, name='mass') vs Regular(10, 0, 120, name='mass')"),
    (_h(R(2, 0, 2, name="x")), _h(hist.axis.Variable([0, 1, 2], name="x")),
     "Regular(2, 0, 2, name='x') vs Variable([0, 1, 2], name='x')"),
    (_h(R(4, 0, 1, name="x")), _h(R(4, 0, 1, name="y")),
     "axis 0 ('x'): Regular(4, 0, 1, name='x') vs Regular(4, 0, 1, name='y')"),
    (_h(R(4, 0, 1)), _h(R(4, 0, 1), storage=hist.storage.Weight()), "storage Double vs Weight"),
    (_h(R(4, 0, 1)), _h(R(4, 0, 1, underflow=False)), "underflow=False"),
    (_h(R(4, 0, 1)), _h(R(4, 0, 1), R(2, 0, 1)), "1 axes vs 2 axes"),
])
def test_histogram_differences_are_named(left, right, said):
    with pytest.raises(MergeError) as err:
        merge({"h": left}, {"h": right})
    assert err.value.path == "result['h']"
    assert err.value.reason.startswith("histograms differ: ")
    assert said in err.value.reason


def test_flow_bins_that_differ_are_refused_not_added_into_garbage():
    a, b = _h(R(4, 0, 1)), _h(R(4, 0, 1, underflow=False))
    a.fill([-1.0, 0.5])
    b.fill([-1.0, 0.5])
    with pytest.raises(MergeError, match="underflow"):
        merge(a, b)


def test_growing_categories_still_merge():
    cat = hist.axis.StrCategory([], growth=True, name="dataset")
    a = hist.Hist(cat, R(4, 0, 1, name="x")).fill(dataset="a", x=[0.1])
    b = hist.Hist(hist.axis.StrCategory([], growth=True, name="dataset"), R(4, 0, 1, name="x"))
    b.fill(dataset="b", x=[0.2, 0.3])
    out = merge(a, b)
    assert list(out.axes[0]) == ["a", "b"] and out.sum() == 3


def test_type_mismatch_under_a_key_names_both_types():
    with pytest.raises(MergeError, match=r"^result\['n'\]: cannot merge Hist with int$"):
        merge({"n": _h(R(2, 0, 1))}, {"n": 5})
    with pytest.raises(MergeError, match=r"^result\['cuts'\]: cannot merge dict with int$"):
        merge({"cuts": {"pt": 1}}, {"cuts": 3})
    with pytest.raises(MergeError, match=r"^result\['ids'\]: cannot merge set with list$"):
        merge({"ids": {1}}, {"ids": [2]})


def test_arrays_that_cannot_be_merged():
    with pytest.raises(MergeError, match=r"cannot add arrays of shapes \(3,\) and \(3, 2\)"):
        merge(np.zeros(3), np.zeros((3, 2)))
    with pytest.raises(MergeError, match="types int64 vs var \\* int64 concatenate only into a"):
        merge({"pt": ak.Array([1, 2])}, {"pt": ak.Array([[1], [2]])})
    with pytest.raises(MergeError, match="types int64 vs string"):
        merge(ak.Array([1]), ak.Array(["a"]))
    with pytest.raises(MergeError, match=r"types \{x: int64\} vs \{y: int64\}"):
        merge(ak.Array([{"x": 1}]), ak.Array([{"y": 1}]))
    promoted = merge(ak.Array([1, 2]), ak.Array([0.5]))        # like numpy: int then float
    assert ak.to_list(promoted) == [1.0, 2.0, 0.5]
    assert ak.to_list(merge(ak.Array([[1]]), ak.Array([[None, 2]]))) == [[1], [None, 2]]


class NoPlus:
    pass


@pytest.mark.parametrize(("value", "name"), [("done", "str"), (True, "bool"),
                                             (NoPlus(), "NoPlus")])
def test_non_accumulators_are_refused_even_alone(value, name):
    said = f"{name} is not an accumulator"
    with pytest.raises(MergeError, match=said):
        merge(None, value)                              # the first result of a task
    with pytest.raises(MergeError, match=said):
        merge_all([value])                              # the only one
    with pytest.raises(MergeError, match=rf"^result\['x'\]\[1\]: {said}"):
        merge_all([None, {"x": [1, value]}])


def test_mapping_and_set_rules_follow_coffea():
    with pytest.raises(MergeError, match="mappings of unrelated types: Counter vs OrderedDict"):
        merge(collections.Counter(a=1), collections.OrderedDict(a=1))
    out = merge({"a": 1}, collections.defaultdict(int, a=2, b=1))
    assert isinstance(out, collections.defaultdict) and out == {"a": 3, "b": 1}
    counts = merge({"a": _h(R(2, 0, 1)).fill([0.1])}, collections.Counter())
    assert isinstance(counts, collections.Counter) and counts["a"].sum() == 1
    assert merge({1, 2}, {2, 3}) == {1, 2, 3}


def test_missing_keys_and_none_are_the_identity():
    h = _h(R(4, 0, 1)).fill([0.1])
    out = merge_all([{"a": 1, "m": {"h": h}}, None, {"b": 2}, {"m": {"n": 3}}, None])
    assert out["a"] == 1 and out["b"] == 2 and out["m"]["n"] == 3 and out["m"]["h"] == h
    assert merge_all([None, None]) is None


def test_a_deep_conflict_names_the_full_key_path():
    a = {"mass": {"hist": _h(R(10, 0, 150)), "n": 1}, "pt": {"n": 1}}
    b = {"mass": {"hist": _h(R(20, 0, 150)), "n": 2}}
    with pytest.raises(MergeError) as err:
        merge_all([a, b])
    assert err.value.path == "result['mass']['hist']"
    assert "Regular(10, 0, 150" in err.value.reason and "Regular(20, 0, 150" in err.value.reason


def test_merge_error_travels():
    chunk = {"file_index": 1, "path": "/d/f1.root", "tree": "Events", "start": 0, "stop": 1000}
    err = MergeError("result['mass']", "histograms differ: bins", task=7, job_index=1,
                     chunks=[chunk], merged_jobs=[0])
    text = ("task 7: the result of job 1 (/d/f1.root entries 0-1000) cannot be merged into "
            "the merged result of job 0: result['mass']: histograms differ: bins")
    assert str(err) == text
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, TypeError) and str(back) == text and back.chunks == err.chunks
    assert str(MergeError.from_dict(err.to_dict())) == text
    assert err.to_dict()["message"] == text
    plain = MergeError("result", "cannot merge int with str")
    assert str(plain) == "result: cannot merge int with str"


# ---- through a real server ---------------------------------------------------------------

EVENTS = 1000


def _file_of(events) -> int:
    """The generated files have runs 1000 + file index."""
    return int(events.run[0]) - 1000


def bins_by_file(events):
    """The issue's processor: 10 bins for the first file, 20 for the second."""
    bins = 10 if _file_of(events) == 0 else 20
    h = hist.Hist(hist.axis.Regular(bins, 0, 150, name="mass")).fill(np.asarray(events.nMuon))
    return {"mass": {"hist": h}, "n": len(events)}


def hist_or_number(events):
    n = len(events)
    return {"n": hist.Hist(hist.axis.Regular(2, 0, 1)).fill([0.5] * n) if _file_of(events) == 0
            else n}


def _refuse_here():
    raise ImportError("no module named 'lab_only_package'")


class OnlyOnThePilot:
    """Unpickles only where its package is: not on the server."""

    def __add__(self, other):
        return self

    def __reduce__(self):
        return (_refuse_here, ())


def unpicklable(events):
    return {"n": len(events), "x": OnlyOnThePilot()}


def says_done(events):
    return "done"


def keys_and_nones(events):
    if _file_of(events) == 0:
        return {"a": len(events), "nested": {"x": 1}}
    if int(events.event[0]) > 1:
        return None
    return {"b": len(events), "nested": {"y": 2}}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_sample(tmp_path_factory.mktemp("merge"), files=2, events=EVENTS,
                       basket_events=250)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = ServerProcess(tmp_path_factory.mktemp("home")).start()
    yield s
    s.stop()


@pytest.fixture
def mlab(srv, files):
    lab = srv.lab()
    lab.datasets.register("two", [str(p) for p in files], replace=True)
    yield lab
    lab.close()


def _listen(lab, seen: list[dict], stop: threading.Event) -> threading.Thread:
    def run():
        for msg in lab.api.events(ping=0.2):
            if "merge_error" in msg:
                seen.append(msg["merge_error"])
            if stop.is_set():
                return

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(0.3)  # subscribed before the task exists
    return t


def _failed_with(task, expected: type[BaseException] = MergeError) -> MergeError:
    t0 = time.monotonic()
    with pytest.raises(expected) as err:
        task.result(timeout=60)
    # at once: the client used to wait 30 s for a merge that never came
    assert time.monotonic() - t0 < 20
    assert not isinstance(err.value, IncompleteResult)
    return err.value


def test_different_bins_through_the_server(mlab, files):
    seen: list[dict] = []
    stop = threading.Event()
    listener = _listen(mlab, seen, stop)
    task = mlab.analyze(bins_by_file, "two", events_per_job=EVENTS, name="bins")
    err = _failed_with(task)
    stop.set()
    listener.join(5)

    assert err.task == task.id and err.job_index in (0, 1)
    assert err.path == "result['mass']['hist']"
    assert "Regular(10, 0, 150, name='mass')" in err.reason
    assert "Regular(20, 0, 150, name='mass')" in err.reason
    (chunk,) = err.chunks                       # the job's input: which file, which entries
    assert chunk["path"] == str(files[err.job_index]) and (chunk["start"], chunk["stop"]) == (
        0, EVENTS)
    assert err.merged_jobs == [1 - err.job_index]
    assert f"{files[err.job_index]} entries 0-{EVENTS}" in str(err)

    info = task.info()
    assert info["state"] == "failed" and info["message"] == str(err)
    rep = err.report
    assert set(rep["status"]) == {"merge failed", "done"}
    bad = rep[rep["status"] == "merge failed"].iloc[0]
    assert bad["job_index"] == err.job_index and bad["error"] == str(err)
    assert bad["error_category"] == "merge" and not bad["merged"]
    p = task.partial()
    assert p.final and p.merge_error["message"] == str(err) and p.jobs_merged == 1
    snap = take(mlab, task.id)
    assert snap.final and snap.errors[0].category == "merge"
    assert snap.errors[0].message == str(err)
    assert [e["message"] for e in seen if e["task"] == task.id] == [str(err)]


def test_a_type_mismatch_through_the_server(mlab):
    task = mlab.analyze(hist_or_number, "two", events_per_job=EVENTS, name="mismatch")
    err = _failed_with(task)
    assert err.path == "result['n']"
    assert err.reason in ("cannot merge Hist with int", "cannot merge int with Hist")


def test_a_result_that_does_not_unpickle_on_the_server(mlab, files):
    task = mlab.analyze(unpicklable, "two", events_per_job=EVENTS, name="unpickle")
    err = _failed_with(task)
    assert err.path == "result"
    assert err.reason == ("cannot be unpickled on the server: ImportError: no module named "
                          "'lab_only_package'")
    assert err.merged_jobs == [] and err.chunks[0]["path"] in {str(f) for f in files}
    assert task.info()["state"] == "failed"


def test_a_non_accumulator_is_refused_on_the_pilot(mlab, files):
    task = mlab.analyze(says_done, "two", events_per_job=EVENTS, name="str")
    err = _failed_with(task)
    assert err.path == "result" and "str is not an accumulator" in err.reason
    assert err.task == task.id and err.chunks[0]["path"] == str(files[err.job_index])
    rep = err.report
    assert "merge failed" in set(rep["status"])
    assert set(rep[rep["status"] == "merge failed"]["attempts"]) == {1}   # never retried
    assert task.info()["state"] == "failed"


def test_two_files_of_one_job_that_disagree_through_the_server(mlab, files):
    task = mlab.analyze(bins_by_file, "two", files_per_job=2, name="one-job")
    err = _failed_with(task)
    assert err.job_index == 0 and err.path == "result['mass']['hist']"
    assert [c["path"] for c in err.chunks] == [str(files[1])]
    assert [c["path"] for c in err.merged_chunks] == [str(files[0])]
    assert "Regular(10, 0, 150" in err.reason and "Regular(20, 0, 150" in err.reason


def test_missing_keys_and_none_merge_through_the_server(mlab):
    task = mlab.analyze(keys_and_nones, "two", events_per_job=250, name="keys",
                        columns=["run", "event"])
    result = task.result(timeout=60)
    assert result == {"a": EVENTS, "b": 250, "nested": {"x": 4, "y": 2}}
    assert task.info()["state"] == "done"
    assert set(task.report()["status"]) == {"done"}


def fails_once_on_file_1(marker, events):
    from pathlib import Path

    if _file_of(events) == 1 and not Path(marker).exists():
        Path(marker).touch()
        raise RuntimeError("a passing glitch")
    return {"n": len(events)}


def test_a_retried_analysis_ends_once_its_new_results_are_merged(mlab, tmp_path):
    from functools import partial

    task = mlab.analyze(partial(fails_once_on_file_1, str(tmp_path / "m")), "two",
                        events_per_job=EVENTS, name="retry", retries=0, columns=["run"])
    with pytest.raises(IncompleteResult, match=f"{EVENTS:,} of {2 * EVENTS:,} events not "
                                               r"processed \(1 chunks: failed\)"):
        task.result(timeout=60)
    assert task.info()["state"] == "finished"
    task.retry()
    mlab.wait(task.id, timeout=60)
    p = task.partial()              # "done" comes with its result merged, not after it
    assert task.info()["state"] == "done" and p.final and p.events == 2 * EVENTS
    assert task.result(timeout=10) == {"n": 2 * EVENTS}
