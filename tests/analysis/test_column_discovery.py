"""A job without ``columns=`` sees every field of the file, whatever touches them.

The kind: a processor can touch a field without reading its data -- it needs the field's
structure (its list lengths, its type, that it exists), not its numbers.  Column discovery
records the branches whose data the processor read (``ak.num(events.Muon.pt)`` reads only
``nMuon``); a job then read only those, eagerly, and the field was gone (``no field named
'pt'``).  Jobs now read the discovered branches up front and keep the rest of the file lazy,
so the structure is the file's, as in discovery.  Members tested, each run as a job's
function (discovery, then the job's read) and compared with the same processor on uproot's
own array (``how="zip"``), on a generated NanoAOD-like file and on real CMS NanoAOD:

``ak.num`` (the reported example), ``len``, ``ak.count``, ``ak.local_index``, ``ak.firsts``,
``ak.is_none``, ``ak.zeros_like``, ``ak.ones_like``, ``ak.broadcast_arrays``, boolean masks,
``ak.where``, ``ak.with_field``, ``ak.zip``, ``ak.unzip``, ``ak.fields`` / ``.fields`` /
``in .fields``, ``ak.type`` / ``.type``, ``.layout``, type checks (``isinstance``, ``ndim``),
``ak.num`` of the collection, ``ak.flatten`` -- ``test_a_job_sees_every_field_it_touches``
(both files); a field touched only in a code path the discovery sample never took --
``test_a_code_path_discovery_never_took_still_finds_its_field``.

And what it costs: such a field is not read at all (``test_structure_reads_no_data``), the
structure comes from the file's metadata (``ak.fields`` reads nothing), discovered branches
are checked names (``test_prefetch_names_are_checked``), and the example through a real server
and pilots, against the number of muons counted with uproot
(``test_the_number_of_muons_through_a_server``, ``test_real_nanoaod_through_a_server``).
"""

from __future__ import annotations

import collections
import functools

import awkward as ak
import numpy as np
import pytest
import uproot

from panda_lab.analysis.errors import DataError
from panda_lab.analysis.events import _open_tree, discover_columns, read_chunk
from panda_lab.analysis.lazy import LazyReader
from panda_lab.analysis.runner import run_chunks
from panda_lab.analysis.sample import make_sample
from panda_lab.model.splitter import Chunk

NANOAOD = "nanoAOD_2015_CMS_Open_Data_ttbar.root"


def n_muons(events):
    """The reported example: the number of muons, from a field used only for its lengths."""
    return ak.sum(ak.num(events.Muon.pt))


def _where(e):
    many = ak.num(e.Muon.pt) > 1
    return ak.to_list(ak.num(ak.where(many, e.Muon.eta, e.Muon.phi)))


def _with_field(e):
    muons = ak.with_field(e.Muon, ak.zeros_like(e.Muon.pt), "w")
    return ak.fields(muons)[-1], ak.to_list(ak.num(muons.w))


#: Processors touching ``events.Muon`` fields for their structure; each returns plain values.
STRUCTURE = {
    "ak.num": lambda e: int(n_muons(e)),
    "len": lambda e: (len(e.Muon.pt), [len(x) for x in e.Muon.eta[:50]]),
    "ak.count": lambda e: ak.to_list(ak.count(e.Muon.pt, axis=1)),
    "ak.local_index": lambda e: ak.to_list(ak.local_index(e.Muon.phi)),
    "ak.firsts": lambda e: ak.to_list(ak.is_none(ak.firsts(e.Muon.mass))),
    "ak.is_none": lambda e: ak.to_list(ak.is_none(e.Muon.eta, axis=1)),
    "ak.zeros_like": lambda e: (ak.to_list(ak.num(ak.zeros_like(e.Muon.pt))),
                                float(ak.sum(ak.zeros_like(e.Muon.pt)))),
    "ak.ones_like": lambda e: float(ak.sum(ak.ones_like(e.Muon.charge))),
    "ak.broadcast_arrays": lambda e: ak.to_list(
        ak.sum(ak.broadcast_arrays(e.nMuon, e.Muon.pt)[0], axis=1)),
    "mask": lambda e: (ak.to_list(ak.num(e.Muon.pt[ak.num(e.Muon.eta) >= 2])),
                       ak.to_list(ak.num(e.Muon.phi[ak.local_index(e.Muon.mass) < 1]))),
    "ak.where": _where,
    "ak.with_field": _with_field,
    "ak.zip": lambda e: ak.to_list(ak.num(ak.zip({"a": e.Muon.pt, "b": e.Muon.eta}))),
    "ak.unzip": lambda e: (len(ak.unzip(e.Muon)), ak.to_list(ak.num(ak.unzip(e.Muon)[0]))),
    "ak.fields": lambda e: (ak.fields(e.Muon), e.Muon.fields, "pt" in e.Muon.fields),
    "ak.type": lambda e: (str(ak.type(e.Muon.pt)), str(e.Muon.charge.type)),
    ".layout": lambda e: (e.Muon.pt.layout.length, str(e.Muon.pt.layout.form.type)),
    "type checks": lambda e: (isinstance(e.Muon.pt, ak.Array), e.Muon.pt.ndim),
    "ak.num collection": lambda e: ak.to_list(ak.num(e.Muon)),
    "ak.flatten": lambda e: len(ak.flatten(e.Muon.eta)),
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Chunk:
    """A NanoAOD-like file (deterministic seed); the chunk is entries 1,000-4,000, so that
    discovery's sample (its first 1,000) is smaller than the job."""
    (path,) = make_sample(tmp_path_factory.mktemp("disc"), files=1, events=5_000,
                          basket_events=1_000, compression=None)
    return Chunk(0, str(path), "Events", 1_000, 4_000)


@pytest.fixture(params=["generated", "cms"])
def chunk(request, generated) -> Chunk:
    """The generated chunk, or the whole of the real CMS NanoAOD file (200 events)."""
    if request.param == "generated":
        return generated
    return Chunk(0, str(request.getfixturevalue("shared_data") / NANOAOD), "Events", 0, 200)


@functools.cache
def uproot_events(chunk: Chunk) -> ak.Array:
    """The chunk as uproot itself groups it: ``Muon`` records of the ``Muon_*`` branches
    (kept: opening the 947 branches of the real file takes uproot seconds)."""
    with uproot.open(chunk.path) as f:
        return f[chunk.tree].arrays(filter_name=["nMuon", "Muon_*"], how="zip",
                                    entry_start=chunk.start, entry_stop=chunk.stop)


def as_job(process, chunk: Chunk):
    """What one job without ``columns=`` returns: discovery, then the job's own read."""
    job = {"file_index": chunk.file_index, "path": chunk.path, "tree": chunk.tree,
           "start": chunk.start, "stop": chunk.stop}
    out = run_chunks(process, None, [job])
    assert out.events == chunk.entries
    return out.result


def as_accumulator(process):
    """``process`` whose plain values (tuples, bools, strings) travel as a one-element
    array of their repr: a job's result must be an accumulator."""
    def wrapped(events):
        return {"value": np.array([repr(process(events))])}
    return wrapped


@pytest.mark.parametrize("name", list(STRUCTURE))
def test_a_job_sees_every_field_it_touches(name, chunk):
    process = STRUCTURE[name]
    expected = repr(process(uproot_events(chunk)))
    assert as_job(as_accumulator(process), chunk)["value"].tolist() == [expected]


def test_the_example_counts_every_muon(chunk):
    with uproot.open(chunk.path) as f:
        pt = f["Events"]["Muon_pt"].array(entry_start=chunk.start, entry_stop=chunk.stop)
    total = len(ak.flatten(pt))
    assert total > 0
    assert as_job(n_muons, chunk) == total


def test_a_code_path_discovery_never_took_still_finds_its_field(generated):
    def late(events):
        if len(events) > 1_000:  # never in discovery's 1,000 entries
            return float(ak.sum(events.Muon.eta))
        return 0.0

    assert discover_columns(late, generated) == []
    expected = float(ak.sum(uproot_events(generated).Muon.eta))
    assert as_job(late, generated) == pytest.approx(expected) and expected != 0


def test_structure_reads_no_data(generated):
    opened = _open_tree(generated)
    reader = LazyReader(opened.tree, generated)
    events = reader.events(opened.layout)
    assert ak.fields(events.Muon) == ["pt", "eta", "phi", "mass", "charge"]
    assert reader.touched == set()  # the fields come from the file's metadata
    assert str(events.Muon.pt.type) == "3000 * var * float32"
    assert ak.sum(ak.num(events.Muon.pt)) == ak.sum(events.nMuon)
    ak.zeros_like(events.Muon.pt)
    assert reader.touched == {"nMuon"}  # lengths come from the counter, never from Muon_pt
    # what discovery reports is what was read; the job finds the rest of the structure
    assert discover_columns(n_muons, generated) == ["nMuon"]
    assert discover_columns(lambda e: ak.fields(e.Muon), generated) == []


def test_prefetched_branches_are_read_up_front_in_one_go(generated):
    opened = _open_tree(generated)
    reader = LazyReader(opened.tree, generated)
    reader.prefetch(["nMuon", "Muon_eta"])
    assert reader.touched == {"nMuon", "Muon_eta"}
    events = reader.events(opened.layout)
    assert ak.array_equal(events.Muon.eta, uproot_events(generated).Muon.eta)
    assert reader.touched == {"nMuon", "Muon_eta"}  # nothing read again
    # read_chunk's prefetch takes the names columns= takes: branch, collection, field path
    lazy = read_chunk(generated, prefetch=["Muon.pt", "nMuon"])
    assert lazy.fields == ["run", "luminosityBlock", "event", "nMuon", "Muon"]


def test_prefetch_names_are_checked(generated):
    with pytest.raises(DataError, match=r"no branch or collection 'Muon\.nope'"):
        read_chunk(generated, prefetch=["Muon.nope"])


def count_muons(events):
    """Per job: muons counted from a field's lengths, and the fields the job saw."""
    return {"muons": int(n_muons(events)), "events": len(events),
            "fields": collections.Counter(ak.fields(events.Muon))}


@pytest.fixture
def slab(module_server):
    lab = module_server.lab()
    yield lab
    lab.close()


def test_the_number_of_muons_through_a_server(slab, tmp_path):
    paths = make_sample(tmp_path, files=2, events=6_000, basket_events=1_500,
                        compression=None)
    ds = slab.datasets.register("muons", [str(p) for p in paths], replace=True)
    result = slab.analyze(count_muons, ds, events_per_job=3_000,
                          name="muons").result(timeout=120)
    expected = 0
    for p in paths:
        with uproot.open(p) as f:
            expected += len(ak.flatten(f["Events"]["Muon_pt"].array()))
    assert result["muons"] == expected and result["events"] == 12_000
    assert set(result["fields"]) == {"pt", "eta", "phi", "mass", "charge"}


def test_real_nanoaod_through_a_server(slab, shared_data):
    real = shared_data / NANOAOD
    ds = slab.datasets.register("ttbar-muons", [str(real)], tree="Events", replace=True)
    result = slab.analyze(count_muons, ds, events_per_job=100,
                          name="ttbar-muons").result(timeout=120)
    with uproot.open(real) as f:
        expected = len(ak.flatten(f["Events"]["Muon_pt"].array()))
        fields = [k.partition("_")[2] for k in f["Events"].keys(filter_name="Muon_*")]
    assert result["muons"] == expected and result["events"] == 200
    assert sorted(result["fields"]) == sorted(fields)
