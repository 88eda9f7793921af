"""Cut a dataset into chunks, the unit of input of one job (PanDA's splitter, JEDI, does this).

A chunk is a range of entries of one tree in one file. The splitter only cuts on cluster
boundaries (:attr:`FileInfo.clusters`), so no basket is decompressed by two jobs, and the chunks
of a dataset cover every entry exactly once, in file order then entry order. That order is the
*chunk index* that :func:`~panda_lab.analysis.accumulate.merge_all` relies on when it
concatenates per-chunk arrays.

Nothing here opens a file: the splitter runs on the server from stored :class:`FileInfo`.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import asdict, dataclass, fields
from typing import Any

from panda_lab.analysis.files import FileInfo


@dataclass(frozen=True)
class Chunk:
    """Entries ``[start, stop)`` of ``tree`` in the file ``path``, ``file_index`` in its dataset."""

    file_index: int
    path: str
    tree: str
    start: int
    stop: int

    @property
    def entries(self) -> int:
        return self.stop - self.start

    @property
    def key(self) -> str:
        """``"path:tree:start-stop"``: the same chunk has the same key in every process and run,
        so results and retries can be matched to their input by key alone. The tree is part of it
        because one file may hold several trees."""
        return f"{self.path}:{self.tree}:{self.start}-{self.stop}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, for job parameters."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Chunk:
        """From a job's chunk parameters; other keys there (``replicas``, ...) are ignored."""
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def _check_clusters(info: FileInfo) -> None:
    """Refuse boundaries that would lose or repeat entries, before any job is made from them."""
    c = info.clusters
    ok = bool(c) and c[0] == 0 and c[-1] == info.entries
    ok = ok and all(a < b for a, b in itertools.pairwise(c))
    if not ok:
        raise ValueError(
            f"{info.path}: cluster boundaries must rise strictly from 0 to entries "
            f"({info.entries}), got {c[:5]}{'...' if len(c) > 5 else ''}"
        )


def split_file(info: FileInfo, file_index: int, events_per_job: int) -> list[Chunk]:
    """Chunks of one file: from each start, stop at the cluster boundary nearest to
    ``start + events_per_job`` (the larger one on a tie), never giving an empty chunk.

    Nearest rather than "at most" because a file whose clusters are larger than
    ``events_per_job`` would otherwise give chunks of one cluster each whatever was asked, and
    ones much smaller than asked are as costly in overhead as ones somewhat larger.
    """
    if events_per_job < 1:
        raise ValueError(f"events_per_job must be >= 1, got {events_per_job}")
    _check_clusters(info)
    bounds = info.clusters
    chunks: list[Chunk] = []
    i = 0  # index in bounds of the current start
    while i < len(bounds) - 1:
        start = bounds[i]
        target = start + events_per_job
        above = bisect.bisect_left(bounds, target, lo=i + 1)  # first boundary >= target
        if above == len(bounds):
            j = len(bounds) - 1
        elif above == i + 1 or bounds[above] - target <= target - bounds[above - 1]:
            j = above
        else:
            j = above - 1
        chunks.append(Chunk(file_index, info.path, info.tree, start, bounds[j]))
        i = j
    return chunks


def split_by_events(files: list[FileInfo], events_per_job: int) -> list[Chunk]:
    """All chunks of a dataset of about ``events_per_job`` entries each, in chunk-index order.

    A chunk never crosses a file (a job reads one file range); files without entries give no
    chunk.
    """
    chunks: list[Chunk] = []
    for index, info in enumerate(files):
        chunks.extend(split_file(info, index, events_per_job))
    return chunks


def split_by_bytes(files: list[FileInfo], bytes_per_job: int) -> list[Chunk]:
    """Like :func:`split_by_events`, with each file's events-per-job set from its average
    (compressed) bytes per entry, so jobs over dense and sparse files read similar amounts."""
    if bytes_per_job < 1:
        raise ValueError(f"bytes_per_job must be >= 1, got {bytes_per_job}")
    chunks: list[Chunk] = []
    for index, info in enumerate(files):
        if info.entries == 0:
            _check_clusters(info)
            continue
        per_entry = max(info.size_bytes, 1) / info.entries
        chunks.extend(split_file(info, index, max(1, round(bytes_per_job / per_entry))))
    return chunks


def split_by_files(files: list[FileInfo], files_per_job: int) -> list[list[Chunk]]:
    """Jobs of ``files_per_job`` whole files each (one chunk per file), in file order.

    Empty files are skipped, so no job is empty and every job but the last has exactly
    ``files_per_job`` chunks.
    """
    if files_per_job < 1:
        raise ValueError(f"files_per_job must be >= 1, got {files_per_job}")
    whole: list[Chunk] = []
    for index, info in enumerate(files):
        _check_clusters(info)
        if info.entries > 0:
            whole.append(Chunk(index, info.path, info.tree, 0, info.entries))
    return [whole[i : i + files_per_job] for i in range(0, len(whole), files_per_job)]
