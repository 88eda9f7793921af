"""panda-lab: PanDA's workload management, brought into the notebook.

What users import lives here; everything else is internal and may change.  Names are
imported on first use: a pilot or the server imports ``panda_lab`` too, and must not
pay (in start-up time and memory) for the notebook client's pandas and friends.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("panda-lab")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

_EXPORTS = {
    "connect": "panda_lab.client.session",
    "Lab": "panda_lab.client.session",
    "PandaExecutor": "panda_lab.client.executor",
    "EnvironmentMismatch": "panda_lab.client.executor",
    "JobFailed": "panda_lab.client.futures",
    "JobKilled": "panda_lab.client.futures",
    "RemoteError": "panda_lab.client.futures",
    "RemoteTraceback": "panda_lab.client.futures",
    "TaskHandle": "panda_lab.client.tasks",
    "AnalysisTask": "panda_lab.client.analysis",
    "IncompleteResult": "panda_lab.client.analysis",
    "MergeError": "panda_lab.analysis.accumulate",
    "PayloadError": "panda_lab.payload",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'panda_lab' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext panda_lab``: the ``%%panda`` and ``%panda_attach`` magics."""
    from panda_lab.jupyter.magics import load_ipython_extension as load

    load(ipython)


def _jupyter_server_extension_points() -> list[dict]:
    """The jupyter_server extension behind the JupyterLab panel (``/panda-lab/...``)."""
    return [{"module": "panda_lab.jupyter.server_extension"}]


def _jupyter_labextension_paths() -> list[dict]:
    return [{"src": "labextension", "dest": "panda-lab"}]


def __dir__() -> list[str]:
    return __all__
