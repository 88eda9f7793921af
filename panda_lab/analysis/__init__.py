"""Dataset analysis over ROOT files: inspect, split into chunks, read, merge.

The path of a dataset analysis, in the order it runs:

* :mod:`.files`: ``inspect_file`` reads a file's metadata into a ``FileInfo`` (entries, size,
  cluster boundaries) of a TTree or an RNTuple, both seen through :mod:`.trees`;
* the splitter (:mod:`panda_lab.model.splitter`, run by the server) cuts the dataset into
  chunks on those cluster boundaries, one job's input each (a ``Chunk``);
* :mod:`.events`: ``read_chunk`` gives a chunk's events as an awkward array, NanoAOD-style, and
  ``discover_columns`` finds which branches a processor needs (the pilot's side);
* :mod:`.nanoevents`: with a coffea schema, ``read_events`` gives a chunk as coffea's
  NanoEvents instead, with coffea's ``events.metadata`` (coffea is an optional extra);
* :mod:`.accumulate`: ``merge`` / ``merge_all`` combine the per-chunk results;
* :mod:`.sample`: ``make_sample`` writes a synthetic dimuon dataset for demos and tests.

Names are imported on first use, so the server can use ``FileInfo`` without
paying for importing uproot and awkward.  Exported (``__all__``): ``DataError``,
``FileInfo``, ``inspect_file``, ``read_chunk``, ``discover_columns``, ``MergeError``,
``merge``, ``merge_all`` and ``make_sample``; any other name raises ``AttributeError``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataError": "errors",
    "FileInfo": "files",
    "inspect_file": "files",
    "read_chunk": "events",
    "discover_columns": "events",
    "MergeError": "accumulate",
    "merge": "accumulate",
    "merge_all": "accumulate",
    "make_sample": "sample",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
