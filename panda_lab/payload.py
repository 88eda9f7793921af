"""What a job carries and what it brings back: cloudpickled calls, results and errors.

A job's payload is ``(fn, args, kwargs)``, pickled whole at submit time: what the call
reads (the function's globals, closure cells, defaults, ``__dict__``, a callable's or a
bound method's instance, the arguments) is captured then, as ``ThreadPoolExecutor``
would see it at that moment, and each job unpickles its own copy, so no job sees what
an earlier job on the same worker changed.  ``fn`` may be ``None`` when every job of a
task calls the same function, which then travels once as the task's *common* payload.
The same Python environment is assumed on pilots (as Dask assumes); the versions of
the packages that matter travel along so a mismatch is reported, not guessed at.
"""

from __future__ import annotations

import pickle
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from panda_lab.output import Capture
from panda_lab.remote_errors import dumps_exception, safe_str, type_name
from panda_lab.text import MESSAGE_LIMIT, TRACEBACK_LIMIT, clip

#: Results up to this size travel inline (in reports, the database and the event
#: stream); larger ones go to the result store, with only a reference kept.
INLINE_LIMIT = 64 * 1024

KEY_PACKAGES = ("cloudpickle", "numpy", "awkward", "uproot", "dask")


class PayloadError(TypeError):
    """The call cannot be shipped: the message says what could not be pickled.

    A ``TypeError``, as ``pickle`` raises for an object it cannot pickle, so code written
    against ``concurrent.futures``' process pools catches it the same way."""


def dumps_call(fn: Callable | bytes | None, args: tuple = (),
               kwargs: dict | None = None) -> bytes:
    """A job's payload: ``(fn, args, kwargs)`` pickled now, with everything they refer to.
    ``fn`` may be a function already pickled (``dumps_fn``), or ``None`` for the task's
    common function.  Returns the cloudpickle bytes of ``(fn, tuple(args), dict(kwargs))``.

    Raises :class:`PayloadError` naming the function (or "the arguments" when ``fn`` is
    bytes or ``None``) and the pickling error, whatever cloudpickle raised."""
    try:
        return cloudpickle.dumps((fn, tuple(args), dict(kwargs or {})))
    except Exception as exc:
        what = ("the arguments" if fn is None or isinstance(fn, bytes)
                else getattr(fn, "__qualname__", repr(fn)))
        raise PayloadError(f"cannot pickle the call to {what}: {type(exc).__name__}: {exc}") \
            from exc


def dumps_fn(fn: Callable) -> bytes:
    """``fn`` pickled on its own (cloudpickle), to travel once as a task's common payload
    or inside :func:`dumps_call`.  Raises :class:`PayloadError` naming ``fn`` and the
    pickling error when it cannot be pickled."""
    try:
        return cloudpickle.dumps(fn)
    except Exception as exc:
        raise PayloadError(f"cannot pickle {getattr(fn, '__qualname__', fn)!r}: "
                           f"{type(exc).__name__}: {exc}") from exc


def environment() -> dict:
    """Python and key package versions, for the environment check between client and pilot.

    Returns ``{"python": "3.12.1", "cloudpickle": "3.1.0", ...}``: one key per name in
    :data:`KEY_PACKAGES`, ``None`` for a package that is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    env = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name in KEY_PACKAGES:
        try:
            env[name] = version(name)
        except PackageNotFoundError:
            env[name] = None
    return env


@dataclass
class Outcome:
    """What running one payload gave: ``ok`` and the cloudpickled ``result``, or the
    ``error`` record (``category``: "payload", "user", "input" or "merge", the
    ``ErrorCategory`` the retry rules of :mod:`panda_lab.model.retry` act on, as PanDA
    classifies failures; ``type``, ``message``, ``traceback``, ``exception``); the
    tails of ``stdout``/``stderr``; ``started_at``/``ended_at`` in seconds since the
    epoch; ``reads``, what the job read per storage endpoint (``[{"endpoint", "bytes",
    "seconds", "requests"}]``, see :mod:`panda_lab.reads`) and the ``events`` it
    processed, filled by the worker."""

    ok: bool
    result: bytes | None
    error: dict | None
    stdout: str
    stderr: str
    started_at: float
    ended_at: float
    reads: list[dict] = field(default_factory=list)
    #: Events the payload said it processed (:func:`panda_lab.reads.processed`).
    events: int = 0



def _error(category: str, exc: BaseException, prefix: str = "") -> dict:
    """The report of a job's exception: its message, traceback text and the bytes that
    rebuild it in the notebook (:mod:`panda_lab.remote_errors`).  Never raises, whatever
    the exception's ``__str__``, ``__reduce__`` or attributes do: a failure here would
    take the worker down and turn the user's error into a lost job."""
    try:
        tb = "".join(traceback.format_exception(exc))
    except Exception as why:  # a broken __notes__, a traceback module corner
        tb = f"{type_name(type(exc))}: {safe_str(exc)}\n(no traceback: {type(why).__name__})"
    err = {"category": category, "type": type(exc).__qualname__,
           "message": clip(f"{prefix}{type(exc).__name__}: {safe_str(exc)}", MESSAGE_LIMIT),
           "traceback": clip(tb, TRACEBACK_LIMIT)}
    try:
        err["exception"] = dumps_exception(exc)
    except Exception:  # the message and traceback still tell what happened
        err.pop("exception", None)
    return err


def run_call(payload: bytes, common: Callable | None,
             streams: tuple[Capture, Capture] | None = None) -> Outcome:
    """Run one payload here, capturing output, and classify any failure.

    ``streams`` are the stdout and stderr stand-ins to capture into, when the caller
    watches them while the job runs (to show output live) or keeps them in full; the
    outcome's ``stdout`` and ``stderr`` are their tails (see :mod:`panda_lab.output`).
    ``common`` is the task's common function, called when the payload names none.

    Returns an :class:`Outcome`; never raises for what the job does (any
    ``BaseException`` of the call, ``SystemExit`` too, becomes the error record): category
    "payload" when the payload cannot be unpickled here or names no function, the
    exception's ``panda_category`` when it is "input" or "merge"
    (:class:`~panda_lab.analysis.errors.DataError`,
    :class:`~panda_lab.analysis.accumulate.MergeError`), else "user", also for a result
    that cannot be pickled."""
    started = time.time()
    out, err_stream = streams or (Capture(), Capture())
    try:
        fn, args, kwargs = pickle.loads(payload)
        if isinstance(fn, bytes):  # a function pickled on its own: a fresh copy all the same
            fn = pickle.loads(fn)
    except Exception as exc:
        return Outcome(False, None, _error(
            "payload", exc, "cannot unpickle the payload on the pilot (is the same Python "
                            "environment installed here?): "),
            "", "", started, time.time())
    fn = fn if fn is not None else common
    if fn is None:
        return Outcome(False, None, {"category": "payload", "message":
                                     "payload names no function and the task has none"},
                       "", "", started, time.time())
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err_stream
    try:
        value: Any = fn(*args, **kwargs)
    except BaseException as exc:  # the user's code may raise anything, SystemExit too
        sys.stdout, sys.stderr = old
        # An exception may say what kind of failure it is (an unreadable input file is
        # not the user's bug); anything else is a user error.
        category = getattr(exc, "panda_category", "user")
        if category not in ("user", "input", "merge"):
            category = "user"
        return Outcome(False, None, _error(category, exc), out.tail(), err_stream.tail(),
                       started, time.time())
    finally:
        sys.stdout, sys.stderr = old
    try:
        data = cloudpickle.dumps(value)
    except Exception as exc:
        return Outcome(False, None, _error("user", exc, "the result cannot be pickled: "),
                       out.tail(), err_stream.tail(), started, time.time())
    return Outcome(True, data, None, out.tail(), err_stream.tail(), started, time.time())
