"""How a tree's branches become the fields of an events array (coffea calls this a schema).

Jagged branches that share a prefix and a counter, ``Muon_pt, Muon_eta, ...`` counted by
``nMuon``, become one field ``Muon`` of jagged records (``events.Muon.pt``); every other branch
keeps its name as a field (``nMuon``, ``run``, ``MET_pt``, all branches of flat files such as
``M`` or ``pt1``). A prefix is not grouped when a branch already has that name, or when its
branches have different counters; strings are never members.

An RNTuple (:mod:`.trees`) is read the same way: its fields are the branches, and a collection it
stores as records (``Muon``, a list of ``{pt, eta, ...}``, as uproot writes ``{"Muon": muons}``)
is a field of jagged records already, ``events.Muon.pt`` with ``Muon.pt`` as the column name.

The grouping is decided once per tree from branch types alone (no basket is read) and the
columns a job asks for only select from it, so a processor sees the same structure whichever
branches are read, eagerly or lazily.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import awkward as ak
import numpy as np

from panda_lab.analysis.errors import DataError
from panda_lab.analysis.trees import Tree
from panda_lab.model.splitter import Chunk


@dataclass
class Collection:
    """Jagged branches read as one field of records: ``members`` maps field to branch."""

    name: str
    counter: str | None
    members: dict[str, str] = field(default_factory=dict)


@dataclass
class Layout:
    """The fields of a tree's events, in branch order: branch names and collections.

    ``forms`` has the awkward form of each readable branch; ``unreadable`` the reason for each
    branch uproot cannot interpret, so asking for one names the problem instead of failing the
    whole file.
    """

    fields: list[str | Collection]
    forms: dict[str, ak.forms.Form]
    unreadable: dict[str, str] = field(default_factory=dict)

    def branch_names(self) -> list[str]:
        """Every branch the layout reads, in field order (a collection's members in turn)."""
        names: list[str] = []
        for f in self.fields:
            names.extend(f.members.values() if isinstance(f, Collection) else [f])
        return names

    def field_names(self) -> list[str]:
        """The events' top-level field names: branch names and collection names."""
        return [f.name if isinstance(f, Collection) else f for f in self.fields]

    def collections(self) -> dict[str, Collection]:
        """The collections by name (``"Muon"`` -> its :class:`Collection`)."""
        return {f.name: f for f in self.fields if isinstance(f, Collection)}


def tree_layout(tree: Tree) -> Layout:
    """The grouping of all of a tree's columns, from their types (NanoAOD's naming rule:
    jagged branches ``Muon_pt``, ``Muon_eta`` sharing the counter ``nMuon`` make the
    collection ``Muon``, as coffea's NanoEvents groups them).  A collection the format
    stores as records (an RNTuple's ``Muon`` field of ``{pt, eta, ...}``) is one already,
    its members the columns ``Muon.pt``, ...; its counter, as a grouped one's, is the
    column the tree names (an RNTuple: ``nMuon`` when there is one).

    ``tree`` is a :class:`~panda_lab.analysis.trees.Tree` (a TTree or an RNTuple).  Returns
    a :class:`Layout`; a column uproot cannot interpret goes to ``Layout.unreadable`` with
    the reason instead of raising, so only asking for it fails."""
    forms, unreadable = tree.forms()
    stored = {
        name: Collection(name, tree.counter(next(iter(members.values())), forms), members)
        for name, members in tree.collections(forms).items()
    }
    member_of = {c: coll for coll in stored.values() for c in coll.members.values()}
    candidates: dict[str, list[str]] = {}
    counters: dict[str, str | None] = {}
    for name, form in forms.items():
        prefix, _, rest = name.partition("_")
        jagged = isinstance(form, ak.forms.ListOffsetForm) and "__array__" not in form.parameters
        if jagged and prefix and rest and name not in member_of:
            candidates.setdefault(prefix, []).append(name)
            counters[name] = tree.counter(name, forms)  # slow-ish on a TTree: only these
    groups: dict[str, Collection] = {}
    for prefix, names in candidates.items():
        taken = prefix in forms or prefix in unreadable or prefix in stored
        if taken or len({counters[n] for n in names}) != 1:
            continue
        groups[prefix] = Collection(
            prefix, counters[names[0]], {n.partition("_")[2]: n for n in names}
        )
    fields: list[str | Collection] = []
    for name in forms:
        group = member_of.get(name) or groups.get(name.partition("_")[0])
        if group is None or name not in group.members.values():
            fields.append(name)
        elif group not in fields:
            fields.append(group)
    return Layout(fields, forms, unreadable)


def select(layout: Layout, columns: Iterable[str], where: Chunk) -> Layout:
    """The part of ``layout`` that ``columns`` name: branches, collections (all their
    branches) or field paths ``"Muon.pt"``. Reading a counter alone keeps its collection, as
    records without fields, so ``ak.num(events.Jet)`` works as it did on the lazy array.

    Returns a new :class:`Layout` in the tree's field order (without ``unreadable``).
    Raises :class:`DataError` for ``where`` (file, tree, entry range) naming a column that
    uproot cannot read, with uproot's reason, or that is no branch, collection or field path
    (with up to three close names, difflib)."""
    wanted: set[str] = set()
    groups = layout.collections()
    for column in columns:
        coll, dot, sub = column.partition(".")
        if column in layout.forms:
            wanted.add(column)
        elif column in groups:
            wanted.update(groups[column].members.values())
        elif dot and coll in groups and sub in groups[coll].members:
            wanted.add(groups[coll].members[sub])
        elif column in layout.unreadable:
            raise _error(where, f"uproot cannot read {column!r}: {layout.unreadable[column]}")
        else:
            close = difflib.get_close_matches(column, [*layout.forms, *groups], n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise _error(where, f"no branch or collection {column!r}{hint}")
    fields: list[str | Collection] = []
    for f in layout.fields:
        if isinstance(f, Collection):
            members = {k: v for k, v in f.members.items() if v in wanted}
            if members or f.counter in wanted:
                fields.append(Collection(f.name, f.counter, members))
        elif f in wanted:
            fields.append(f)
    return Layout(fields, {k: v for k, v in layout.forms.items() if k in wanted})


def packed_lists(array: ak.Array) -> ak.contents.ListOffsetArray:
    """A jagged branch as offsets (from 0) and exactly the content they cover: an awkward
    ``ListOffsetArray`` (``ak.to_packed``, then converted when it is another list type)."""
    layout = ak.to_packed(array, highlevel=False)
    if not isinstance(layout, ak.contents.ListOffsetArray):
        layout = layout.to_ListOffsetArray64(True)
    return layout


def offsets_from_counts(counts: Any) -> np.ndarray:
    """Offsets of a collection from its counter branch, the cheapest branch to read.

    Returns an int64 array of ``len(counts) + 1`` values, from 0 (a cumulative sum)."""
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(np.asarray(counts, dtype=np.int64), out=offsets[1:])
    return offsets


def _error(where: Chunk, reason: str) -> DataError:
    return DataError(where.path, where.tree, reason, where.start, where.stop)
