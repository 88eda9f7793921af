"""coffea's filesets for ``lab.analyze``: ``{"DYJets": {"files": {path: "Events"}, "metadata":
{...}}}`` becomes one registered dataset and, for each of its files, the ``events.metadata``
entries coffea's ``Runner`` gives that file (its dataset's name and ``metadata``).

The forms accepted are the ``Runner``'s (``coffea.processor.Runner.run``, its
``_normalize_fileset``): ``{dataset: [file, ...]}`` (the tree named by ``treename``),
``{dataset: {"files": [file, ...], "treename": name}}``, ``{dataset: {"files": {file: tree}}}``,
each with an optional ``"metadata"`` mapping whose keys may not be those coffea sets itself
(:data:`~panda_lab.analysis.nanoevents.COFFEA_KEYS`).  As in coffea, the results of all its
datasets merge into one: a processor tells them apart by ``events.metadata["dataset"]``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from panda_lab.analysis.errors import BadFilesError, DataError
from panda_lab.analysis.nanoevents import COFFEA_KEYS

if TYPE_CHECKING:  # pragma: no cover
    from panda_lab.client.session import Lab


@dataclass
class FilesetFile:
    """One file of a fileset: its dataset, path (local paths made absolute), tree, and the
    dataset's ``metadata`` (a copy; ``{}`` when the fileset gives none)."""

    dataset: str
    path: str
    tree: str
    metadata: dict


def is_fileset(value: Any) -> bool:
    """True for a coffea-style fileset (a mapping of dataset names), not a dataset's name."""
    return isinstance(value, Mapping)


def normalize_fileset(fileset: Mapping, treename: str | None = None) -> list[FilesetFile]:
    """The files of a coffea-style ``fileset``, in its order (datasets, then files).

    Raises ``ValueError`` naming the dataset (and the key) for a malformed entry: files that
    are neither a list nor a mapping, a list without a tree (no ``"treename"`` and no
    ``treename`` argument), ``metadata`` that is no mapping or uses one of coffea's own keys,
    or a dataset without files."""
    if not fileset:
        raise ValueError("fileset: no datasets")
    out: list[FilesetFile] = []
    for dataset, entry in fileset.items():
        where = f"fileset[{dataset!r}]"
        meta: Any = {}
        tree = treename
        files: Any = entry
        if isinstance(entry, Mapping):
            if "files" not in entry:
                raise ValueError(f"{where}: no 'files' key (give {{'files': {{path: tree}}}})")
            meta = entry.get("metadata") or {}
            tree = entry.get("treename", treename)
            files = entry["files"]
        if not isinstance(meta, Mapping):
            raise ValueError(f"{where}['metadata']: a mapping, not {type(meta).__name__}")
        reserved = sorted(set(meta) & set(COFFEA_KEYS))
        if reserved:
            raise ValueError(f"{where}['metadata']: {', '.join(map(repr, reserved))} is set by "
                             "coffea for every chunk; rename the key")
        if isinstance(files, Mapping):
            pairs = [(str(p), t if t is not None else tree) for p, t in files.items()]
        elif isinstance(files, list | tuple):
            pairs = [(str(p), tree) for p in files]
        else:
            raise ValueError(f"{where}: files must be a list or a mapping of path to tree, "
                             f"not {type(files).__name__}")
        if not pairs:
            raise ValueError(f"{where}: no files")
        for path, t in pairs:
            if t is None:
                raise ValueError(f"{where}: no tree for {path!r}; give {{'files': {{path: "
                                 "'Events'}}}, 'treename', or treename=")
            local = "://" not in path or path.startswith("file://")
            path = str(Path(path.removeprefix("file://")).resolve()) if local else path
            out.append(FilesetFile(str(dataset), path, str(t), dict(meta)))
    return out


def register_fileset(lab: Lab, fileset: Mapping, *, treename: str | None = None,
                     skip_bad_files: bool = False) -> tuple[str, dict[int, dict]]:
    """Register the fileset's files as one dataset (named from their content, registered
    again each time: inspection reads metadata only) and return its name and, by
    ``file_index``, each file's ``events.metadata`` entries (``{"dataset": name, **metadata}``).

    Raises ``ValueError`` as :func:`normalize_fileset`;
    :class:`~panda_lab.analysis.errors.BadFilesError` for files that cannot be used unless
    ``skip_bad_files`` (then they are reported as skipped, as for any dataset)."""
    from panda_lab.analysis.files import inspect_file

    files = normalize_fileset(fileset, treename)

    def one(f: FilesetFile) -> Any:
        try:
            return inspect_file(f.path, f.tree)
        except DataError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(files)))) as pool:
        found = list(pool.map(one, files))
    bad = {k: got.reason for k, got in enumerate(found) if isinstance(got, DataError)}
    if bad and not skip_bad_files:
        raise BadFilesError({files[k].path: r for k, r in bad.items()}, None, len(files))
    key = json.dumps([[f.dataset, f.path, f.tree] for f in files]).encode()
    name = f"fileset-{hashlib.sha1(key).hexdigest()[:12]}"
    body = {"name": name, "tree": files[0].tree, "replace": True, "files": [
        {"file_index": k, "path": i.path, "tree": i.tree, "entries": i.entries,
         "size_bytes": i.size_bytes, "clusters": i.clusters, "branches": i.branches,
         "replicas": [{"endpoint": "local", "url": i.path}]}
        for k, i in enumerate(found) if k not in bad],
        "bad_files": [{"file_index": k, "path": files[k].path, "tree": files[k].tree,
                       "reason": r} for k, r in bad.items()]}
    lab.api.post("/api/datasets", body)
    return name, {k: {"dataset": f.dataset, **f.metadata} for k, f in enumerate(files)}
