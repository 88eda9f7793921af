"""RNTuple input, read wherever a TTree is, with the numbers uproot reads directly.

The kind: an input format that the reading code assumes is a TTree (it refused RNTuples with
"'Events' is a ROOT::RNTuple, not a TTree").  Its members are every place that reads a file,
each tested here on RNTuples and compared with reading the same files with uproot itself:

* inspection at registration: entries, size, cluster boundaries, column names
  (``test_inspection_gives_uproots_entries_size_and_cluster_boundaries``; an empty one:
  ``test_the_sample_writes_either_format_and_nothing_else``);
* the splitter's cuts, on cluster boundaries, and the merged result
  (``test_chunks_cut_on_clusters_merge_to_what_uproot_reads``);
* column discovery (``test_column_discovery_finds_the_fields_a_processor_reads``);
* eager and lazy reads, every field (``test_eager_and_lazy_reads_equal_uproot_field_by_field``);
* jagged collections, stored as records or as NanoAOD's ``Muon_*`` with ``nMuon``
  (``test_jagged_collections_are_records_with_their_counter``);
* registration and jobs on pilots, and the report
  (``test_an_analysis_of_rntuples_on_the_pilots_and_its_report``,
  ``test_rntuples_written_by_root_analysed_on_the_pilots``);
* HTTP and a replica taken when the first fails (``test_rntuples_over_http_and_from_a_replica``);
* XRootD (``test_rntuples_over_xrootd``);
* the Dask way (``uproot.dask``): its graphs carry open RNTuples, which must travel in a
  payload (``test_an_open_rntuple_travels_in_a_job_payload``); the graph computed through
  panda-lab is in ``test_dask_way.py``, which runs in its own environment.

The files: RNTuples written by uproot's default writer (``f["Events"] = {...}``, the sample's
``format="rntuple"``: a ``Muon`` collection of records, several clusters), and the RNTuples
written by ROOT in ``../shared/data`` (CMS Open Data muons; a NanoAOD converted by ROOT's
RNTupleImporter, whose ``Muon_pt`` and ``nMuon`` are projections of ``_collectionN``).
"""

from __future__ import annotations

import itertools
import os

import analysis_helpers
import awkward as ak
import hist
import numpy as np
import pytest
import uproot
from analysis_helpers import (
    SAMPLE_BASKET,
    SAMPLE_EVENTS,
    SAMPLE_FILES,
    process,
    reference,
    split_events,
)
from harness import RangeFileServer

from panda_lab.analysis.accumulate import merge_all
from panda_lab.analysis.events import _open_tree, discover_columns, read_chunk
from panda_lab.analysis.files import inspect_file
from panda_lab.analysis.lazy import LazyReader
from panda_lab.analysis.sample import make_sample
from panda_lab.model.splitter import Chunk
from panda_lab.payload import dumps_call

MUONS = "Run2012BC_DoubleMuParked_Muons_1000evts_rntuple.root"
NANOAOD = "cmsopendata2015_ttbar_NANOAOD_rntuple.root"
MUON_FIELDS = ("pt", "eta", "phi", "mass", "charge")


@pytest.fixture(scope="module")
def rntuples(tmp_path_factory):
    """The test sample as RNTuples: the same events as conftest's ``sample_files`` (TTrees)."""
    return make_sample(tmp_path_factory.mktemp("rntuple"), files=SAMPLE_FILES,
                       events=SAMPLE_EVENTS, basket_events=SAMPLE_BASKET, format="rntuple")


@pytest.fixture(scope="module")
def direct(shared_data, rntuples) -> dict:
    """What uproot alone reads of each file, opened once (uproot parses the field tree of the
    1,313-field NanoAOD in seconds): ``path -> {entries, size, keys, clusters, arrays}``, the
    arrays over the entry range each file is read over below."""
    ranges = {rntuples[1]: (3_000, 9_000), shared_data / MUONS: (100, 700),
              shared_data / NANOAOD: (2, 9), rntuples[0]: (0, 0)}
    out = {}
    for path, (start, stop) in ranges.items():
        with uproot.open(path) as f:
            assert f.classnames() == {"Events;1": "ROOT::RNTuple"}
            ntuple = f["Events"]
            clusters = {0, *(c.num_first_entry + c.num_entries for c in ntuple.cluster_summaries)}
            out[path] = {"entries": ntuple.num_entries, "size": f.file.fEND,
                         "keys": ntuple.keys(), "clusters": sorted(clusters),
                         "range": (start, stop),
                         "arrays": ntuple.arrays(entry_start=start, entry_stop=stop, how=dict)}
    return out


@pytest.fixture(autouse=True)
def _ship_helpers_by_value():
    """The processor comes from the helpers module, which pilots cannot import."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(analysis_helpers)
    yield
    cloudpickle.unregister_pickle_by_value(analysis_helpers)


@pytest.fixture
def alab(module_server):
    lab = module_server.lab()
    yield lab
    lab.close()


def flat(arrays: dict) -> dict:
    """uproot's arrays of either layout with NanoAOD's flat names (``Muon_pt``, ...), as
    :func:`analysis_helpers.reference` takes them."""
    if "Muon" in arrays:
        return {"nMuon": arrays["nMuon"], **{f"Muon_{k}": arrays["Muon"][k] for k in MUON_FIELDS}}
    return arrays


def uproot_reference(paths, tree: str = "Events") -> dict:
    """:func:`analysis_helpers.process`'s result over whole files, read by uproot alone."""
    parts = []
    for path in paths:
        with uproot.open(path) as f:
            parts.append(reference(flat(f[tree].arrays(how=dict))))
    return merge_all(parts)


def same(a: dict, b: dict) -> bool:
    return (a["pairs"], a["events"]) == (b["pairs"], b["events"]) and np.array_equal(
        a["mass"].values(flow=True), b["mass"].values(flow=True))


def boundaries(path, tree: str = "Events") -> list[int]:
    """Cluster boundaries straight from the RNTuple's cluster summaries."""
    with uproot.open(path) as f:
        cs = f[tree].cluster_summaries
        return sorted({0, *(c.num_first_entry + c.num_entries for c in cs)})


def muon_pt(events) -> hist.Hist:
    h = hist.Hist.new.Reg(50, 0, 200, name="pt").Double()
    return h.fill(ak.to_numpy(ak.flatten(events.Muon.pt)))


# ---- inspection, splitting, reading (in this process) ------------------------------------


def test_inspection_gives_uproots_entries_size_and_cluster_boundaries(
        rntuples, sample_files, shared_data, direct):
    for path, d in direct.items():
        if path.name == NANOAOD:
            continue    # as the muons file, but seconds to parse: read below, not inspected
        info = inspect_file(path, "Events")
        assert info.entries == d["entries"]
        assert info.size_bytes == d["size"] == os.path.getsize(path)
        assert info.branches == d["keys"]
        assert info.clusters == d["clusters"]
    # uproot's writer: one cluster per extend, where the TTree twin has its baskets
    infos = [inspect_file(p, "Events") for p in rntuples]
    assert [i.clusters for i in infos] == [inspect_file(p, "Events").clusters
                                          for p in sample_files]
    assert infos[0].clusters == [*range(0, SAMPLE_EVENTS, SAMPLE_BASKET), SAMPLE_EVENTS]
    assert {"Muon", "Muon.pt", "nMuon", "run"} <= set(infos[0].branches)
    assert (direct[shared_data / NANOAOD]["entries"], len(direct[shared_data / NANOAOD]["keys"])
            ) == (10, 1313)                         # as ../shared/data/README.md says


def test_the_sample_writes_either_format_and_nothing_else(tmp_path):
    with pytest.raises(ValueError, match="format must be one of 'ttree', 'rntuple', not 'hdf5'"):
        make_sample(tmp_path, files=1, events=10, format="hdf5")
    assert not list(tmp_path.iterdir())               # refused before writing anything
    (empty,) = make_sample(tmp_path, files=1, events=0, format="rntuple")
    info = inspect_file(empty, "Events")
    assert (info.entries, info.clusters) == (0, [0])
    assert len(read_chunk(Chunk(0, str(empty), "Events", 0, 0))) == 0


def test_chunks_cut_on_clusters_merge_to_what_uproot_reads(rntuples, sample_files):
    infos = [inspect_file(p, "Events") for p in rntuples]
    chunks = split_events(infos, 5_000)             # not a multiple of the 3,000 clusters
    for c in chunks:
        assert {c.start, c.stop} <= set(infos[c.file_index].clusters)
    expected = uproot_reference(rntuples)
    assert expected["events"] == SAMPLE_FILES * SAMPLE_EVENTS and expected["pairs"] > 1000
    assert same(expected, uproot_reference(sample_files))   # the same events as the TTrees
    columns = ["Muon", "nMuon"]
    for cols in (columns, None):                    # eager, then lazy
        assert same(merge_all(process(read_chunk(c, cols)) for c in chunks), expected)
    # any range reads, inside a cluster too (the splitter only chooses not to)
    edges = [*range(0, SAMPLE_EVENTS, 1_700), SAMPLE_EVENTS]
    odd = [Chunk(k, str(p), "Events", a, b) for k, p in enumerate(rntuples)
           for a, b in itertools.pairwise(edges)]
    assert same(merge_all(process(read_chunk(c)) for c in odd), expected)


def test_column_discovery_finds_the_fields_a_processor_reads(rntuples, shared_data):
    sample = Chunk(0, str(rntuples[0]), "Events", 0, SAMPLE_EVENTS)
    found = discover_columns(process, sample)
    assert sorted(found) == sorted(["nMuon", *(f"Muon.{k}" for k in MUON_FIELDS)])
    assert same(process(read_chunk(sample, prefetch=found)), process(read_chunk(sample)))
    assert discover_columns(lambda e: {"n": ak.sum(ak.num(e.Muon))}, sample) == ["nMuon"]
    assert discover_columns(lambda e: {"n": ak.sum(e.run)}, sample) == ["run"]
    real = Chunk(0, str(shared_data / MUONS), "Events", 0, 1000)
    assert sorted(discover_columns(muon_pt, real)) == ["Muon_pt", "nMuon"]


def test_eager_and_lazy_reads_equal_uproot_field_by_field(direct):
    for path, d in direct.items():
        start, stop = d["range"]
        chunk = Chunk(0, str(path), "Events", start, stop)
        lazy = read_chunk(chunk)
        eager = read_chunk(chunk, lazy.fields)
        assert eager.fields == lazy.fields and len(lazy) == stop - start
        # uproot's fields as the events hold them: Muon_pt in the collection Muon
        expected: dict = {}
        for name, array in d["arrays"].items():
            prefix, _, member = name.partition("_")
            if name in lazy.fields:
                expected[name] = array
            else:
                expected.setdefault(prefix, {})[member] = array
        assert sorted(expected) == sorted(lazy.fields)
        expected = ak.zip({k: ak.zip(v) if isinstance(v, dict) else v
                           for k, v in expected.items()}, depth_limit=1)
        for events in (lazy, eager):
            assert ak.array_equal(events, expected, equal_nan=True), path


def test_jagged_collections_are_records_with_their_counter(rntuples, shared_data):
    # stored as records (uproot's writer), counted by nMuon
    chunk = Chunk(0, str(rntuples[0]), "Events", 0, 6_000)
    with uproot.open(rntuples[0]) as f:
        direct = f["Events"].arrays(["Muon", "nMuon"], entry_stop=6_000, how=dict)
    events = read_chunk(chunk, ["Muon.pt"])
    assert events.fields == ["Muon"] and events.Muon.fields == ["pt"]
    assert ak.array_equal(events.Muon.pt, direct["Muon"].pt)
    opened = _open_tree(chunk)
    reader = LazyReader(opened.tree, chunk)
    lazy = reader.events(opened.layout)
    assert ak.array_equal(ak.num(lazy.Muon), direct["nMuon"], dtype_exact=False)
    assert reader.touched == {"nMuon"}              # the counter alone: no muon was read
    # NanoAOD's Muon_* projections and nMuon (ROOT), and the collection they project
    real = read_chunk(Chunk(0, str(shared_data / MUONS), "Events", 0, 1000))
    assert set(real.fields) == {"Muon", "nMuon", "_collection0"}
    assert sorted(real.Muon.fields) == sorted(MUON_FIELDS)
    assert ak.array_equal(ak.num(real.Muon), real.nMuon, dtype_exact=False)
    assert ak.array_equal(real.Muon.pt, real._collection0.Muon_pt)


# ---- through the server: registration, pilots, remote storage, the report ----------------


def test_an_analysis_of_rntuples_on_the_pilots_and_its_report(alab, rntuples):
    ds = alab.datasets.register("rntuple-local", [str(p) for p in rntuples], replace=True)
    assert (ds.n_files, ds.n_events) == (SAMPLE_FILES, SAMPLE_FILES * SAMPLE_EVENTS)
    expected = uproot_reference(rntuples)
    lazy = alab.analyze(process, ds, name="rntuple-lazy", events_per_job=6_000)
    eager = alab.analyze(process, ds, name="rntuple-eager", events_per_job=6_000,
                         columns=["Muon", "nMuon"])
    for task in (lazy, eager):
        assert same(task.result(timeout=120), expected)
    report = lazy.report()
    assert set(report["status"]) == {"done"} and report["merged"].all()
    clusters = [*range(0, SAMPLE_EVENTS, SAMPLE_BASKET), SAMPLE_EVENTS]
    assert set(report["start"]) | set(report["stop"]) <= set(clusters)
    per_file = report.groupby("file_index").apply(
        lambda r: sorted(zip(r["start"], r["stop"], strict=True)), include_groups=False)
    for ranges in per_file:                       # the ranges tile each file exactly
        assert ranges[0][0] == 0 and ranges[-1][1] == SAMPLE_EVENTS
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    partial = lazy.partial()
    assert list(partial.per_file["events_done"]) == [SAMPLE_EVENTS] * SAMPLE_FILES


def test_rntuples_written_by_root_analysed_on_the_pilots(alab, shared_data):
    path = shared_data / MUONS
    ds = alab.datasets.register("rntuple-root", [str(path)], replace=True)
    assert ds.n_events == 1000
    with uproot.open(path) as f:
        pt = f["Events"]["Muon_pt"].array()
    expected = hist.Hist.new.Reg(50, 0, 200, name="pt").Double().fill(
        ak.to_numpy(ak.flatten(pt)))
    for columns in (None, ["Muon.pt"]):
        task = alab.analyze(muon_pt, ds, events_per_job=500, columns=columns)
        assert np.array_equal(task.result(timeout=120).values(flow=True),
                              expected.values(flow=True))
        assert set(task.report()["status"]) == {"done"}


def test_rntuples_over_http_and_from_a_replica(alab, rntuples):
    first, mirror = RangeFileServer(rntuples[0].parent), RangeFileServer(rntuples[0].parent)
    try:
        ds = alab.datasets.register(
            "rntuple-http", [f"{first.url}/{p.name}" for p in rntuples], replace=True,
            endpoint="first", replicas={"mirror": [f"{mirror.url}/{p.name}" for p in rntuples]})
        assert ds.n_events == SAMPLE_FILES * SAMPLE_EVENTS
        assert [f["clusters"] for f in ds.files] == [boundaries(p) for p in rntuples]
        expected = uproot_reference(rntuples)
        hits = first.hits
        task = alab.analyze(process, ds, name="rntuple-http", events_per_job=6_000)
        assert same(task.result(timeout=120), expected)
        assert first.hits > hits                  # the jobs read over HTTP
        # The storage a dataset names first fails: its replica is read.  A storage the
        # pilots never read from, so that no worker's cache of read arrays (kept per
        # file URL, and the dispatch that prefers the pilot holding them) answers instead.
        other = RangeFileServer(rntuples[0].parent)
        try:
            ds2 = alab.datasets.register(
                "rntuple-replica", [f"{other.url}/{p.name}" for p in rntuples],
                replace=True, endpoint="other",
                replicas={"mirror": [f"{mirror.url}/{p.name}" for p in rntuples]})
            other.down = True
            hits = mirror.hits
            again = alab.analyze(process, ds2, name="rntuple-replica", events_per_job=6_000)
            assert same(again.result(timeout=120), expected)
            assert mirror.hits > hits and set(again.report()["status"]) == {"done"}
        finally:
            other.stop()
    finally:
        first.stop()
        mirror.stop()


def test_rntuples_over_xrootd(alab, xrootd_server):
    files = make_sample(xrootd_server.export, files=2, events=8_000, basket_events=2_000,
                        format="rntuple")
    ds = alab.datasets.register("rntuple-xrootd", [xrootd_server.url(p) for p in files],
                                replace=True, endpoint="XRD")
    assert [f["clusters"] for f in ds.files] == [boundaries(p) for p in files]
    task = alab.analyze(process, ds, name="rntuple-xrootd", events_per_job=4_000)
    assert same(task.result(timeout=120), uproot_reference(files))
    assert set(task.report()["status"]) == {"done"}
    assert all(p.startswith("root://") for p in ds.files_frame()["path"])


def test_an_open_rntuple_travels_in_a_job_payload(shared_data):
    """uproot.dask's graphs hold the open RNTuples, cluster summaries and all (uproot's
    ``MetaData`` records, which pickle but do not unpickle by themselves)."""
    import pickle

    with uproot.open(shared_data / MUONS) as f:
        ntuple = f["Events"]
        expected = ntuple.arrays(["nMuon"], how=dict)["nMuon"]
        _, args, _ = pickle.loads(dumps_call(len, (ntuple, ntuple.cluster_summaries)))
    travelled, summaries = args
    assert [(c.num_first_entry, c.num_entries) for c in summaries] == [(0, 1000)]
    assert ak.array_equal(travelled.arrays(["nMuon"], how=dict)["nMuon"], expected)
