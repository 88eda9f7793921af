"""The splitter's jobs: exact coverage, cluster-aligned, never empty, sized by its rule.

Every mode the server runs (events, files, auto: scouts then the rest) over generated datasets,
the rule that sets where a chunk stops, the chunks' identity, and the sizing from the scouts.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from panda_lab.model.splitter import (
    FALLBACK_EVENTS,
    MIN_EVENTS_PER_JOB,
    SCOUT_EVENTS,
    Chunk,
    SplitRule,
    check_clusters,
    remaining,
    scouts,
    size_from_scouts,
    split_all,
    split_empty,
    split_range,
)


def a_file(index: int, entries: int, clusters: list[int], replicas=None) -> dict:
    f = {"file_index": index, "path": f"root://site//data/f{index}.root", "tree": "Events",
         "entries": entries, "clusters": clusters}
    if replicas is not None:
        f["replicas"] = replicas
    return f


@st.composite
def datasets(draw, max_entries: int = 3000) -> list[dict]:
    files = []
    for index in range(draw(st.integers(0, 5))):
        entries = draw(st.integers(0, max_entries) | st.sampled_from([0, 1, 2]))
        inner = draw(st.sets(st.integers(1, entries - 1), max_size=40)) if entries > 1 else set()
        clusters = [0, *sorted(inner), entries] if entries else [0]
        files.append(a_file(index, entries, clusters))
    return files


def flat(jobs: list[list[dict]]) -> list[Chunk]:
    return [Chunk.from_dict(c) for job in jobs for c in job]


def assert_exact_aligned_cover(files: list[dict], chunks: list[Chunk]) -> None:
    """Each file's entries exactly once, in order, cut only on its cluster boundaries."""
    assert [(c.file_index, c.start) for c in chunks] == sorted(
        (c.file_index, c.start) for c in chunks
    )
    for f in files:
        mine = [c for c in chunks if c.file_index == f["file_index"]]
        assert all(c.path == f["path"] and c.tree == f["tree"] for c in mine)
        assert all(c.stop > c.start for c in mine)  # never empty
        edges = [0] + [c.stop for c in mine]
        assert [c.start for c in mine] == edges[:-1]  # contiguous: no gap, no overlap
        assert edges[-1] == f["entries"]
        assert set(edges) <= set(f["clusters"])  # aligned
    assert len({c.key for c in chunks}) == len(chunks)


def first_boundary_at_or_after(f: dict, entry: int) -> int:
    return next((b for b in f["clusters"] if b >= entry), f["entries"])


# ---- mode events ------------------------------------------------------------------------------

@given(datasets(), st.integers(1, 4000))
def test_events_mode_covers_exactly_on_cluster_boundaries(files, events_per_job):
    jobs = split_all(files, SplitRule("events", events_per_job))
    assert all(len(job) == 1 for job in jobs)  # one chunk per job, of one file
    assert_exact_aligned_cover(files, flat(jobs))


@given(datasets(), st.integers(1, 4000))
def test_each_stop_follows_the_rule(files, events_per_job):
    """Every chunk but a file's last stops at the first boundary ``events_per_job`` on; the
    last takes the rest, which is at most a short tail (< half a job) past that boundary;
    a chunk under half a job is its file's only chunk."""
    chunks = flat(split_all(files, SplitRule("events", events_per_job)))
    for f in files:
        mine = [c for c in chunks if c.file_index == f["file_index"]]
        for c in mine[:-1]:
            assert c.stop == first_boundary_at_or_after(f, c.start + events_per_job)
            assert c.entries >= events_per_job
        if mine:
            last = mine[-1]
            target = first_boundary_at_or_after(f, last.start + events_per_job)
            assert last.stop == f["entries"] and f["entries"] - target < events_per_job / 2
            if len(mine) > 1:
                assert last.entries >= events_per_job / 2


def test_regular_clusters():
    f = a_file(0, 1000, list(range(0, 1001, 100)))

    def sizes(epj: int) -> list[int]:
        return [c.entries for c in flat(split_all([f], SplitRule("events", epj)))]

    assert sizes(250) == [300, 300, 400]  # cut at the first boundary >= 250; the 100 left folds
    assert sizes(240) == [300, 300, 400]
    assert sizes(200) == [200] * 5
    assert sizes(400) == [400, 400, 200]  # the 200 left is half a job: its own chunk
    assert sizes(5) == [100] * 10  # a cluster is the floor
    assert sizes(10**6) == [1000]


def test_a_tail_of_half_a_job_is_its_own_chunk():
    f = a_file(0, 1000, [0, 400, 800, 1000])
    assert [(c["start"], c["stop"]) for c in split_range(f, 0, 1000, 400)] == [
        (0, 400), (400, 800), (800, 1000)]
    # the first boundary 401 on is 800; the 200 left is under half a job: folded
    assert [(c["start"], c["stop"]) for c in split_range(f, 0, 1000, 401)] == [(0, 1000)]
    assert [(c["start"], c["stop"]) for c in split_range(f, 400, 800, 100)] == [(400, 800)]
    assert split_range(f, 500, 500, 100) == []


def test_events_per_job_must_be_positive():
    f = a_file(0, 100, [0, 100])
    with pytest.raises(ValueError, match="positive"):
        split_all([f], SplitRule("events", 0))
    with pytest.raises(ValueError, match="positive"):
        split_all([f], SplitRule("events", -5))
    assert len(split_all([f], SplitRule("events", 0), events_per_job=10)) == 1  # given: used


# ---- mode files -------------------------------------------------------------------------------

@given(datasets(), st.integers(1, 4))
def test_files_mode_groups_whole_files(files, files_per_job):
    jobs = split_all(files, SplitRule("files", files_per_job=files_per_job))
    chunks = flat(jobs)
    assert_exact_aligned_cover(files, chunks)
    by_index = {f["file_index"]: f for f in files}
    assert all(c.start == 0 and c.stop == by_index[c.file_index]["entries"] for c in chunks)
    assert all(1 <= len(job) <= files_per_job for job in jobs)
    assert all(len(job) == files_per_job for job in jobs[:-1])


def test_files_per_job_below_one_means_one():
    files = [a_file(i, 10, [0, 10]) for i in range(3)]
    assert [len(j) for j in split_all(files, SplitRule("files", files_per_job=0))] == [1, 1, 1]


# ---- mode auto: scouts, then the rest -----------------------------------------------------------

@given(datasets(max_entries=60_000), st.integers(1, 4), st.integers(1, 30_000))
def test_scouts_and_the_rest_cover_exactly(files, n_scouts, events_per_job):
    rule = SplitRule("auto", n_scouts=n_scouts)
    first = scouts(files, rule)
    with_entries = [f for f in files if f["entries"] > 0]
    assert len(first) == min(n_scouts, len(with_entries))
    # one job each, at the start of the first files with entries, cut on a boundary
    assert [job[0]["file_index"] for job in first] == [
        f["file_index"] for f in with_entries[:n_scouts]]
    for job in first:
        (c,) = job
        f = files[c["file_index"]]
        assert c["start"] == 0
        assert c["stop"] == split_range(f, 0, f["entries"], min(SCOUT_EVENTS, f["entries"]))[0][
            "stop"]
    rest = remaining(files, [c for job in first for c in job], events_per_job)
    chunks = sorted(flat(first) + flat(rest), key=lambda c: (c.file_index, c.start))
    assert_exact_aligned_cover(files, chunks)
    assert all(len(job) == 1 for job in rest)
    # the rest is in input order
    assert [(c.file_index, c.start) for c in flat(rest)] == sorted(
        (c.file_index, c.start) for c in flat(rest))


def test_remaining_cuts_around_what_is_done():
    f = a_file(0, 30_000, list(range(0, 30_001, 5_000)))
    done = [{"file_index": 0, "start": 10_000, "stop": 20_000}]
    jobs = remaining([f], done, 1_000)
    assert [(j[0]["start"], j[0]["stop"]) for j in jobs] == [
        (0, 5_000), (5_000, 10_000), (20_000, 25_000), (25_000, 30_000)]
    assert remaining([f], [{"file_index": 0, "start": 0, "stop": 30_000}], 1_000) == []


def test_the_restart_tests_jobs():
    """The dataset of tests/server/test_restart_steps.py: its expected jobs come from here."""
    files = [a_file(i, 30_000, list(range(0, 30_001, 5_000))) for i in range(3)]
    first = scouts(files, SplitRule())
    assert [(c.file_index, c.start, c.stop) for c in flat(first)] == [
        (i, 0, 20_000) for i in range(3)]
    rest = remaining(files, [c for j in first for c in j], MIN_EVENTS_PER_JOB)
    assert [(c.file_index, c.start, c.stop) for c in flat(rest)] == [
        (i, a, a + 5_000) for i in range(3) for a in (20_000, 25_000)]


# ---- an empty dataset, replicas -----------------------------------------------------------------

def test_a_dataset_without_entries_runs_once_on_nothing():
    files = [a_file(0, 0, [0]), a_file(1, 0, [0])]
    assert split_all(files, SplitRule("events", 10)) == []
    assert scouts(files, SplitRule()) == []
    (job,) = split_empty(files)
    assert [(c["file_index"], c["start"], c["stop"]) for c in job] == [(0, 0, 0)]
    assert split_empty([]) == []


def test_chunks_carry_their_files_replicas():
    reps = [{"endpoint": "EP", "url": "root://ep//f0.root"}]
    f = a_file(0, 100, [0, 50, 100], replicas=reps)
    assert all(c["replicas"] == reps for c in split_range(f, 0, 100, 10))
    assert split_range(a_file(1, 100, [0, 100]), 0, 100, 10)[0]["replicas"] == []


# ---- chunks and clusters -------------------------------------------------------------------

def test_chunk_key_and_round_trip():
    chunk = Chunk(3, "/data/f.root", "Events", 100, 200)
    assert chunk.key == "/data/f.root:Events:100-200"
    assert chunk.entries == 100
    assert Chunk.from_dict(chunk.to_dict()) == chunk
    assert Chunk.from_dict({**chunk.to_dict(), "replicas": [{"url": "x"}]}) == chunk


@pytest.mark.parametrize("clusters", [[], [0, 50], [1, 100], [0, 60, 60, 100], [0, 70, 40, 100]])
def test_bad_cluster_boundaries_are_refused(clusters):
    with pytest.raises(ValueError, match=r"a\.root: clusters must rise strictly"):
        check_clusters("a.root", 100, clusters)


def test_good_cluster_boundaries_pass():
    check_clusters("a.root", 100, [0, 100])
    check_clusters("a.root", 100, [0, 1, 99, 100])
    check_clusters("empty.root", 0, [0])


# ---- sizing from the scouts -------------------------------------------------------------------

def test_the_slowest_site_sets_the_size():
    measures = [
        {"events": 20_000, "seconds": 2.0, "rss_mb": 300.0, "site": "FAST"},  # 10,000 ev/s
        {"events": 20_000, "seconds": 4.0, "rss_mb": 500.0, "site": "FAST"},  # 5,000 ev/s
        {"events": 20_000, "seconds": 10.0, "rss_mb": None, "site": "SLOW"},  # 2,000 ev/s
    ]
    s = size_from_scouts(measures, target_job_seconds=60)
    assert s.events_per_job == 2_000 * 60
    assert s.per_site == {"FAST": 7_500.0, "SLOW": 2_000.0}
    assert s.events_per_second == 5_000.0 and s.rss_mb == 500.0
    assert s.as_dict()["events_per_job"] == 120_000 and "slowest site" in s.note


def test_sizing_has_a_floor_and_a_fallback():
    slow = [{"events": 100, "seconds": 10.0, "rss_mb": 1.0, "site": None}]
    assert size_from_scouts(slow, 1.0).events_per_job == MIN_EVENTS_PER_JOB
    assert size_from_scouts(slow, 1.0).per_site == {"?": 10.0}
    for measures in ([], [{"events": 0, "seconds": 1.0, "rss_mb": 1.0, "site": "A"},
                          {"events": 10, "seconds": 0.0, "rss_mb": 1.0, "site": "A"}]):
        s = size_from_scouts(measures, 60)
        assert s.events_per_job == FALLBACK_EVENTS and s.events_per_second is None
        assert "no scout finished" in s.note


def test_the_memory_cap_bounds_every_size_but_never_below_the_floor():
    """The embedded default's ``max_events`` (a payload worker's memory): the scouts'
    size, the fallback and a cap under the floor are all bounded by it."""
    fast = [{"events": 20_000, "seconds": 0.02, "rss_mb": 200.0, "site": "A"}]  # 1M ev/s
    capped = size_from_scouts(fast, 60, max_events=136_000)
    assert capped.events_per_job == 136_000 and "memory" in capped.note
    assert size_from_scouts(fast, 0.05, max_events=136_000).events_per_job == 50_000
    assert size_from_scouts([], 60, max_events=50_000).events_per_job == 50_000
    assert size_from_scouts([], 60, max_events=10**9).events_per_job == FALLBACK_EVENTS
    assert size_from_scouts(fast, 60, max_events=10).events_per_job == MIN_EVENTS_PER_JOB
    assert size_from_scouts(fast, 60, max_events=None).events_per_job == 60_000_000
