"""The site's stage-in cache on the pilot: copies under a bound, least recently used out.

Kinds tested:
* a cache over its bound.  Members: a copy that needs room (the least recently used
  go, a read refreshing a file's place), a file larger than the cache (not copied), a
  size unknown before the copy;
* a job's cache work not reported.  Members: ``staged``, ``hit``, ``evicted`` each
  logged for the report; the copy metered as a read of the replica's endpoint;
* a job told to stage in that does not, or one not told that copies.  Members:
  ``stage-in`` copies; ``remote`` copies nothing but still reads a copy already there.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from panda_lab import reads
from panda_lab.analysis.sitecache import SiteCache, local_copy
from panda_lab.model.staging import CACHE_ENDPOINT


@pytest.fixture
def files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    out = {}
    for name in "abcd":
        p = src / f"{name}.root"
        p.write_bytes(name.encode() * 1000)
        out[name] = str(p)
    reads.take()
    reads.take_cache()
    return out


def _age(cache: SiteCache, path: str, t: float) -> None:
    os.utime(cache.name(path), (t, t))


def test_copies_stay_under_the_bound_evicting_the_least_recently_used(tmp_path, files):
    cache = SiteCache(tmp_path / "cache", 2500)
    for i, name in enumerate("abc"):
        assert cache.stage(name, files[name], "disk", 1000) is not None
        _age(cache, name, time.time() - 100 + i)
        assert cache.used() <= cache.limit
    # a, the oldest, made room for c; b is read now, so d evicts c, not b
    assert cache.lookup("a") is None
    assert cache.lookup("b") is not None
    cache.stage("d", files["d"], "disk", 1000)
    assert cache.used() <= 2500
    assert [cache.lookup(n) is not None for n in "abcd"] == [False, True, False, True]
    log = reads.take_cache()
    assert [(e["action"], e["path"]) for e in log if e["action"] != "hit"] == [
        ("staged", "a"), ("staged", "b"), ("evicted", "a"), ("staged", "c"),
        ("evicted", "c"), ("staged", "d")]
    # the copies were metered as reads of their replica's endpoint: 4 files, 4 requests
    (metered,) = reads.take()
    assert (metered["endpoint"], metered["bytes"], metered["requests"]) == ("disk", 4000, 4)


def test_a_file_larger_than_the_cache_is_not_copied(tmp_path, files):
    cache = SiteCache(tmp_path / "cache", 500)
    assert cache.stage("a", files["a"], "disk", 1000) is None
    # its size unknown (0): copied, found too large, dropped
    assert cache.stage("a", files["a"], "disk", 0) is None
    assert cache.used() == 0 and not [e for e in reads.take_cache() if e["action"] == "staged"]


def test_an_unknown_size_still_keeps_the_bound(tmp_path, files):
    cache = SiteCache(tmp_path / "cache", 1500)
    cache.stage("a", files["a"], "disk", 0)
    cache.stage("b", files["b"], "disk", 0)
    assert cache.used() == 1000 and cache.lookup("b") is not None


def test_a_job_stages_in_only_when_told_and_reads_a_copy_already_there(tmp_path, files,
                                                                       monkeypatch):
    monkeypatch.setenv(reads.CACHE_DIR, str(tmp_path / "cache"))
    monkeypatch.setenv(reads.CACHE_BYTES, "10000")
    chunk = {"path": "a", "file_bytes": 1000}
    reps = [{"endpoint": "far", "url": files["b"]}, {"endpoint": "near", "url": files["a"]}]
    monkeypatch.setenv(reads.ACCESS, "remote")
    assert local_copy(chunk, reps) is None
    monkeypatch.setenv(reads.ACCESS, "stage-in")
    monkeypatch.setenv(reads.READ_FROM, "near")
    got = local_copy(chunk, reps)
    assert got is not None and Path(got).read_bytes() == b"a" * 1000  # the chosen replica
    assert reads.endpoint_of(got) == CACHE_ENDPOINT
    monkeypatch.setenv(reads.ACCESS, "remote")
    assert local_copy(chunk, reps) == got
    assert [e["action"] for e in reads.take_cache()] == ["staged", "hit"]
    monkeypatch.delenv(reads.CACHE_DIR)
    assert local_copy(chunk, reps) is None  # no cache at this site
