"""What a job carries and what it brings back: cloudpickled calls, results and errors.

A job's payload is ``(fn, args, kwargs)``; ``fn`` may be ``None`` when every job of a
task calls the same function, which then travels once as the task's *common* payload,
or the function's own pickled bytes, which a worker unpickles once and reuses.
The same Python environment is assumed on pilots (as Dask assumes); the versions of
the packages that matter travel along so a mismatch is reported, not guessed at.
"""

from __future__ import annotations

import pickle
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle

from panda_lab.output import Capture

#: Results up to this size travel inline (in reports, the database and the event
#: stream); larger ones go to the result store, with only a reference kept.
INLINE_LIMIT = 64 * 1024

KEY_PACKAGES = ("cloudpickle", "numpy", "awkward", "uproot", "dask")


class PayloadError(TypeError):
    """The call cannot be shipped: the message says what could not be pickled."""


def dumps_call(fn: Callable | None, args: tuple = (), kwargs: dict | None = None) -> bytes:
    try:
        return cloudpickle.dumps((fn, tuple(args), dict(kwargs or {})))
    except Exception as exc:
        what = getattr(fn, "__qualname__", repr(fn)) if fn is not None else "the arguments"
        raise PayloadError(f"cannot pickle the call to {what}: {type(exc).__name__}: {exc}") \
            from exc


def load_fn(data: bytes) -> Callable:
    """Unpickle a function shipped as bytes, once per worker: a ``map`` of 10,000 calls
    sends the same function bytes 10,000 times but unpickles them once."""
    fn = _FN_CACHE.get(data)
    if fn is None:
        fn = pickle.loads(data)
        _FN_CACHE[data] = fn
        while len(_FN_CACHE) > 64:
            _FN_CACHE.pop(next(iter(_FN_CACHE)))
    return fn


_FN_CACHE: dict[bytes, Callable] = {}


def dumps_fn(fn: Callable) -> bytes:
    try:
        return cloudpickle.dumps(fn)
    except Exception as exc:
        raise PayloadError(f"cannot pickle {getattr(fn, '__qualname__', fn)!r}: "
                           f"{type(exc).__name__}: {exc}") from exc


def environment() -> dict:
    """Python and key package versions, for the environment check between client and pilot."""
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
    ok: bool
    result: bytes | None
    error: dict | None
    stdout: str
    stderr: str
    started_at: float
    ended_at: float


def _error(category: str, exc: BaseException, prefix: str = "") -> dict:
    tb = "".join(traceback.format_exception(exc))
    err = {"category": category, "type": type(exc).__qualname__,
           "message": f"{prefix}{type(exc).__name__}: {exc}", "traceback": tb}
    try:
        err["exception"] = cloudpickle.dumps(exc)
        pickle.loads(err["exception"])
    except Exception:
        err.pop("exception", None)
    return err


def run_call(payload: bytes, common: Callable | None,
             streams: tuple[Capture, Capture] | None = None) -> Outcome:
    """Run one payload here, capturing output, and classify any failure.

    ``streams`` are the stdout and stderr stand-ins to capture into, when the caller
    watches them while the job runs (to show output live) or keeps them in full; the
    outcome's ``stdout`` and ``stderr`` are their tails (see :mod:`panda_lab.output`)."""
    started = time.time()
    out, err_stream = streams or (Capture(), Capture())
    try:
        fn, args, kwargs = pickle.loads(payload)
        if isinstance(fn, bytes):
            fn = load_fn(fn)
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
        if category not in ("user", "input"):
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
