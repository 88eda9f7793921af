"""What the splitter needs to know about one input file, read from its metadata only.

:func:`inspect_file` opens a file, finds the tree (a TTree or an RNTuple, see :mod:`.trees`) and
returns a :class:`FileInfo`: entries, size and the *cluster boundaries*, the entries at which
every branch starts a new basket (a TTree) or a new cluster starts (an RNTuple). A job that
starts and stops on those boundaries decompresses each basket or page once, so the splitter only
cuts there. No basket is read, so inspecting a remote file costs a few small requests.

Problems become :class:`~panda_lab.analysis.errors.DataError` with the file, the tree and a
reason a user can act on (the trees that do exist, the size the file should have, ...).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from panda_lab import reads
from panda_lab.analysis.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from panda_lab.analysis.trees import Tree


@dataclass
class FileInfo:
    """One input file as the splitter sees it; ``tree`` names a TTree or an RNTuple, and
    ``branches`` are its column names (an RNTuple's fields, ``Muon.pt`` for a subfield).

    ``clusters`` starts at 0, ends at ``entries`` and is strictly increasing (just ``[0]`` for an
    empty tree); any two neighbours bound a range that can be read without touching a basket
    twice.
    """

    path: str
    tree: str
    entries: int
    size_bytes: int
    clusters: list[int]
    branches: list[str]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, for shipping to the server or storing with a task: the
        fields by name (``dataclasses.asdict``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileInfo:
        """From stored file metadata; other keys there (``replicas``, ...) are ignored.
        ``KeyError`` when one of the fields is missing."""
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def is_url(path: str | Path) -> bool:
    """True for ``scheme://...`` addresses (``root://``, ``https://``, ``file://``)."""
    return "://" in str(path)


def open_file(path: str | Path, tree: str | None = None) -> Any:
    """Open a ROOT file with uproot, turning every failure into a :class:`DataError`.

    Local paths go to uproot as ``Path`` objects so a colon in a file name is never read as
    uproot's ``file.root:object`` syntax.  ``tree`` only names the tree in the error.

    Returns uproot's open ``ReadOnlyDirectory`` (the caller closes it).  Raises
    :class:`DataError` whose ``reason`` is "file not found", "permission denied", "not a
    ROOT file or corrupt: ..." (local) or "cannot open: ..." (URL), or "truncated: ..." when
    a local file is shorter than its header's ``fEND`` says (a copy cut short).
    """
    import uproot  # here, not at the top: the splitter imports FileInfo without reading files

    name = str(path)
    local = not is_url(path)
    if local and not os.path.exists(name):
        raise DataError(name, tree, "file not found")
    from panda_lab.analysis.readcache import cache_for

    # one bounded cache of read arrays for the whole process (see .readcache); a bad
    # PANDA_LAB_READ_CACHE raises its own ValueError, naming it: the file is not at fault
    cache = cache_for(name, local)
    try:
        handle = uproot.open(Path(name) if local else name, array_cache=cache)
        # Opening reads the header and the keys: bytes and requests of the file's
        # endpoint, but not its time, which is the client's setting up (imports, a
        # connection pool), not the link's.
        nbytes, requests = _source_counts(handle)
        reads.add(reads.endpoint_of(name), nbytes, 0.0, requests)
    except PermissionError as exc:
        raise DataError(name, tree, "permission denied") from exc
    except Exception as exc:
        problem = "not a ROOT file or corrupt" if local else "cannot open"
        raise DataError(name, tree, f"{problem}: {describe(exc)}") from exc
    if local:
        # A copy cut short still opens (the header is at the start) and fails later, deep in a
        # basket; the header's own idea of the file size catches it up front.
        declared, actual = int(handle.file.fEND), os.path.getsize(name)
        if actual < declared:
            handle.close()
            raise DataError(
                name, tree, f"truncated: the header says {declared} bytes, the file has {actual}"
            )
    return handle


def _source_counts(handle: Any) -> tuple[int, int]:
    """Bytes and requests an open file's source issued so far (uproot's counters)."""
    source = getattr(handle.file, "source", None)
    try:
        return int(source.num_requested_bytes), int(source.num_requests)
    except Exception:
        return 0, 0


def get_tree(handle: Any, path: str, tree: str) -> Tree:
    """The TTree or RNTuple ``tree`` of an open file, as a :class:`~.trees.Tree`; ``path``
    names the file in errors.

    Raises :class:`DataError`: "tree not found; trees in this file: ..." naming the trees
    (and RNTuples) that exist, "'Events' is a TH1D, not a TTree or an RNTuple" for another
    kind of object, or "cannot read the tree: ..." for anything else uproot raises."""
    import uproot

    from panda_lab.analysis.trees import tree_view

    try:
        obj = handle[tree]
    except uproot.KeyInFileError as exc:
        found = list_trees(handle)
        listed = ", ".join(repr(t) for t in found) if found else "none"
        raise DataError(path, tree, f"tree not found; trees in this file: {listed}") from exc
    except Exception as exc:
        raise DataError(path, tree, f"cannot read the tree: {describe(exc)}") from exc
    view = tree_view(obj)
    if view is None:
        classname = getattr(obj, "classname", type(obj).__name__)
        raise DataError(path, tree, f"{tree!r} is a {classname}, not a TTree or an RNTuple")
    return view


def list_trees(handle: Any) -> list[str]:
    """Names (with directories, without cycles) of the TTrees and RNTuples in an open file,
    in the file's key order, each once; ``[]`` when there are none."""
    from panda_lab.analysis.trees import TREE_LIKE_CLASSES

    names: list[str] = []
    for key, classname in handle.classnames(recursive=True).items():
        name = key.rsplit(";", 1)[0]
        if classname in TREE_LIKE_CLASSES and name not in names:
            names.append(name)
    return names


def inspect_file(url_or_path: str | Path, tree: str) -> FileInfo:
    """Entries, size, cluster boundaries and branch names of ``tree`` (a TTree or an
    RNTuple) in one file, read from the file's metadata only (no basket or page is read).

    Returns a :class:`FileInfo`: ``entries`` in events, ``size_bytes`` in bytes (the
    header's ``fEND``), ``clusters`` as entry numbers from 0 to ``entries`` (a TTree's
    common entry offsets, an RNTuple's cluster starts), ``branches`` with nested ones.
    Raises :class:`DataError` as :func:`open_file` and :func:`get_tree` do, or "corrupt
    tree metadata: ..."."""
    path = str(url_or_path)
    handle = open_file(url_or_path, tree)
    try:
        ttree = get_tree(handle, path, tree)
        try:
            entries = ttree.num_entries
            clusters = _clusters(ttree.cluster_starts(), entries)
            branches = ttree.column_names()
        except DataError:
            raise
        except Exception as exc:
            raise DataError(path, tree, f"corrupt tree metadata: {describe(exc)}") from exc
        return FileInfo(path, tree, entries, int(handle.file.fEND), clusters, branches)
    finally:
        handle.close()


def missing_columns(branches: Iterable[str], columns: Iterable[str]) -> list[str]:
    """The ``columns`` (as ``read_chunk`` takes them) that no branch in ``branches`` can give.

    A column is a branch (``"nMuon"``), a collection (``"Muon"``, its ``Muon_*`` branches) or a
    field path (``"Muon.pt"``, the branch ``Muon_pt``). Branch names are all this looks at, so a
    column it passes may still be refused when a file is read (a collection is formed from the
    branches' types); one it refuses is in none of these branches. In the order given,
    each once; ``[]`` when every column can be given.
    """
    names = set(branches)
    prefixes = {b.partition("_")[0] for b in names if "_" in b}
    missing = []
    for column in columns:
        coll, dot, sub = column.partition(".")
        found = column in names or column in prefixes or (dot and f"{coll}_{sub}" in names)
        if not found and column not in missing:
            missing.append(column)
    return missing


class UnknownColumns(ValueError):
    """Columns asked for that no file of a dataset has: the user's mistake, not the data's."""


def check_columns(files: list[dict], columns: Iterable[str], what: str) -> None:
    """Raise :class:`UnknownColumns` for ``columns`` that none of ``files`` (dicts with
    ``branches``) can give, with close branch names as hints; ``what`` names the dataset.
    A column only some files lack is left to the jobs, which fail those files as bad input.

    Returns ``None`` when every column is found.  :class:`UnknownColumns` is a
    ``ValueError`` whose message names each missing column and up to three close branch
    names (difflib)."""
    branches = sorted({b for f in files for b in f["branches"]})
    missing = missing_columns(branches, columns)
    if missing:
        named = []
        for column in missing:
            close = difflib.get_close_matches(column, branches, n=3)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            named.append(f"{column!r}{hint}")
        plural = "s" if len(missing) > 1 else ""
        raise UnknownColumns(f"no file of {what} has the column{plural} {', '.join(named)}")


def _clusters(offsets: list[int], entries: int) -> list[int]:
    """Sanitise the cluster starts uproot gives: from 0 to ``entries``, strictly increasing."""
    inner = sorted({int(o) for o in offsets if 0 < int(o) < entries})
    return [0, *inner, entries] if entries > 0 else [0]


def describe(exc: BaseException, limit: int = 400) -> str:
    """An exception as one line: uproot's messages span lines and end with the file name.

    Whitespace runs become one space; the type's name stands in for an empty message; text
    past ``limit`` characters is cut and ends in "..."."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
