"""panda-lab: PanDA's workload management, brought into the notebook.

What users import lives here; everything else is internal and may change.  Names are
imported on first use: a pilot or the server imports ``panda_lab`` too, and must not
pay (in start-up time and memory) for the notebook client's pandas and friends.

What is exported (``__all__``):

=======================  ===========================================================
``connect``, ``Lab``     a connection to a server (starts a local one if asked)
``PandaExecutor``        ``concurrent.futures.Executor`` whose calls run as jobs
``TaskHandle``           one task: state, jobs, results, kill/retry
``compare``              two analysis runs' merged histograms overlaid, with numbers
``AnalysisTask``         a dataset analysis (``lab.analyze``): partial/result/report
``JobFailed``            a job failed, not by an exception of the user's code (lost
                         pilot, walltime...); its subclasses ``JobKilled`` (killed)
                         and ``RemoteError`` (the user's exception, whose type cannot
                         be rebuilt here); ``RemoteTraceback`` a pilot's traceback
                         as text
``EnvironmentMismatch``  a warning (``UserWarning``): a site's pilots run other
                         versions of Python or key packages than the client
``PayloadError``         a call that cannot be pickled (a ``TypeError``)
``MergeError``           results that cannot be merged (a ``TypeError``)
``IncompleteResult``     an analysis result with input not processed
``__version__``          the installed distribution's version ("0.0.0" from a
                         source tree)
=======================  ===========================================================

Any other name raises ``AttributeError``.  The errors a server's answer brings,
:class:`panda_lab.http.ApiError` and :class:`panda_lab.http.ServerUnreachable` (a
``ConnectionError``), and bad input files, ``panda_lab.analysis.DataError`` and its
:class:`panda_lab.analysis.errors.BadFilesError`, are imported from their modules.
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
    "compare": "panda_lab.client.compare",
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
    """``%load_ext panda_lab``: the ``%%panda`` and ``%panda_attach`` magics, registered
    on ``ipython`` (IPython's extension protocol); returns nothing."""
    from panda_lab.jupyter.magics import load_ipython_extension as load

    load(ipython)


def _jupyter_server_extension_points() -> list[dict]:
    """The jupyter_server extension behind the JupyterLab panel (``/panda-lab/...``)."""
    return [{"module": "panda_lab.jupyter.server_extension"}]


def _jupyter_labextension_paths() -> list[dict]:
    return [{"src": "labextension", "dest": "panda-lab"}]


def __dir__() -> list[str]:
    return __all__
