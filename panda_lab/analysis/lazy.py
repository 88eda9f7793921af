"""Lazy events: an awkward array whose branches are read the first time they are needed.

Built with awkward's virtual buffers (``ak.from_buffers`` with callables, awkward >= 2.8): each
buffer of the array is a function that reads its branch for the chunk's entry range, once, and
cuts it into awkward buffers. Operations materialize only the buffers they touch, so a processor
reads exactly the branches it uses; :attr:`LazyReader.touched` records them, which is how
column discovery works.

The structure (every field, its type) comes from the tree's metadata, so a field used only for
its structure is there without being read: ``ak.num(events.Muon.pt)`` reads the counter
``nMuon`` alone, ``ak.fields(events.Muon)`` and ``events.Muon.pt.type`` read nothing.
:meth:`LazyReader.prefetch` reads branches known to be needed up front, in one request.
"""

from __future__ import annotations

from collections.abc import Callable

import awkward as ak
import numpy as np

from panda_lab import reads
from panda_lab.analysis.errors import DataError
from panda_lab.analysis.files import describe
from panda_lab.analysis.schema import Collection, Layout, offsets_from_counts, packed_lists
from panda_lab.analysis.trees import Tree
from panda_lab.model.splitter import Chunk


class LazyReader:
    """Virtual buffers over one open tree (a :class:`~.trees.Tree`: a TTree or an RNTuple)
    for one chunk; each branch is read at most once.

    The reader holds the tree (so the file stays open while the array lives) and the branches
    read so far; it is dropped, and the file can close, when the array is.
    """

    def __init__(self, tree: Tree, chunk: Chunk) -> None:
        self.tree = tree
        self.chunk = chunk
        self.touched: set[str] = set()
        self._arrays: dict[str, ak.Array] = {}
        self._buffers: dict[str, dict[str, np.ndarray]] = {}
        self._offsets_of: dict[str, np.ndarray] = {}

    def events(self, layout: Layout) -> ak.Array:
        """The chunk's events as a lazy awkward Array of ``chunk.entries`` records, the
        fields of ``layout``; nothing is read until a field's buffers are touched.

        A branch that cannot be read, whose members disagree on their counts, or that does
        not hold its declared type raises :class:`DataError` when touched, not here."""
        forms: list[ak.forms.Form] = []
        container: dict[str, Callable[[], np.ndarray]] = {}
        for f in layout.fields:
            if isinstance(f, Collection):
                forms.append(self._collection(f, layout, container))
                continue
            form, keys = keyed_form(f, layout.forms[f])
            forms.append(form)
            for key in keys:
                container[key] = self._loader(f, key, _packed)
        form = ak.forms.RecordForm(forms, layout.field_names())
        return ak.from_buffers(form, self.chunk.entries, container)

    def _collection(self, coll: Collection, layout: Layout, container: dict) -> ak.forms.Form:
        contents = []
        for member in coll.members.values():
            form, keys = keyed_form(member, layout.forms[member].content)
            contents.append(form)
            for key in keys:
                container[key] = self._loader(member, key, self._member_content(coll))
        offsets_key = f"{coll.name}#offsets"
        container[f"{offsets_key}-offsets"] = lambda: self._offsets(coll)
        record = ak.forms.RecordForm(contents, list(coll.members))
        return ak.forms.ListOffsetForm("i64", record, form_key=offsets_key)

    def prefetch(self, branches: list[str]) -> None:
        """Read ``branches`` now, with one request for all of them (cheaper than one per
        branch, on remote files above all); the array then takes them from here.

        Raises :class:`DataError` (file, tree, entry range, reason) when one cannot be read."""
        wanted = [b for b in branches if b not in self._arrays]
        if not wanted:
            return
        c = self.chunk
        try:
            with reads.measured(c.path, self.tree.file):
                arrays = self.tree.read(wanted, c.start, c.stop)
        except Exception as exc:
            raise self._error(f"cannot read: {describe(exc)}") from exc
        self._arrays.update(arrays)
        self.touched.update(wanted)

    def _error(self, reason: str) -> DataError:
        c = self.chunk
        return DataError(c.path, c.tree, reason, c.start, c.stop)

    def _read(self, branch: str) -> ak.Array:
        if branch not in self._arrays:
            c = self.chunk
            try:
                with reads.measured(c.path, self.tree.file):
                    self._arrays[branch] = self.tree.read_one(branch, c.start, c.stop)
            except Exception as exc:
                raise self._error(f"cannot read {branch!r}: {describe(exc)}") from exc
            self.touched.add(branch)
        return self._arrays[branch]

    def _offsets(self, coll: Collection) -> np.ndarray:
        if coll.name not in self._offsets_of:
            if coll.counter is not None and coll.counter in self.tree:
                offsets = offsets_from_counts(self._read(coll.counter))
            else:
                first = next(iter(coll.members.values()))
                offsets = np.asarray(packed_lists(self._read(first)).offsets.data, np.int64)
            self._offsets_of[coll.name] = offsets
        return self._offsets_of[coll.name]

    def _member_content(self, coll: Collection) -> Callable[[ak.Array], ak.contents.Content]:
        def content(array: ak.Array) -> ak.contents.Content:
            lists = packed_lists(array)
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


def keyed_form(branch: str, form: ak.forms.Form) -> tuple[ak.forms.Form, list[str]]:
    """``form`` with form keys unique to ``branch``, and the container keys it needs.

    The keys are those ``ak.to_buffers(..., form_key=f"{branch}#{{id}}")`` gives, which is how
    the loaders cut a branch into buffers. The two shapes of nearly every NanoAOD branch are
    keyed directly; anything else goes through a zero-length array, which is slower.

    Returns ``(keyed form, container keys)``, e.g. ``["Muon_pt#0-offsets",
    "Muon_pt#1-data"]`` for a jagged float branch.
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


def _packed(array: ak.Array) -> ak.contents.Content:
    return ak.to_packed(array, highlevel=False)
