"""coffea processors over coffea's NanoEvents in ``lab.analyze``, against coffea's own ``Runner``.

The kind of fault these tests guard against: *a processor written for coffea's Runner that
panda-lab runs differently*.  Its members, each tested here against coffea's
``processor.Runner`` with its ``IterativeExecutor`` on the same real NanoAOD files
(``../shared/data``, CMS Open Data: a TTree, and the same NanoAOD as an RNTuple written by
ROOT's RNTupleImporter):

* the events: NanoEvents with coffea's behaviours (``mu1 + mu2`` is a Lorentz vector,
  ``events.Jet.matched_muons`` a cross-reference), the accumulators equal bin for bin;
* ``events.metadata``: the dataset's name, file, tree, entry range and the fileset's metadata;
* ``postprocess``: once, on the merged result, and one that returns ``None`` (coffea's
  default, or an edit in place) keeps the result, as the ``Runner`` does;
* accumulator types: coffea's own (``dict_accumulator``, ``defaultdict_accumulator``,
  ``list_accumulator``, ``set_accumulator``, ``value_accumulator``, ``column_accumulator``)
  merge by coffea's ``+``, not by the builtin type they derive from (``list_accumulator``
  extends, where a plain list merges elementwise);
* plain lists and tuples from a coffea processor concatenate, as coffea's ``accumulate``
  does (panda-lab's own rule, elementwise, would sum two equal-length lists silently: a
  wrong number, no error), items of any type; on the pilot, on the server and in the
  final in-order merge alike;
* empty chunks: a chunk without entries gives the processor's output on no events, which
  merges as the identity;
* reading: a processor reads only the branches it touches (counted, not timed);
* without coffea, a coffea schema is refused with the command that installs it (a patched
  import stands in for a machine without coffea).
"""

from __future__ import annotations

import sys
from pathlib import Path

import awkward as ak
import hist
import numpy as np
import pytest
import uproot
from harness import ServerProcess

from panda_lab.analysis.accumulate import merge, merge_all, rules_for
from panda_lab.analysis.nanoevents import CoffeaMissing, NanoEventsSpec
from panda_lab.analysis.runner import postprocess, run_chunks

NANOAOD = "nanoAOD_2015_CMS_Open_Data_ttbar.root"
RNTUPLE = "cmsopendata2015_ttbar_NANOAOD_rntuple.root"  # ROOT's RNTupleImporter, 10 events
#: events per dataset of :func:`fileset`
EVENTS = {"TTbar": 200, "TTbarRNTuple": 10}

processor = pytest.importorskip("coffea.processor")
nanoevents = pytest.importorskip("coffea.nanoevents")


class DimuonProcessor(processor.ProcessorABC):
    """What a coffea user writes: vectors, a cross-reference, hists, coffea's accumulators."""

    def __init__(self) -> None:
        self.postprocessed: list[int] = []

    def process(self, events):
        ds = events.metadata["dataset"]
        muons = events.Muon
        two = muons[ak.num(muons) >= 2]
        dimuon = two[:, 0] + two[:, 1]  # coffea's PtEtaPhiMCandidate behaviour
        mass = hist.Hist.new.StrCat([], growth=True, name="dataset").Reg(
            60, 0, 300, name="mass").Double()
        mass.fill(dataset=ds, mass=ak.to_numpy(dimuon.mass))
        pt = hist.Hist.new.Reg(50, 0, 200, name="pt").Double()
        pt.fill(ak.to_numpy(ak.flatten(muons.pt)))
        matched = ak.num(events.Jet.matched_muons, axis=2)  # cross-reference Jet -> Muon
        n_matched = hist.Hist.new.Integer(0, 4, name="n").Int64()
        n_matched.fill(ak.to_numpy(ak.flatten(matched)))
        meta = events.metadata
        counts = processor.dict_accumulator({
            "events": processor.defaultdict_accumulator(int),
            "muons": processor.value_accumulator(int),
        })
        counts["events"][ds] += len(events)
        counts["muons"] += int(ak.sum(ak.num(muons)))
        return {
            "mass": mass, "pt": pt, "n_matched": n_matched, "counts": counts,
            "sum_pt": float(ak.sum(muons.pt)), "n_mu": int(ak.sum(ak.num(muons))),
            "files": processor.set_accumulator({(ds, meta["filename"], meta["treename"],
                                                 meta["xsec"], meta["fileuuid"])}),
            "ranges": processor.set_accumulator({(ds, meta["entrystart"], meta["entrystop"])}),
            "leading_pt": processor.column_accumulator(
                ak.to_numpy(ak.fill_none(ak.firsts(muons.pt), -1.0))),
            # plain containers: coffea concatenates them (strings and all)
            "chunks": [(ds, int(meta["entrystart"]), int(meta["entrystop"]))],
            "sizes": (len(events),),
        }

    def postprocess(self, accumulator):
        self.postprocessed.append(accumulator["n_mu"])
        accumulator["mean_pt"] = accumulator["sum_pt"] / accumulator["n_mu"]  # in place


@pytest.fixture(scope="module")
def nanoaod(shared_data):
    """The real NanoAOD as a TTree, and the same NanoAOD as an RNTuple: two datasets."""
    return (shared_data / NANOAOD).resolve(), (shared_data / RNTUPLE).resolve()


@pytest.fixture(scope="module")
def fileset(nanoaod):
    a, rntuple = nanoaod
    return {"TTbar": {"files": {str(a): "Events"}, "metadata": {"xsec": 831.76}},
            "TTbarRNTuple": {"files": {str(rntuple): "Events"}, "metadata": {"xsec": 2.0}}}


@pytest.fixture(scope="module")
def coffea_out(fileset):
    """coffea's own Runner, IterativeExecutor, on the same fileset (one chunk a file)."""
    proc = DimuonProcessor()
    run = processor.Runner(executor=processor.IterativeExecutor(), chunksize=200,
                           schema=nanoevents.NanoAODSchema)
    out = run(fileset, processor_instance=proc)
    assert proc.postprocessed == [out["n_mu"]]
    return out


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = ServerProcess(tmp_path_factory.mktemp("home")).start()
    yield s
    s.stop()


def assert_same(ours: dict, theirs: dict) -> None:
    """Every accumulator equal, bin for bin; row orders (chunks) compared as sets."""
    assert set(ours) == set(theirs)
    for ds in EVENTS:
        assert np.array_equal(ours["mass"][{"dataset": ds}].values(flow=True),
                              theirs["mass"][{"dataset": ds}].values(flow=True))
    for key in ("pt", "n_matched"):
        assert np.array_equal(ours[key].values(flow=True), theirs[key].values(flow=True))
    assert ours["counts"]["events"] == theirs["counts"]["events"] == EVENTS
    assert ours["counts"]["muons"].value == theirs["counts"]["muons"].value
    assert ours["n_mu"] == theirs["n_mu"] and ours["files"] == theirs["files"]
    assert ours["sum_pt"] == pytest.approx(theirs["sum_pt"], rel=1e-12)
    assert ours["mean_pt"] == pytest.approx(theirs["mean_pt"], rel=1e-12)
    assert sorted(ours["leading_pt"].value) == sorted(theirs["leading_pt"].value)
    # concatenated, one item per chunk (coffea's chunks and ours differ in size)
    assert type(ours["chunks"]) is list and type(ours["sizes"]) is tuple
    assert sum(ours["sizes"]) == sum(theirs["sizes"]) == sum(EVENTS.values())
    assert {ds for ds, _, _ in ours["chunks"]} == {ds for ds, _, _ in theirs["chunks"]}
    for name in ("counts", "files", "ranges", "leading_pt"):  # coffea's types kept
        assert type(ours[name]) is type(theirs[name])
    assert type(ours["counts"]["events"]) is processor.defaultdict_accumulator


@pytest.mark.slow  # a server, pilots importing coffea, and an RNTuple of 1,313 fields
def test_analyze_equals_coffea_runner(srv, fileset, coffea_out, nanoaod):
    assert coffea_out["mass"].sum() > 0 and coffea_out["n_matched"][1:].sum() > 0
    lab = srv.lab()
    try:
        proc = DimuonProcessor()
        task = lab.analyze(proc, fileset, schema=nanoevents.NanoAODSchema, events_per_job=100,
                           name="coffea-dimuon")
        ours = task.result(timeout=120)
        report = task.report()
    finally:
        lab.close()
    assert_same(ours, coffea_out)
    assert proc.postprocessed == [ours["n_mu"]]  # once, on the merged result, in the client
    assert set(report["status"]) == {"done"}
    # events.metadata: each dataset's file and metadata, each job's own entry range
    assert ours["files"] == {(ds, str(path), "Events", entry["metadata"]["xsec"], uuid_of(path))
                             for path, (ds, entry) in zip(nanoaod, fileset.items(), strict=True)}
    ranges = {(r.file_index, r.start, r.stop) for r in report.itertuples()}
    assert set(ours["ranges"]) == {(list(EVENTS)[i], a, b) for i, a, b in ranges}
    assert {r.stop for r in report.itertuples()} == {200, 10}


def uuid_of(path) -> str:
    with uproot.open(path) as f:
        return str(f.file.uuid)


def spec_for(fileset: dict) -> NanoEventsSpec:
    return NanoEventsSpec("NanoAODSchema", per_file={
        k: {"dataset": ds, **entry["metadata"]} for k, (ds, entry) in enumerate(fileset.items())})


def chunk(path, start: int, stop: int, file_index: int = 0) -> dict:
    return {"file_index": file_index, "path": str(path), "tree": "Events", "start": start,
            "stop": stop}


def test_empty_chunk_is_the_identity(fileset, nanoaod, coffea_out):
    """coffea's Runner never calls ``process`` on no events; a dataset without entries here
    does, and the output must merge as nothing."""
    proc = DimuonProcessor()
    empty = run_chunks(proc, None, [chunk(nanoaod[0], 0, 0)], nanoevents=spec_for(fileset))
    assert empty.events == 0 and empty.result["n_mu"] == 0 and empty.result["mass"].sum() == 0
    assert len(empty.result["leading_pt"].value) == 0
    assert empty.result["counts"]["events"] == {"TTbar": 0}
    theirs = {k: v for k, v in coffea_out.items() if k != "mean_pt"}  # before postprocess
    merged = postprocess(proc, merge(empty.result, theirs, rules=rules_for(proc)))
    assert_same(merged, coffea_out)
    assert proc.postprocessed == [coffea_out["n_mu"]]


def test_reads_only_the_branches_touched(monkeypatch, fileset, nanoaod):
    """Every basket uproot reads is counted by branch, however it is asked for (one branch,
    or coffea's preload of what the worker's earlier chunks touched)."""
    from uproot.behaviors import TBranch

    read: list[str] = []
    real = TBranch._ranges_or_baskets_to_arrays

    def counting(hasbranches, ranges_or_baskets, *args, **kwargs):
        read.extend(branch.name for branch, _, _ in ranges_or_baskets)
        return real(hasbranches, ranges_or_baskets, *args, **kwargs)

    monkeypatch.setattr(TBranch, "_ranges_or_baskets_to_arrays", counting)
    spec = spec_for(fileset)

    def met(events):
        return {"met": hist.Hist.new.Reg(20, 0, 200).Double().fill(ak.to_numpy(events.MET.pt))}

    out = run_chunks(met, None, [chunk(nanoaod[0], 0, 100), chunk(nanoaod[0], 100, 200)],
                     nanoevents=spec)
    assert set(read) == {"MET_pt"} and out.result["met"].sum(flow=True) == 200
    with uproot.open(nanoaod[0]) as f:
        assert len(f["Events"].keys()) == 947  # of which one was read

    read.clear()  # columns= are read up front, whatever the processor touches
    run_chunks(lambda ev: {"n": int(ak.sum(ak.num(ev.Muon)))}, ["Electron.pt", "nJet"],
               [chunk(nanoaod[0], 0, 200)], nanoevents=spec)
    assert set(read) == {"nMuon", "Electron_pt", "nJet"}  # counting muons reads the counter


def test_a_branch_failing_mid_process_is_bad_input(monkeypatch, fileset, nanoaod):
    """A read that fails inside the processor (a stand-in: uproot's basket reader made to
    fail for one branch) is a DataError naming the chunk; the processor's own bug is not."""
    from uproot.behaviors import TBranch

    from panda_lab.analysis.errors import DataError

    real = TBranch._ranges_or_baskets_to_arrays

    def failing(hasbranches, ranges_or_baskets, *args, **kwargs):
        if any(branch.name == "Muon_eta" for branch, _, _ in ranges_or_baskets):
            raise OSError("basket checksum mismatch")
        return real(hasbranches, ranges_or_baskets, *args, **kwargs)

    monkeypatch.setattr(TBranch, "_ranges_or_baskets_to_arrays", failing)
    spec = spec_for(fileset)
    with pytest.raises(DataError, match="basket checksum mismatch") as err:
        run_chunks(lambda ev: {"eta": float(ak.sum(ev.Muon.eta))}, None,
                   [chunk(nanoaod[0], 0, 200)], nanoevents=spec)
    assert (err.value.file, err.value.entry_start, err.value.entry_stop) == \
        (str(nanoaod[0]), 0, 200)
    with pytest.raises(ZeroDivisionError):
        run_chunks(lambda ev: {"pt": float(ak.sum(ev.Muon.pt)) / 0}, None,
                   [chunk(nanoaod[0], 0, 200)], nanoevents=spec)


def test_coffea_accumulators_merge_by_coffeas_rules():
    """Each of coffea's types merged here as ``coffea.processor.accumulate`` merges it, not
    as the ``list`` / ``set`` / ``dict`` it derives from."""
    pairs = [
        (processor.list_accumulator([1, 2]), processor.list_accumulator([3])),
        (processor.set_accumulator({1}), processor.set_accumulator({2})),
        (processor.value_accumulator(float, 1.5), processor.value_accumulator(float, 2.0)),
        (processor.column_accumulator(np.arange(3.0)), processor.column_accumulator(np.ones(2))),
        (processor.defaultdict_accumulator(int, {"a": 1}),
         processor.defaultdict_accumulator(int, {"a": 2, "b": 3})),
        (processor.dict_accumulator({"n": processor.value_accumulator(int, 1)}),
         processor.dict_accumulator({"n": processor.value_accumulator(int, 4)})),
    ]
    for a, b in pairs:
        ours, theirs = merge(a, b), processor.accumulate([a, b])
        assert type(ours) is type(a)  # coffea's list_accumulator + gives a list: see below
        value = getattr(theirs, "value", theirs)
        if isinstance(value, np.ndarray):
            assert np.array_equal(ours.value, value)
        elif isinstance(value, dict):
            assert {k: getattr(v, "value", v) for k, v in ours.items()} == \
                {k: getattr(v, "value", v) for k, v in value.items()}
        else:
            assert getattr(ours, "value", ours) == value
    assert merge(*pairs[0]) == [1, 2, 3]  # extended, not added elementwise
    # coffea's own list_accumulator turns into a plain list after one ``+`` (coffea's Runner
    # then fails on a third chunk); here it stays a list_accumulator, in chunk order
    many = merge_all(processor.list_accumulator([k]) for k in range(5))
    assert type(many) is processor.list_accumulator and many == [0, 1, 2, 3, 4]


def test_plain_containers_merge_as_coffea_merges_them_for_a_coffea_processor():
    from panda_lab.analysis.accumulate import COFFEA

    pairs = [([1, 2], [3, 4]), ((1, 2), (3,)), ({"a": [1, 2]}, {"a": [3, 4], "b": ["x"]}),
             (["run 1"], ["run 2"]), ({"n": 1, "ids": [(1, 7)]}, {"n": 2, "ids": [(1, 9)]})]
    for a, b in pairs:
        assert merge(a, b, rules=COFFEA) == processor.accumulate([a, b]), (a, b)
    assert merge_all([[k] for k in range(5)], rules=COFFEA) == [0, 1, 2, 3, 4]
    assert merge([1, 2], [3, 4]) == [4, 6]  # panda-lab's own rule, for its own processors
    with pytest.raises(TypeError, match="cannot concatenate list with tuple"):
        merge([1], (2,), rules=COFFEA)
    with pytest.raises(ValueError, match="rules must be one of"):
        merge_all([[1]], rules="hadd")
    assert rules_for(DimuonProcessor()) == COFFEA
    assert rules_for(lambda events: {}) == "panda-lab"


def test_a_coffea_processors_job_concatenates_its_chunks_lists(nanoaod):
    """On the pilot: a job of two chunks of one coffea processor."""

    class Ids(processor.ProcessorABC):
        def process(self, events):
            return {"ranges": [(events.metadata["entrystart"], events.metadata["entrystop"])],
                    "n": [len(events)]}

        def postprocess(self, accumulator):
            return accumulator

    a, _ = nanoaod
    spec = NanoEventsSpec("NanoAODSchema", per_file={0: {"dataset": "TTbar"}})
    out = run_chunks(Ids(), None, [chunk(a, 0, 100), chunk(a, 100, 200)], nanoevents=spec)
    assert out.result == {"ranges": [(0, 100), (100, 200)], "n": [100, 100]}


def test_postprocess_returning_none_keeps_the_result():
    """``ProcessorABC.postprocess`` returns ``None``: the Runner keeps the (edited) result."""

    class Edits(processor.ProcessorABC):
        def process(self, events):
            return {}

        def postprocess(self, accumulator):
            accumulator["edited"] = True

    class Default(processor.ProcessorABC):
        def process(self, events):
            return {}

    assert postprocess(Edits(), {"n": 3}) == {"n": 3, "edited": True}
    assert postprocess(Default(), {"n": 3}) == {"n": 3}


def test_metadata_of_a_registered_dataset(nanoaod):
    seen = []
    spec = NanoEventsSpec("NanoAOD", dataset="ttbar")
    run_chunks(lambda ev: seen.append(dict(ev.metadata)) or {"n": len(ev)}, None,
               [chunk(nanoaod[0], 20, 70)], nanoevents=spec)
    assert seen[0]["dataset"] == "ttbar" and seen[0]["filename"] == str(nanoaod[0])
    assert (seen[0]["treename"], seen[0]["entrystart"], seen[0]["entrystop"]) == \
        ("Events", 20, 70)


def test_without_coffea_the_error_says_how_to_install(monkeypatch, nanoaod):
    """Stand-in for a machine without coffea: its modules made unimportable."""
    from panda_lab.analysis.events import read_chunk
    from panda_lab.client.analysis import analyze
    from panda_lab.model.splitter import Chunk

    for name in [m for m in sys.modules if m == "coffea" or m.startswith("coffea.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install 'panda-lab\[coffea\]'"):
        analyze(None, lambda ev: {}, "ds", schema="NanoAODSchema")  # refused before any call
    with pytest.raises(CoffeaMissing, match=r"pip install 'panda-lab\[coffea\]'"):
        run_chunks(lambda ev: {}, None, [chunk(nanoaod[0], 0, 10)],
                   nanoevents=NanoEventsSpec("NanoAODSchema"))
    # panda-lab's own events keep working
    events = read_chunk(Chunk(0, str(nanoaod[0]), "Events", 0, 10), ["Muon.pt"])
    assert len(events) == 10 and events.Muon.pt.ndim == 2
    out = run_chunks(lambda ev: {"n": len(ev)}, ["nMuon"], [chunk(nanoaod[0], 0, 10)])
    assert out.result["n"] == 10


def test_fileset_forms_as_coffea_reads_them(tmp_path):
    """Every form coffea's Runner accepts, and its refusals, named by dataset and key."""
    from panda_lab.client.fileset import normalize_fileset

    a, b = str(tmp_path / "a.root"), "root://eos.example//b.root"
    forms = normalize_fileset({
        "Plain": [a], "Named": {"files": [a], "treename": "Other"},
        "PerFile": {"files": {a: "T1", b: "T2"}, "metadata": {"xsec": 3.0}},
    }, treename="Events")
    assert [(f.dataset, f.path, f.tree, f.metadata) for f in forms] == [
        ("Plain", a, "Events", {}), ("Named", a, "Other", {}),
        ("PerFile", a, "T1", {"xsec": 3.0}), ("PerFile", b, "T2", {"xsec": 3.0})]
    assert normalize_fileset({"Rel": {"files": {"x.root": "Events"}}})[0].path == \
        str(Path("x.root").resolve())  # local paths made absolute, for the pilots
    refusals = [
        ({"DY": [a]}, "fileset\\['DY'\\]: no tree for"),
        ({"DY": {"files": {a: "Events"}, "metadata": {"dataset": "x"}}},
         "fileset\\['DY'\\]\\['metadata'\\]: 'dataset' is set by coffea"),
        ({"DY": {"files": {}}}, "fileset\\['DY'\\]: no files"),
        ({"DY": {"paths": [a]}}, "fileset\\['DY'\\]: no 'files' key"),
        ({"DY": "a.root"}, "fileset\\['DY'\\]: files must be a list or a mapping"),
        ({}, "fileset: no datasets"),
    ]
    for fileset, message in refusals:
        with pytest.raises(ValueError, match=message):
            normalize_fileset(fileset)


def test_schema_names_and_refusals(fileset):
    from panda_lab.analysis.nanoevents import resolve_schema, schema_ref
    from panda_lab.client.analysis import analyze

    nano = nanoevents.NanoAODSchema
    assert resolve_schema("NanoAOD") is resolve_schema("NanoAODSchema") is nano
    assert resolve_schema(schema_ref(nano)) is nano  # what a job carries: a name
    assert resolve_schema("coffea.nanoevents.PFNanoAODSchema") is nanoevents.PFNanoAODSchema
    with pytest.raises(ValueError, match=r"'NanoAODv99' is no coffea schema; coffea has .*"
                                         r"NanoAODSchema"):
        resolve_schema("NanoAODv99")
    with pytest.raises(TypeError, match="schema must be a coffea schema class"):
        resolve_schema(dict)
    with pytest.raises(ValueError, match="a coffea fileset needs a coffea schema"):
        analyze(None, DimuonProcessor(), fileset)  # refused before any call to the server
