"""Read one chunk as an awkward array of events, NanoAOD-style (see :mod:`.schema`).

The tree is a TTree or an RNTuple (:mod:`.trees`); both are read the same way, below.

Which branches are read. Two ways:

* ``read_chunk(chunk, columns=[...])`` reads exactly those branches, eagerly, with one
  ``tree.arrays(...)`` call, and the array has only their fields. A column is a branch name, a
  collection name (``"Muon"``: all of its branches) or a field path (``"Muon.pt"``). This is
  what jobs given ``columns=`` use: its cost is known before the job runs.
* ``read_chunk(chunk)`` returns a *lazy* array with every field of the tree (:mod:`.lazy`,
  awkward's virtual buffers): a branch is read the first time an operation needs its data, and
  never otherwise; ``prefetch=[...]`` (same names as ``columns``) reads some up front, in one
  request.

Column discovery (:func:`discover_columns`) runs the processor once on a lazy array of the
first entries of a chunk and returns the branches whose data it read. The processor runs on
real numbers, so it may fill histograms and call numpy freely, which a typetracer
(dask-awkward's way) cannot do. Jobs without ``columns=`` prefetch those branches and keep the
rest lazy, so the processor sees the whole structure of the file, as discovery did: a field
it uses only for its structure (``ak.num(events.Muon.pt)``, ``ak.fields``, ``ak.zeros_like``,
``.type``), which reads no data of its own, and a branch touched only in a code path the sample
never took are still there, the latter read when needed.

Open trees are kept in a small per-process cache (checked against the file's size and mtime),
because a pilot's worker reads many chunks of one file and parsing the metadata of a tree with a
thousand branches costs a good part of a second.

Failures to read become :class:`~panda_lab.analysis.errors.DataError` with file, tree, entry
range and reason, also when they happen later, inside a lazy branch read.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np

from panda_lab import reads
from panda_lab.analysis.errors import DataError
from panda_lab.analysis.files import describe, get_tree, is_url, open_file
from panda_lab.analysis.lazy import LazyReader
from panda_lab.analysis.schema import (
    Collection,
    Layout,
    offsets_from_counts,
    packed_lists,
    select,
    tree_layout,
)
from panda_lab.analysis.trees import Tree
from panda_lab.model.splitter import Chunk

OPEN_TREES = 4
"""Trees kept open per process: enough for a job's files, few enough to bound descriptors."""


def read_chunk(
    chunk: Chunk, columns: Iterable[str] | None = None, *, prefetch: Iterable[str] = ()
) -> ak.Array:
    """The events of ``chunk``: only ``columns`` if given (eager), else every branch, lazily,
    those ``prefetch`` names read up front with one request.

    Returns an awkward Array of ``chunk.entries`` records (one per event), one field per
    branch or collection (``events.Muon.pt``), in branch order.  Lazily, each branch is read
    on first touch (uproot), at most once.

    Raises :class:`DataError` for a file, tree or entry range that cannot be read, and for a
    column or prefetched name that is no branch, collection or field path of the tree (the
    message offers close names) or one uproot cannot interpret.  On a lazy array a branch
    that turns out unreadable raises :class:`DataError` when first touched, inside the
    processor."""
    opened = _open_tree(chunk)
    if columns is None:
        reader = LazyReader(opened.tree, chunk)
        reader.prefetch(select(opened.layout, prefetch, chunk).branch_names())
        return reader.events(opened.layout)
    return _read_eager(opened.tree, chunk, select(opened.layout, columns, chunk))


def discover_columns(
    process: Callable[[ak.Array], Any], chunk: Chunk, max_entries: int = 1000
) -> list[str]:
    """Branches whose data ``process`` reads, found by running it on the first ``max_entries``
    entries of ``chunk`` through a lazy array; in tree order, ready for
    ``read_chunk(chunk, prefetch=...)``. A field used only for its structure is not among them
    (``ak.num(events.Muon.pt)`` reads ``nMuon`` alone): with ``read_chunk(chunk, columns=...)``
    the processor would not find it.

    An exception from ``process`` propagates (with a note saying where it ran): a processor that
    fails on a sample would fail in every job, and it is cheaper to learn it here.  A file,
    tree or entry range that cannot be read raises :class:`DataError`, as in
    :func:`read_chunk`.
    """
    stop = min(chunk.stop, chunk.start + max_entries)
    sample = Chunk(chunk.file_index, chunk.path, chunk.tree, chunk.start, stop)
    opened = _open_tree(sample)
    reader = LazyReader(opened.tree, sample)
    events = reader.events(opened.layout)
    try:
        materialize(process(events))  # lazy arrays in the result still owe their reads
    except Exception as exc:
        exc.add_note(f"while discovering columns on {sample.key}; pass columns= to skip this")
        raise
    return [name for name in opened.layout.branch_names() if name in reader.touched]


@dataclass
class _Opened:
    stamp: tuple[int, int] | None
    tree: Tree
    layout: Layout


_open_trees: OrderedDict[tuple[str, str], _Opened] = OrderedDict()
_open_lock = threading.Lock()


def _forget_open_trees() -> None:
    """In a forked child: a file object shared with the parent shares its read offset, so
    concurrent reads would interleave; the child opens its own."""
    global _open_lock
    _open_trees.clear()
    _open_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_open_trees)


def _open_tree(chunk: Chunk) -> _Opened:
    """The chunk's tree and layout, from the cache when the file has not changed; checks the
    entry range. Evicted trees are not closed: a lazy array may still read from one, and the
    file closes when the last reference goes."""
    key = (chunk.path, chunk.tree)
    stamp = _stamp(chunk.path)
    with _open_lock:
        opened = _open_trees.get(key)
        if opened is not None and opened.stamp == stamp:
            _open_trees.move_to_end(key)
        else:
            opened = None
    if opened is None:
        handle = open_file(chunk.path, chunk.tree)
        try:
            with reads.measured(chunk.path, handle.file):  # the tree's metadata
                tree = get_tree(handle, chunk.path, chunk.tree)
                opened = _Opened(stamp, tree, tree_layout(tree))
        except BaseException:
            handle.close()
            raise
        with _open_lock:
            _open_trees[key] = opened
            while len(_open_trees) > OPEN_TREES:
                _open_trees.popitem(last=False)
    _check_range(opened.tree, chunk)
    return opened


def _stamp(path: str) -> tuple[int, int] | None:
    """Size and mtime of a local file (a rewritten file is opened again); None for URLs, whose
    files are immutable once registered, as grid files are."""
    if is_url(path):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)  # missing: never matches, so open_file reports it
    return (st.st_mtime_ns, st.st_size)


def _check_range(tree: Tree, chunk: Chunk) -> None:
    entries = tree.num_entries
    if not 0 <= chunk.start <= chunk.stop <= entries:
        raise DataError(
            chunk.path,
            chunk.tree,
            f"entry range outside the tree, which has {entries} entries",
            chunk.start,
            chunk.stop,
        )


def materialize(result: Any) -> None:
    """Read now what lazy awkward arrays in a processor's ``result`` (alone, or in dicts,
    lists and tuples) still owe, so a read error is raised here, not when it is pickled.

    Returns nothing (the arrays are filled in place); a branch that cannot be read raises
    :class:`DataError`.  Other values (histograms, numbers) are left alone."""
    if isinstance(result, ak.Array | ak.Record):
        ak.materialize(result)
    elif isinstance(result, dict):
        for value in result.values():
            materialize(value)
    elif isinstance(result, list | tuple):
        for value in result:
            materialize(value)


def _read_eager(tree: Tree, chunk: Chunk, layout: Layout) -> ak.Array:
    try:
        with reads.measured(chunk.path, tree.file):
            arrays = tree.read(layout.branch_names(), chunk.start, chunk.stop)
    except Exception as exc:
        raise DataError(
            chunk.path, chunk.tree, f"cannot read: {describe(exc)}", chunk.start, chunk.stop
        ) from exc
    contents = [
        _eager_collection(f, arrays, chunk) if isinstance(f, Collection) else arrays[f].layout
        for f in layout.fields
    ]
    return ak.Array(ak.contents.RecordArray(contents, layout.field_names(), length=chunk.entries))


def _eager_collection(
    coll: Collection, arrays: dict[str, ak.Array], chunk: Chunk
) -> ak.contents.ListOffsetArray:
    """Jagged records from the member branches read, their counts checked against each other."""
    lists = {k: packed_lists(arrays[b]) for k, b in coll.members.items()}
    if coll.counter in arrays:
        offsets = offsets_from_counts(arrays[coll.counter])
    else:
        offsets = np.asarray(next(iter(lists.values())).offsets.data, np.int64)
    for k, lst in lists.items():
        if not np.array_equal(lst.offsets.data, offsets):
            raise DataError(
                chunk.path,
                chunk.tree,
                f"branch {coll.members[k]!r} does not have the counts of {coll.name}",
                chunk.start,
                chunk.stop,
            )
    records = ak.contents.RecordArray(
        [lst.content for lst in lists.values()], list(lists), length=int(offsets[-1])
    )
    return ak.contents.ListOffsetArray(ak.index.Index64(offsets), records)
