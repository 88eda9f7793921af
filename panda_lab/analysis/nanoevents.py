"""A chunk's events as coffea's NanoEvents, for processors written for coffea.

coffea's ``NanoEventsFactory.from_root(..., mode="virtual")`` builds the events of an entry
range with every collection of the schema (``events.Muon``), its behaviours (``mu1 + mu2`` is
a Lorentz vector, ``events.Jet.matched_muons`` a cross-reference) and no data read: a branch
is read the first time an operation needs it, so a job reads only what the processor touches.
This is what coffea's own ``Runner`` does for each work item (``coffea.processor.executor``,
``Runner._work_function``); here a job does it for each of its chunks, and
:data:`coffea-style metadata <COFFEA_KEYS>` reaches ``events.metadata`` as the ``Runner`` gives
it: ``dataset``, ``filename``, ``treename``, ``entrystart``, ``entrystop``, ``fileuuid``, then
the fileset's ``metadata`` for that dataset.

coffea is an optional extra (``pip install 'panda-lab[coffea]'``): nothing here imports it
until a chunk is read or a schema is named, and then its absence is a :class:`CoffeaMissing`
that says how to install it.

What differs from the ``Runner``, on purpose: files are opened with
:func:`~panda_lab.analysis.files.open_file` (a missing, truncated or corrupt file, or a tree
that is not there, is a :class:`~panda_lab.analysis.errors.DataError` the retry rules know);
a branch that fails while the processor reads it is a ``DataError`` too; and the branches
one chunk read are read up front, in one request, for the worker's next chunks of the same
processor (coffea's ``preload``), which a remote file pays for once instead of per branch.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from panda_lab.analysis.errors import DataError
from panda_lab.analysis.files import describe, get_tree, open_file
from panda_lab.model.splitter import Chunk

INSTALL = "pip install 'panda-lab[coffea]'"

#: The keys coffea's ``Runner`` puts in ``events.metadata``; a fileset's own metadata may not
#: use them (coffea refuses them too: ``_PROTECTED_NAMES``).
COFFEA_KEYS = ("dataset", "filename", "treename", "entrystart", "entrystop", "fileuuid")


class CoffeaMissing(ImportError):
    """A coffea schema or processor was asked for where coffea is not installed."""


def import_coffea_nanoevents() -> Any:
    """``coffea.nanoevents``, or :class:`CoffeaMissing` naming the extra to install."""
    try:
        return importlib.import_module("coffea.nanoevents")
    except ImportError as exc:
        raise CoffeaMissing(f"coffea's NanoEvents need coffea, which is not installed here: "
                            f"{INSTALL}") from exc


def resolve_schema(schema: Any) -> type:
    """The coffea schema class ``schema`` names.

    ``schema`` is a class deriving from coffea's ``BaseSchema`` (``NanoAODSchema``, or a
    user's own), or the name of one of coffea's: ``"NanoAODSchema"``, ``"NanoAOD"``, or a
    dotted path ``"coffea.nanoevents.PFNanoAODSchema"``.

    Raises :class:`CoffeaMissing` without coffea, ``ValueError`` for a name coffea does not
    have, ``TypeError`` for anything that is no coffea schema."""
    nanoevents = import_coffea_nanoevents()
    base = nanoevents.BaseSchema
    if isinstance(schema, str):
        module, dot, name = schema.rpartition(".")
        try:
            owner = importlib.import_module(module) if dot else nanoevents
        except ImportError as exc:
            raise ValueError(f"schema {schema!r}: no module {module!r}") from exc
        found = getattr(owner, name, None) or getattr(owner, f"{name}Schema", None)
        if not (isinstance(found, type) and issubclass(found, base)):
            known = sorted(n for n in dir(nanoevents) if n.endswith("Schema") and n != "BaseSchema")
            raise ValueError(f"schema {schema!r} is no coffea schema; coffea has "
                             f"{', '.join(known)}")
        return found
    if isinstance(schema, type) and issubclass(schema, base):
        return schema
    raise TypeError(f"schema must be a coffea schema class (coffea.nanoevents.NanoAODSchema) "
                    f"or its name, not {schema!r}")


def schema_ref(schema: type) -> str | type:
    """What a job carries of ``schema``: coffea's own schemas by their import path (so a
    pilot without coffea says what to install instead of failing to unpickle the job), a
    user's schema as the class itself (cloudpickle copies it)."""
    module = schema.__module__
    if module.split(".")[0] == "coffea":
        return f"{module}.{schema.__qualname__}"
    return schema


@dataclass
class NanoEventsSpec:
    """How a job builds coffea's NanoEvents: the schema and each file's metadata.

    ``schema`` is as :func:`resolve_schema` takes it; ``dataset`` names the dataset of files
    not in ``per_file``; ``per_file`` maps a file's ``file_index`` to the ``events.metadata``
    entries of its fileset dataset (``{"dataset": "DYJets", "xsec": 6077.2, ...}``)."""

    schema: str | type
    dataset: str | None = None
    per_file: dict[int, dict] = field(default_factory=dict)

    def metadata(self, chunk: Chunk, fileuuid: str) -> dict:
        """``events.metadata`` for ``chunk``, in coffea's ``Runner`` order: its keys
        (:data:`COFFEA_KEYS`; ``filename`` is the path or URL the job read, a replica's when it
        read one; ``fileuuid`` the file's UUID as text), then the fileset metadata of the
        file's dataset."""
        extra = dict(self.per_file.get(chunk.file_index, {}))
        meta = {"dataset": extra.pop("dataset", self.dataset), "filename": chunk.path,
                "treename": chunk.tree, "entrystart": chunk.start, "entrystop": chunk.stop,
                "fileuuid": fileuuid}
        meta.update(extra)
        return meta


#: Branches read per processor in this worker: ``id -> (processor, branches)``, for the
#: next chunks' preload.  Holding the processor keeps its id from being reused.
_TOUCHED: dict[int, tuple[Any, set[str]]] = {}
_touched_lock = threading.Lock()


def read_events(chunk: Chunk, spec: NanoEventsSpec, processor: Any = None,
                preload: Iterable[str] = ()) -> tuple[Any, list]:
    """The events of ``chunk`` as coffea NanoEvents (virtual mode), and the access log that
    lists what they read (coffea's ``Accessed(branch, buffer_key)`` entries).

    ``preload`` names columns to read up front, in one request (``columns=``, see
    :func:`branches_of`); so are the branches ``processor`` read in this worker's earlier
    chunks (TTrees only).  Nothing else is read until the processor touches it.

    Raises :class:`CoffeaMissing` without coffea; :class:`DataError` for a file, tree or entry
    range that cannot be read, as :func:`~panda_lab.analysis.files.open_file` and
    :func:`~panda_lab.analysis.files.get_tree` say, or when coffea cannot build the events."""
    schema = resolve_schema(spec.schema)
    factory_cls = import_coffea_nanoevents().NanoEventsFactory
    handle = open_file(chunk.path, chunk.tree)
    try:
        tree = get_tree(handle, chunk.path, chunk.tree)
        obj = getattr(tree, "obj", tree)  # uproot's TTree or RNTuple
        entries = int(obj.num_entries)
        if not 0 <= chunk.start <= chunk.stop <= entries:
            raise _error(chunk, f"entry range outside the tree, which has {entries} entries")
        wanted = set(preload)
        hit = _TOUCHED.get(id(processor))
        if processor is not None and hit is not None and hit[0] is processor:
            wanted |= hit[1]
        if not hasattr(obj, "branches"):  # an RNTuple: coffea preloads TTree branches only
            wanted = set()
        wanted = branches_of(wanted, obj.keys())
        meta = spec.metadata(chunk, str(handle.file.uuid))
        log: list = []
        try:
            factory = factory_cls.from_root(
                handle, treepath=chunk.tree, mode="virtual", entry_start=chunk.start,
                entry_stop=chunk.stop, schemaclass=schema, metadata=meta, access_log=log,
                preload=sorted(wanted) or None)
            events = factory.events()
        except DataError:
            raise
        except Exception as exc:
            raise _error(chunk, f"coffea cannot build NanoEvents: {describe(exc)}") from exc
    except BaseException:
        handle.close()
        raise
    return events, log


def branches_of(columns: Iterable[str], branches: Iterable[str]) -> set[str]:
    """The branches ``columns`` name, as ``columns=`` names them elsewhere: a branch
    (``"nMuon"``), a field path (``"Muon.pt"``: ``Muon_pt``) or a collection (``"Muon"``: its
    ``Muon_*`` branches and its counter ``nMuon``); a name that is none of these is dropped
    (the server refuses columns no file has before any job runs)."""
    names = set(branches)
    out: set[str] = set()
    for column in columns:
        if column in names:
            out.add(column)
        elif column.replace(".", "_", 1) in names:
            out.add(column.replace(".", "_", 1))
        else:
            out.update(b for b in names if b.startswith(f"{column}_") or b == f"n{column}")
    return out


def remember_reads(processor: Any, log: list) -> None:
    """Keep the branches a chunk read (from :func:`read_events`' log) for the worker's next
    chunks of ``processor``; at most 16 processors are remembered."""
    branches = {a.branch for a in log}
    with _touched_lock:
        hit = _TOUCHED.get(id(processor))
        if hit is None or hit[0] is not processor:
            hit = _TOUCHED[id(processor)] = (processor, set())
        hit[1].update(branches)
        while len(_TOUCHED) > 16:
            _TOUCHED.pop(next(iter(_TOUCHED)))


def read_failure(exc: BaseException, chunk: Chunk) -> DataError | None:
    """A :class:`DataError` for ``exc`` when it was raised while coffea read a branch for the
    processor (a frame of ``coffea.nanoevents.mapping`` or of uproot on its traceback), else
    ``None``: the processor's own exception stays a user error."""
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_globals.get("__name__", "")
        if name.startswith(("coffea.nanoevents.mapping", "uproot.")):
            return _error(chunk, f"cannot read a branch: {describe(exc)}")
        tb = tb.tb_next
    return None


def _error(chunk: Chunk, reason: str) -> DataError:
    return DataError(chunk.path, chunk.tree, reason, chunk.start, chunk.stop)
