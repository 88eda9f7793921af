"""Read one chunk as an awkward array of events, shaped the way NanoAOD analyses expect.

Shape. Jagged branches that share a prefix and a counter, ``Muon_pt, Muon_eta, ...`` counted by
``nMuon``, become one field ``Muon`` of jagged records (``events.Muon.pt``); every other branch
keeps its name as a field (``nMuon``, ``run``, ``MET_pt``, and all branches of flat files such as
``M`` or ``pt1``). The grouping is decided from the whole tree's branch types, never from the
columns asked for, so a processor sees the same structure whichever columns are read.

Which branches are read. Two ways, and both give that same structure:

* ``read_chunk(chunk, columns=[...])`` reads exactly those branches, eagerly, with one
  ``tree.arrays(...)`` call. A column is a branch name, a collection name (``"Muon"``: all of
  its branches) or a field path (``"Muon.pt"``). This is what jobs use: it always works and its
  cost is known before the job runs.
* ``read_chunk(chunk)`` returns a *lazy* array of every branch, built with awkward's virtual
  buffers (``ak.from_buffers`` with callables): a branch is read the first time an operation
  needs its data, and never otherwise.

Column discovery (:func:`discover_columns`) runs the processor once on a lazy array of the first
entries of a chunk and returns the branches it actually read, for the jobs' ``columns=``. The
processor runs on real numbers, so it may fill histograms and call numpy freely, which a
typetracer (dask-awkward's way) cannot do. The limit: a branch touched only in a code path the
sample never takes is missed, and the job then fails with awkward's "no field" error; pass
``columns=`` explicitly in that case, or let jobs read lazily.

Failures to read become :class:`~panda_lab.analysis.errors.DataError` with file, tree, entry
range and reason, also when they happen later, inside a lazy branch read.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import awkward as ak
import numpy as np

from panda_lab.analysis.chunking import Chunk
from panda_lab.analysis.errors import DataError
from panda_lab.analysis.files import _describe, get_tree, open_file


@dataclass
class Collection:
    """Jagged branches read as one field of records: ``members`` maps field to branch."""

    name: str
    counter: str | None
    members: dict[str, str] = field(default_factory=dict)


@dataclass
class Layout:
    """The fields of a tree's events, in branch order: plain branches and collections."""

    fields: list[str | Collection]
    forms: dict[str, ak.forms.Form]

    def branch_names(self) -> list[str]:
        names: list[str] = []
        for f in self.fields:
            names.extend(f.members.values() if isinstance(f, Collection) else [f])
        return names

    def collections(self) -> dict[str, Collection]:
        return {f.name: f for f in self.fields if isinstance(f, Collection)}


def tree_layout(tree: Any) -> Layout:
    """Decide the grouping of a tree's branches from their types (reads no basket)."""
    forms = {b.name: b.interpretation.awkward_form(tree.file) for b in tree.branches}
    candidates: dict[str, list[str]] = {}
    counters: dict[str, str | None] = {}
    for name, form in forms.items():
        prefix, _, rest = name.partition("_")
        jagged = isinstance(form, ak.forms.ListOffsetForm) and "__array__" not in form.parameters
        if jagged and prefix and rest:
            candidates.setdefault(prefix, []).append(name)
            count = tree[name].count_branch  # slow-ish in uproot: only for candidates
            counters[name] = count.name if count is not None else None
    groups: dict[str, Collection] = {}
    for prefix, names in candidates.items():
        if prefix in forms or len({counters[n] for n in names}) != 1:
            continue  # a branch is already called so, or the members are counted differently
        groups[prefix] = Collection(
            prefix, counters[names[0]], {n.partition("_")[2]: n for n in names}
        )
    fields: list[str | Collection] = []
    placed: set[str] = set()
    for name in forms:
        prefix = name.partition("_")[0]
        if prefix in groups and name in groups[prefix].members.values():
            if prefix not in placed:
                fields.append(groups[prefix])
                placed.add(prefix)
        else:
            fields.append(name)
    return Layout(fields, forms)


def select(layout: Layout, columns: Iterable[str], where: Chunk) -> Layout:
    """The part of ``layout`` that ``columns`` name (branches, collections or ``"Coll.field"``)."""
    wanted: set[str] = set()
    known = set(layout.forms)
    groups = layout.collections()
    for column in columns:
        coll, dot, sub = column.partition(".")
        if column in known:
            wanted.add(column)
        elif column in groups:
            wanted.update(groups[column].members.values())
        elif dot and coll in groups and sub in groups[coll].members:
            wanted.add(groups[coll].members[sub])
        else:
            close = difflib.get_close_matches(column, [*known, *groups], n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise DataError(
                where.path,
                where.tree,
                f"no branch or collection {column!r}{hint}",
                where.start,
                where.stop,
            )
    fields: list[str | Collection] = []
    for f in layout.fields:
        if isinstance(f, Collection):
            members = {k: v for k, v in f.members.items() if v in wanted}
            # Reading the counter alone still gives the collection (as records without
            # fields), so ``ak.num(events.Jet)`` works as it did on the lazy array.
            if members or f.counter in wanted:
                fields.append(Collection(f.name, f.counter, members))
        elif f in wanted:
            fields.append(f)
    return Layout(fields, {k: v for k, v in layout.forms.items() if k in wanted})


def read_chunk(chunk: Chunk, columns: Iterable[str] | None = None) -> ak.Array:
    """The events of ``chunk``: only ``columns`` if given (eager), else every branch, lazily."""
    handle = open_file(chunk.path, chunk.tree)
    try:
        tree = get_tree(handle, chunk.path, chunk.tree)
        _check_range(tree, chunk)
        layout = tree_layout(tree)
        if columns is None:
            # The lazy array's loaders keep the file open; it closes when they are collected.
            return _LazyReader(handle, tree, chunk).events(layout)
        events = _read_eager(tree, chunk, select(layout, columns, chunk))
    except BaseException:
        handle.close()
        raise
    handle.close()
    return events


def discover_columns(
    process: Callable[[ak.Array], Any], chunk: Chunk, max_entries: int = 1000
) -> list[str]:
    """Branches that ``process`` reads, found by running it on the first ``max_entries`` entries
    of ``chunk`` through a lazy array; in tree order, ready for ``read_chunk(columns=...)``.

    An exception from ``process`` propagates (with a note saying where it ran): a processor that
    fails on a sample would fail in every job, and it is cheaper to learn it here.
    """
    sample = Chunk(
        chunk.file_index,
        chunk.path,
        chunk.tree,
        chunk.start,
        min(chunk.stop, chunk.start + max_entries),
    )
    handle = open_file(sample.path, sample.tree)
    try:
        tree = get_tree(handle, sample.path, sample.tree)
        _check_range(tree, sample)
        layout = tree_layout(tree)
        reader = _LazyReader(handle, tree, sample)
        events = reader.events(layout)
        try:
            result = process(events)
            _materialize(result)  # lazy arrays in the result still owe their reads
        except Exception as exc:
            exc.add_note(f"while discovering columns on {sample.key}; pass columns= to skip this")
            raise
    finally:
        handle.close()
    return [name for name in layout.branch_names() if name in reader.touched]


def _materialize(result: Any) -> None:
    if isinstance(result, ak.Array | ak.Record):
        ak.materialize(result)
    elif isinstance(result, dict):
        for value in result.values():
            _materialize(value)
    elif isinstance(result, list | tuple):
        for value in result:
            _materialize(value)


def _check_range(tree: Any, chunk: Chunk) -> None:
    entries = int(tree.num_entries)
    if not 0 <= chunk.start <= chunk.stop <= entries:
        raise DataError(
            chunk.path,
            chunk.tree,
            f"entry range outside the tree, which has {entries} entries",
            chunk.start,
            chunk.stop,
        )


def _packed(array: ak.Array) -> ak.contents.Content:
    return ak.to_packed(array, highlevel=False)


def _packed_lists(array: ak.Array) -> ak.contents.ListOffsetArray:
    layout = ak.to_packed(array, highlevel=False)
    if not isinstance(layout, ak.contents.ListOffsetArray):
        layout = layout.to_ListOffsetArray64(True)
    return layout


def _read_eager(tree: Any, chunk: Chunk, layout: Layout) -> ak.Array:
    names = layout.branch_names()
    try:
        arrays = tree.arrays(names, entry_start=chunk.start, entry_stop=chunk.stop, how=dict)
    except Exception as exc:
        raise DataError(
            chunk.path, chunk.tree, f"cannot read: {_describe(exc)}", chunk.start, chunk.stop
        ) from exc
    contents: list[ak.contents.Content] = []
    for f in layout.fields:
        if isinstance(f, Collection):
            contents.append(_eager_collection(f, arrays, chunk))
        else:
            contents.append(arrays[f].layout)
    names_out = [f.name if isinstance(f, Collection) else f for f in layout.fields]
    return ak.Array(ak.contents.RecordArray(contents, names_out, length=chunk.entries))


def _eager_collection(
    coll: Collection, arrays: dict[str, ak.Array], chunk: Chunk
) -> ak.contents.ListOffsetArray:
    """Jagged records from the member branches read, their counts checked against each other."""
    lists = {k: _packed_lists(arrays[b]) for k, b in coll.members.items()}
    if coll.counter in arrays:
        offsets = _offsets_from_counts(arrays[coll.counter])
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


def _offsets_from_counts(counts: ak.Array) -> np.ndarray:
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(np.asarray(counts, dtype=np.int64), out=offsets[1:])
    return offsets


class _LazyReader:
    """Virtual buffers over one open file: each branch is read once, on first use.

    ``touched`` collects the branches read, which is what :func:`discover_columns` reports.
    """

    def __init__(self, handle: Any, tree: Any, chunk: Chunk) -> None:
        self.handle = handle  # kept so the file stays open while the array lives
        self.tree = tree
        self.chunk = chunk
        self.touched: set[str] = set()
        self._arrays: dict[str, ak.Array] = {}
        self._buffers: dict[str, dict[str, np.ndarray]] = {}
        self._offsets_of: dict[str, np.ndarray] = {}

    def events(self, layout: Layout) -> ak.Array:
        forms: list[ak.forms.Form] = []
        container: dict[str, Callable[[], np.ndarray]] = {}
        for f in layout.fields:
            if isinstance(f, Collection):
                forms.append(self._collection(f, layout, container))
            else:
                form, keys = self._keyed_form(f, layout.forms[f])
                forms.append(form)
                for key in keys:
                    container[key] = self._loader(f, key, _packed)
        names = [f.name if isinstance(f, Collection) else f for f in layout.fields]
        form = ak.forms.RecordForm(forms, names)
        return ak.from_buffers(form, self.chunk.entries, container)

    def _collection(self, coll: Collection, layout: Layout, container: dict) -> ak.forms.Form:
        contents = []
        for member in coll.members.values():
            form, keys = self._keyed_form(member, layout.forms[member].content)
            contents.append(form)
            for key in keys:
                container[key] = self._loader(member, key, self._member_content(coll))
        offsets_key = f"{coll.name}#offsets"
        container[f"{offsets_key}-offsets"] = lambda: self._offsets(coll)
        record = ak.forms.RecordForm(contents, list(coll.members))
        return ak.forms.ListOffsetForm("i64", record, form_key=offsets_key)

    def _keyed_form(self, branch: str, form: ak.forms.Form) -> tuple[ak.forms.Form, list[str]]:
        """``form`` with form keys unique to ``branch``, and the container keys it needs.

        The keys are those ``ak.to_buffers(..., form_key=f"{branch}#{{id}}")`` gives, which is
        how the loaders cut a branch into buffers. The two shapes of nearly every NanoAOD branch
        are keyed directly; anything else goes through a zero-length array, which is slower.
        """
        numpy_form = ak.forms.NumpyForm
        if isinstance(form, numpy_form) and not form.inner_shape:
            return form.copy(form_key=f"{branch}#0"), [f"{branch}#0-data"]
        if (
            isinstance(form, ak.forms.ListOffsetForm)
            and isinstance(form.content, numpy_form)
            and not form.content.inner_shape
        ):
            content = form.content.copy(form_key=f"{branch}#1")
            keyed = form.copy(content=content, form_key=f"{branch}#0")
            return keyed, [f"{branch}#0-offsets", f"{branch}#1-data"]
        keyed, _, buffers = ak.to_buffers(form.length_zero_array(), form_key=f"{branch}#{{id}}")
        return keyed, list(buffers)

    def _error(self, reason: str) -> DataError:
        c = self.chunk
        return DataError(c.path, c.tree, reason, c.start, c.stop)

    def _read(self, branch: str) -> ak.Array:
        if branch not in self._arrays:
            c = self.chunk
            try:
                self._arrays[branch] = self.tree[branch].array(
                    entry_start=c.start, entry_stop=c.stop, library="ak"
                )
            except Exception as exc:
                raise self._error(f"cannot read {branch!r}: {_describe(exc)}") from exc
            self.touched.add(branch)
        return self._arrays[branch]

    def _offsets(self, coll: Collection) -> np.ndarray:
        """The collection's offsets from its counter branch, the cheapest one to read."""
        if coll.name not in self._offsets_of:
            if coll.counter is not None and coll.counter in self.tree:
                offsets = _offsets_from_counts(self._read(coll.counter))
            else:
                first = next(iter(coll.members.values()))
                offsets = np.asarray(_packed_lists(self._read(first)).offsets.data, np.int64)
            self._offsets_of[coll.name] = offsets
        return self._offsets_of[coll.name]

    def _member_content(self, coll: Collection) -> Callable[[ak.Array], ak.contents.Content]:
        def content(arr: ak.Array) -> ak.contents.Content:
            lists = _packed_lists(arr)
            expected = int(self._offsets(coll)[-1])
            if len(lists.content) != expected:
                raise self._error(
                    f"{coll.name} branches disagree on their counts "
                    f"({len(lists.content)} values, {expected} expected)"
                )
            return lists.content

        return content

    def _loader(
        self, branch: str, key: str, part: Callable[[ak.Array], ak.contents.Content]
    ) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            if branch not in self._buffers:
                content = part(self._read(branch))
                _, _, buffers = ak.to_buffers(content, form_key=f"{branch}#{{id}}")
                self._buffers[branch] = buffers
            buffers = self._buffers[branch]
            if key not in buffers:
                raise self._error(f"branch {branch!r} does not hold the type it declares")
            return buffers[key]

        return load
