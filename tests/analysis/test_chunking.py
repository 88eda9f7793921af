"""The splitter's chunks: exact coverage, cluster-aligned, never empty, as close as allowed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from panda_lab.analysis.chunking import Chunk, split_by_bytes, split_by_events, split_by_files
from panda_lab.analysis.files import FileInfo


@st.composite
def datasets(draw) -> list[FileInfo]:
    files = []
    for index in range(draw(st.integers(0, 5))):
        entries = draw(st.integers(0, 3000) | st.sampled_from([0, 1, 2]))
        inner = draw(st.sets(st.integers(1, entries - 1), max_size=40)) if entries > 1 else set()
        clusters = [0, *sorted(inner), entries] if entries else [0]
        size = draw(st.integers(0, 10**7))
        files.append(
            FileInfo(f"root://site//data/f{index}.root", "Events", entries, size, clusters, ["x"])
        )
    return files


def assert_exact_aligned_cover(files: list[FileInfo], chunks: list[Chunk]) -> None:
    """Each file's entries exactly once, in order, cut only on its cluster boundaries."""
    assert [(c.file_index, c.start) for c in chunks] == sorted(
        (c.file_index, c.start) for c in chunks
    )
    for index, info in enumerate(files):
        mine = [c for c in chunks if c.file_index == index]
        assert all(c.path == info.path and c.tree == info.tree for c in mine)
        assert all(c.stop > c.start for c in mine)  # never empty
        edges = [0] + [c.stop for c in mine]
        assert [c.start for c in mine] == edges[:-1]  # contiguous: no gap, no overlap
        assert edges[-1] == info.entries
        assert set(edges) <= set(info.clusters)  # aligned
    assert len({c.key for c in chunks}) == len(chunks)


@given(datasets(), st.integers(1, 4000))
def test_split_by_events_covers_exactly_on_cluster_boundaries(files, events_per_job):
    assert_exact_aligned_cover(files, split_by_events(files, events_per_job))


@given(datasets(), st.integers(1, 4000))
def test_each_stop_is_the_boundary_nearest_the_target(files, events_per_job):
    for chunk in split_by_events(files, events_per_job):
        later = [b for b in files[chunk.file_index].clusters if b > chunk.start]
        target = chunk.start + events_per_job
        best = min(later, key=lambda b: (abs(b - target), -b))  # ties go to the larger chunk
        assert chunk.stop == best


@given(datasets(), st.integers(1, 10**6))
def test_split_by_bytes_covers_exactly(files, bytes_per_job):
    assert_exact_aligned_cover(files, split_by_bytes(files, bytes_per_job))


@given(datasets(), st.integers(1, 4))
def test_split_by_files_groups_whole_files(files, files_per_job):
    jobs = split_by_files(files, files_per_job)
    flat = [c for job in jobs for c in job]
    assert_exact_aligned_cover(files, flat)
    assert all(c.start == 0 and c.stop == files[c.file_index].entries for c in flat)
    assert all(1 <= len(job) <= files_per_job for job in jobs)
    assert all(len(job) == files_per_job for job in jobs[:-1])


def test_regular_clusters():
    info = FileInfo("a.root", "Events", 1000, 1, list(range(0, 1001, 100)), [])
    sizes = [c.entries for c in split_by_events([info], 250)]
    assert sizes == [300, 300, 300, 100]  # 250 is halfway: ties take the larger chunk
    assert [c.entries for c in split_by_events([info], 240)] == [200, 200, 200, 200, 200]
    assert [c.entries for c in split_by_events([info], 5)] == [100] * 10  # a cluster is the floor
    assert [c.entries for c in split_by_events([info], 10**6)] == [1000]


def test_chunk_key_and_round_trip():
    chunk = Chunk(3, "/data/f.root", "Events", 100, 200)
    assert chunk.key == "/data/f.root:Events:100-200"
    assert chunk.entries == 100
    assert Chunk.from_dict(chunk.to_dict()) == chunk
    assert Chunk.from_dict({**chunk.to_dict(), "replicas": [{"url": "x"}]}) == chunk


@pytest.mark.parametrize("clusters", [[], [0, 50], [1, 100], [0, 60, 60, 100], [0, 70, 40, 100]])
def test_bad_cluster_boundaries_are_refused(clusters):
    info = FileInfo("a.root", "Events", 100, 1, clusters, [])
    with pytest.raises(ValueError, match="cluster boundaries"):
        split_by_events([info], 10)


def test_bad_sizes_are_refused():
    info = FileInfo("a.root", "Events", 100, 1, [0, 100], [])
    for call in (
        lambda: split_by_events([info], 0),
        lambda: split_by_bytes([info], 0),
        lambda: split_by_files([info], 0),
    ):
        with pytest.raises(ValueError, match=">= 1"):
            call()
