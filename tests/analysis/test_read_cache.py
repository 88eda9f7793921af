"""The worker's cache of read arrays (``panda_lab.analysis.readcache``): bounded, counted,
off when asked, and a clear error for a bad limit (naming the variable, never blamed on a
good file, and stated with the rest of the embedded default's plan: see
tests/provisioners/test_resources.py).

The kind of bug: a cache that grows past its bound (one per file, as uproot's default is,
instead of one per process), one that is not counted in what a job reports, or one that
cannot be turned off.  Each is checked here.

A second kind: a cached read outliving the file it came from.  uproot keys arrays by the
file's UUID, which a copy keeps, so its members are a copy at another path (a replica, or a
copy cut short or corrupted) and a file overwritten in place by such a copy; each must be
read from its own bytes, never served the arrays of the file read before."""

from __future__ import annotations

import pytest

from panda_lab.analysis import events, readcache
from panda_lab.analysis.dimuon import process
from panda_lab.analysis.runner import run_chunks
from panda_lab.model.splitter import Chunk

BRANCHES = ["nMuon", "Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_charge"]


@pytest.fixture
def fresh(monkeypatch):
    """A process with no cache made yet and no open trees; both forgotten afterwards."""
    def reset(limit: str | None):
        if limit is None:
            monkeypatch.delenv(readcache.READ_CACHE_ENV, raising=False)
        else:
            monkeypatch.setenv(readcache.READ_CACHE_ENV, limit)
        readcache._forget()
        events._forget_open_trees()
    yield reset
    readcache._forget()
    events._forget_open_trees()


def chunks(files, step=3000):
    return [Chunk(i, str(p), "Events", s, s + step) for i, p in enumerate(files)
            for s in range(0, 18000, step)]


def test_one_cache_for_all_files_evicts_at_its_bound(fresh, sample_files):
    fresh("200000")  # bytes: a few chunks' worth of these six branches
    cache = readcache.read_cache()
    assert cache is not None and cache.limit == 200_000
    seen = 0
    for c in chunks(sample_files):
        events.read_chunk(c, BRANCHES)
        assert 0 < readcache.cache_bytes() <= 200_000
        seen += 1
    # It evicted: far fewer arrays held than read.
    assert readcache.read_cache() is cache
    assert len(cache) < seen * len(BRANCHES)


def test_every_file_shares_the_one_cache(fresh, sample_files):
    fresh(None)
    for p in sample_files:
        events.read_chunk(Chunk(0, str(p), "Events", 0, 3000), BRANCHES)
    uuids = {str(events._open_tree(Chunk(0, str(p), "Events", 0, 10)).tree.obj.file.uuid)
             for p in sample_files}
    held = {k.split(":")[0] for k in readcache.read_cache()}
    assert len(uuids) == 2 and all(any(u in k for k in held) for u in uuids)


def test_a_re_read_of_the_same_chunk_comes_from_the_cache(fresh, sample_files):
    fresh(None)
    assert readcache.read_cache().limit == readcache.DEFAULT_BYTES
    c = chunks(sample_files)[0]
    first = events.read_chunk(c, BRANCHES)
    held = readcache.cache_bytes()
    assert held > 0
    again = events.read_chunk(c, BRANCHES)
    assert readcache.cache_bytes() == held  # nothing new was read
    assert again.to_list() == first.to_list()


def test_a_job_reports_what_the_cache_holds(fresh, sample_files):
    fresh("10 MB")
    c = chunks(sample_files)[0]
    d = {"file_index": 0, "path": c.path, "tree": c.tree, "start": c.start, "stop": c.stop}
    r = run_chunks(process, BRANCHES, [d])
    assert r.cache_mb == pytest.approx(readcache.cache_bytes() / 2**20)
    assert 0 < r.cache_mb <= r.rss_mb


def test_zero_turns_it_off_and_a_bad_limit_names_the_variable(fresh, sample_files):
    fresh("0")
    assert readcache.read_cache() is None
    events.read_chunk(chunks(sample_files)[0], BRANCHES)
    assert readcache.cache_bytes() == 0
    assert readcache.limit_bytes("1 GiB") == 2**30
    with pytest.raises(ValueError, match="PANDA_LAB_READ_CACHE='lots'"):
        readcache.limit_bytes("lots")


def test_a_bad_limit_is_not_blamed_on_the_file(fresh, sample_files):
    """Opening a file with a bad limit set says what is wrong (the variable), not that a
    good file is corrupt: the error the reading code would otherwise report for the file,
    and that would make a dataset's registration skip every file as bad."""
    from panda_lab.analysis.errors import DataError
    from panda_lab.analysis.files import open_file

    fresh("lots")
    with pytest.raises(ValueError, match="PANDA_LAB_READ_CACHE='lots'") as got:
        open_file(sample_files[0], "Events")
    assert not isinstance(got.value, DataError)


def _corrupted(source, dest) -> None:
    """``dest``: ``source`` (same UUID) with Muon_pt's second basket overwritten."""
    import uproot

    data = bytearray(source.read_bytes())
    with uproot.open(source) as f:
        branch = f["Events"]["Muon_pt"]
        seek = int(branch.member("fBasketSeek")[1])
        size = int(branch.member("fBasketBytes")[1])
    data[seek + size // 2: seek + size // 2 + 64] = b"\xff" * 64
    dest.write_bytes(bytes(data))


def test_a_copy_with_the_same_uuid_is_read_from_its_own_bytes(fresh, sample_files, tmp_path):
    from panda_lab.analysis.errors import DataError
    from panda_lab.analysis.events import read_chunk

    fresh("256 MB")
    good = Chunk(0, str(sample_files[0]), "Events", 3000, 6000)
    read_chunk(good, ["Muon_pt"])  # the original's arrays are in the cache now
    copy = tmp_path / "copy.root"
    _corrupted(sample_files[0], copy)
    with pytest.raises(DataError, match="cannot read"):
        read_chunk(Chunk(0, str(copy), "Events", 3000, 6000), ["Muon_pt"])


def test_a_file_overwritten_in_place_is_read_again(fresh, sample_files, tmp_path):
    import os
    import shutil

    from panda_lab.analysis.errors import DataError
    from panda_lab.analysis.events import read_chunk

    fresh("256 MB")
    path = tmp_path / "data.root"
    shutil.copyfile(sample_files[0], path)
    chunk = Chunk(0, str(path), "Events", 3000, 6000)
    read_chunk(chunk, ["Muon_pt"])
    events._forget_open_trees()  # a new job opens the file again
    _corrupted(sample_files[0], path)  # same UUID, same size, new contents
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(DataError, match="cannot read"):
        read_chunk(chunk, ["Muon_pt"])
