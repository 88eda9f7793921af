"""One view of a tree-like object, a TTree or an RNTuple, for inspecting, splitting and reading.

ROOT keeps event data in two formats, and uproot reads both, through different objects:

* the **TTree** (``uproot.TTree``): branches, each cut into baskets; a range of entries reads
  without touching a basket twice when it starts and stops where *every* branch starts a basket
  (uproot's ``common_entry_offsets``); a jagged branch ``Muon_pt`` names its counter
  ``nMuon`` in its metadata (``count_branch``);
* the **RNTuple** (``uproot.models.RNTuple``; ROOT's RNTuple binary format specification,
  ``tree/ntuple/doc/BinaryFormatSpecification.md``), ROOT's successor for Run 4 and what
  ``f["Events"] = {...}`` writes in uproot 5.7: fields, their pages grouped into *clusters*
  that hold the same entries for every column (the footer's cluster summaries: first entry and
  entry count of each), so the cluster starts are the boundaries. A collection is a field of its
  own (``Muon``, a list of records ``{pt, eta, ...}``), whose subfields (``Muon.pt``) read as
  jagged columns; the ``Muon_pt``/``nMuon`` fields of a NanoAOD converted by ROOT's
  RNTupleImporter are projections and cardinalities of such collections.

A :class:`Tree` is what the rest of the analysis code sees of either: entries, cluster starts,
column names, each column's awkward form, the counter of a jagged column, the collections the
format itself stores as records, and reads of columns over an entry range.  A *column* is a
branch of a TTree, or a top-level field or a subfield of a collection of an RNTuple
(``Muon.pt``).  :class:`TTreeView` makes exactly the uproot calls the TTree reading always
made; :class:`RNTupleView` makes the RNTuple's.  :func:`tree_view` picks one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import awkward as ak

TREE_CLASSES = ("TTree", "TNtuple", "TNtupleD")
"""ROOT classes read as a TTree."""

RNTUPLE_CLASSES = ("ROOT::RNTuple",)
"""ROOT classes read as an RNTuple (format 1.0, ROOT 6.34 on; uproot 5.7 reads these)."""

TREE_LIKE_CLASSES = TREE_CLASSES + RNTUPLE_CLASSES


class Tree(ABC):
    """A TTree or an RNTuple as the analysis reads it; ``obj`` is uproot's object, ``kind``
    ``"TTree"`` or ``"RNTuple"``."""

    kind: str

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    @property
    def file(self) -> Any:
        """The uproot file the tree is read from (its source counts bytes and requests)."""
        return getattr(self.obj, "file", None)

    @property
    def num_entries(self) -> int:
        """Entries (events) in the tree."""
        return int(self.obj.num_entries)

    @abstractmethod
    def cluster_starts(self) -> list[int]:
        """Entry numbers where a range can start and stop without reading a basket or page
        twice, as the format gives them (unsorted, and maybe with 0 and ``num_entries``)."""

    @abstractmethod
    def column_names(self) -> list[str]:
        """Every name a column can be asked for by, nested ones too (``FileInfo.branches``)."""

    @abstractmethod
    def forms(self) -> tuple[dict[str, ak.forms.Form], dict[str, str]]:
        """``(forms, unreadable)``: the awkward form of each readable column, in the tree's
        order (a stored collection's member columns where the collection is), and the reason
        for each column uproot cannot interpret."""

    @abstractmethod
    def counter(self, column: str, forms: dict[str, ak.forms.Form]) -> str | None:
        """The column counting the items of jagged ``column`` per entry (``nMuon`` for
        ``Muon_pt``), or ``None``; ``forms`` is :meth:`forms`'s first part."""

    def collections(self, forms: dict[str, ak.forms.Form]) -> dict[str, dict[str, str]]:
        """Collections the format stores as lists of records: name -> {field: column}, each
        column among ``forms``.  A TTree stores none (uproot flattens records to branches)."""
        return {}

    @abstractmethod
    def __contains__(self, column: str) -> bool:
        """Whether ``column`` names a column of the tree."""

    @abstractmethod
    def read(self, columns: list[str], start: int, stop: int) -> dict[str, ak.Array]:
        """``columns`` over entries ``[start, stop)``, with one request: column -> array
        (maybe other keys too).  Whatever uproot raises propagates."""

    @abstractmethod
    def read_one(self, column: str, start: int, stop: int) -> ak.Array:
        """One column over entries ``[start, stop)``.  Whatever uproot raises propagates."""


class TTreeView(Tree):
    """A TTree: branches, baskets, count branches."""

    kind = "TTree"

    def cluster_starts(self) -> list[int]:
        return [int(o) for o in self.obj.common_entry_offsets()]

    def column_names(self) -> list[str]:
        return list(self.obj.keys(recursive=True))

    def forms(self) -> tuple[dict[str, ak.forms.Form], dict[str, str]]:
        from panda_lab.analysis.files import describe

        forms: dict[str, ak.forms.Form] = {}
        unreadable: dict[str, str] = {}
        for branch in self.obj.branches:
            try:
                forms[branch.name] = branch.interpretation.awkward_form(self.obj.file)
            except Exception as exc:
                unreadable[branch.name] = describe(exc)
        return forms, unreadable

    def counter(self, column: str, forms: dict[str, ak.forms.Form]) -> str | None:
        count = self.obj[column].count_branch  # slow-ish in uproot: only for jagged ones
        return count.name if count is not None else None

    def __contains__(self, column: str) -> bool:
        return column in self.obj

    def read(self, columns: list[str], start: int, stop: int) -> dict[str, ak.Array]:
        return self.obj.arrays(columns, entry_start=start, entry_stop=stop, how=dict)

    def read_one(self, column: str, start: int, stop: int) -> ak.Array:
        return self.obj[column].array(entry_start=start, entry_stop=stop, library="ak")


class RNTupleView(Tree):
    """An RNTuple: fields, clusters, collections of records.

    The forms come from one ``to_akform()`` of the whole RNTuple, cached with the view:
    uproot parses the field tree then, which for a NanoAOD of a thousand fields takes
    seconds (uproot's own reading pays it too), and a file's tree is kept open per process
    (:mod:`.events`)."""

    kind = "RNTuple"

    def __init__(self, obj: Any) -> None:
        super().__init__(obj)
        self._forms: tuple[dict[str, ak.forms.Form], dict[str, str]] | None = None

    def cluster_starts(self) -> list[int]:
        starts = []
        for c in self.obj.cluster_summaries:
            starts += [int(c.num_first_entry), int(c.num_first_entry) + int(c.num_entries)]
        return starts

    def column_names(self) -> list[str]:
        return list(self.obj.keys(recursive=True, full_paths=True))

    def forms(self) -> tuple[dict[str, ak.forms.Form], dict[str, str]]:
        if self._forms is None:
            self._forms = self._read_forms()
        return self._forms

    def _read_forms(self) -> tuple[dict[str, ak.forms.Form], dict[str, str]]:
        from panda_lab.analysis.files import describe

        unreadable: dict[str, str] = {}
        try:
            whole, _ = self.obj.to_akform()
            tops = dict(zip(whole.fields, whole.contents, strict=True))
        except Exception:  # one field uproot cannot interpret: find which, keep the others
            tops = {}
            for name in self.obj.keys(recursive=False):
                try:
                    form, _ = self.obj[name].to_akform()
                    tops[name] = form.contents[0]
                except Exception as exc:
                    unreadable[name] = describe(exc)
        forms: dict[str, ak.forms.Form] = {}
        for name, form in tops.items():
            record = _list_of_records(form)
            if record is None:
                forms[name] = form
                continue
            for field, content in zip(record.fields, record.contents, strict=True):
                forms[f"{name}.{field}"] = ak.forms.ListOffsetForm("i64", content)
        return forms, unreadable

    def collections(self, forms: dict[str, ak.forms.Form]) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for column in forms:
            name, dot, field = column.partition(".")
            if dot:
                out.setdefault(name, {})[field] = column
        return out

    def counter(self, column: str, forms: dict[str, ak.forms.Form]) -> str | None:
        # No counter in the metadata: a collection's own offsets count it.  NanoAOD names
        # its counter n<Collection> (RNTupleImporter keeps it, as a cardinality field).
        name = "n" + column.partition(".")[0].partition("_")[0]
        form = forms.get(name)
        is_count = (isinstance(form, ak.forms.NumpyForm) and not form.inner_shape
                    and form.primitive.startswith(("int", "uint")))
        return name if is_count else None

    def __contains__(self, column: str) -> bool:
        return column in self.forms()[0]

    def read(self, columns: list[str], start: int, stop: int) -> dict[str, ak.Array]:
        # uproot takes the names as filters and returns the top-level fields: a subfield
        # ``Muon.pt`` comes back as the records ``Muon`` holding only ``pt``.
        got = self.obj.arrays(columns, entry_start=start, entry_stop=stop, how=dict)
        return {c: _column(got, c) for c in columns}

    def read_one(self, column: str, start: int, stop: int) -> ak.Array:
        return self.obj[column].array(entry_start=start, entry_stop=stop, library="ak")


def tree_view(obj: Any) -> Tree | None:
    """The :class:`Tree` over uproot's object ``obj``, or ``None`` when it is neither a TTree
    nor an RNTuple (a histogram, a directory, ...)."""
    import uproot

    if isinstance(obj, uproot.behaviors.TTree.TTree):
        return TTreeView(obj)
    if isinstance(obj, uproot.behaviors.RNTuple.RNTuple):
        return RNTupleView(obj)
    return None


def _list_of_records(form: ak.forms.Form) -> ak.forms.RecordForm | None:
    """The record of a ``var * {a, b, ...}`` form (not a tuple), else ``None``."""
    if isinstance(form, ak.forms.ListOffsetForm | ak.forms.ListForm) and isinstance(
        form.content, ak.forms.RecordForm
    ) and not form.content.is_tuple and form.content.fields:
        return form.content
    return None


def _column(arrays: dict[str, ak.Array], column: str) -> ak.Array:
    top, dot, field = column.partition(".")
    return arrays[top][field] if dot else arrays[top]
