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

import copyreg
import functools
import linecache
import os
import pickle
import socket
import sys
import time
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from panda_lab.output import Capture
from panda_lab.remote_errors import dumps_exception, fold_frames, safe_str, type_name
from panda_lab.text import MESSAGE_LIMIT, TRACEBACK_LIMIT, clip

#: Results up to this size travel inline (in reports, the database and the event
#: stream); larger ones go to the result store, with only a reference kept.
INLINE_LIMIT = 64 * 1024

KEY_PACKAGES = ("cloudpickle", "numpy", "awkward", "uproot", "dask")


class PayloadError(TypeError):
    """The call cannot be shipped: the message says what could not be pickled.

    A ``TypeError``, as ``pickle`` raises for an object it cannot pickle, so code written
    against ``concurrent.futures``' process pools catches it the same way."""


#: Characters of source lines of notebook cells sent with one function, at most.
SOURCES_LIMIT = 1 << 20


def _functions(fn: Any, depth: int = 3) -> list[types.FunctionType]:
    """``fn`` and the functions it reaches by global name (``depth`` levels down):
    through partials (and the functions they bind), bound methods and classes (their
    methods, also of an instance's class).  Never raises."""
    found: list[types.FunctionType] = []
    seen: set[int] = set()

    def visit(obj: Any, level: int) -> None:
        if id(obj) in seen or level < 0:
            return
        seen.add(id(obj))
        if isinstance(obj, functools.partial):  # its function and what it binds
            for part in (obj.func, *obj.args, *obj.keywords.values()):
                visit(part, level)
            return
        if isinstance(obj, types.MethodType):
            return visit(obj.__func__, level)
        if isinstance(obj, type):
            for member in vars(obj).values():
                if isinstance(member, types.FunctionType | classmethod | staticmethod):
                    visit(getattr(member, "__func__", member), level)
            return
        if not isinstance(obj, types.FunctionType):
            if not isinstance(obj, types.BuiltinFunctionType | types.ModuleType) and \
                    (callable(obj) or hasattr(obj, "process")):
                visit(type(obj), level)  # a processor object: its class's methods
            return
        found.append(obj)
        names = set(obj.__code__.co_names)
        for const in obj.__code__.co_consts:  # nested functions and comprehensions
            if isinstance(const, types.CodeType):
                names |= set(const.co_names)
        for n in names:
            if n in obj.__globals__:
                visit(obj.__globals__[n], level - 1)

    try:
        visit(fn, depth)
    except Exception:  # a help for tracebacks; never a reason to fail
        pass
    return found


def _code_key(code: types.CodeType) -> str:
    return f"{code.co_qualname}:{code.co_firstlineno}"


def cell_sources(fn: Any) -> tuple[dict[str, list[str]], dict[str, str]]:
    """What a traceback on a pilot needs to show the lines of a function pickled by value
    (cloudpickle names every such function's file ``<dynamic-code>``): the file name of
    each function ``fn`` reaches (``{"qualname:first line": file}``), and the source
    lines of the notebook cells among those files (``{file: lines}``: files that exist
    only in this process's ``linecache``, where IPython keeps each cell), at most
    :data:`SOURCES_LIMIT` characters."""
    sources: dict[str, list[str]] = {}
    files: dict[str, str] = {}
    size = 0
    for f in _functions(fn):
        name = f.__code__.co_filename
        files[_code_key(f.__code__)] = name
        entry = linecache.cache.get(name)
        if name not in sources and entry is not None and len(entry) == 4 \
                and not os.path.exists(name):
            size += sum(map(len, entry[2]))
            if size <= SOURCES_LIMIT:
                sources[name] = list(entry[2])
    return sources, files


def _renamed(code: types.CodeType, name: str) -> types.CodeType:
    consts = tuple(_renamed(c, name) if isinstance(c, types.CodeType) else c
                   for c in code.co_consts)
    return code.replace(co_filename=name, co_consts=consts)


def _with_sources(sources: dict[str, list[str]], files: dict[str, str], fn: Any) -> Any:
    """Unpickling a function sent with :func:`cell_sources`: its functions get back their
    file names, the cells' lines go where tracebacks read them (``linecache``), and the
    function is given back."""
    for name, lines in sources.items():
        linecache.cache[name] = (sum(map(len, lines)), None, lines, name)
    for f in _functions(fn):
        name = files.get(_code_key(f.__code__))
        if name and f.__code__.co_filename != name:
            try:
                f.__code__ = _renamed(f.__code__, name)
            except (TypeError, ValueError):  # a closure whose code cannot change: keep it
                pass
    return fn


class _Sourced:
    """``fn`` pickled with its file names and cells' sources (:func:`cell_sources`): on
    a pilot, a traceback through a function defined in a notebook cell shows the cell's
    lines, as it would in the notebook."""

    def __init__(self, fn: Any, sources: dict[str, list[str]], files: dict[str, str]) -> None:
        self.fn, self.sources, self.files = fn, sources, files

    def __reduce__(self) -> tuple:
        return _with_sources, (self.sources, self.files, self.fn)


def _sourced(fn: Any) -> Any:
    if fn is None or isinstance(fn, bytes):
        return fn
    sources, files = cell_sources(fn)
    return _Sourced(fn, sources, files) if files else fn


def dumps_call(fn: Callable | bytes | None, args: tuple = (),
               kwargs: dict | None = None) -> bytes:
    """A job's payload: ``(fn, args, kwargs)`` pickled now, with everything they refer to.
    ``fn`` may be a function already pickled (``dumps_fn``), or ``None`` for the task's
    common function.  Returns the cloudpickle bytes of ``(fn, tuple(args), dict(kwargs))``.

    Raises :class:`PayloadError` naming the function (or "the arguments" when ``fn`` is
    bytes or ``None``) and the pickling error, whatever cloudpickle raised."""
    _unpicklable_uproot_records()
    try:
        return cloudpickle.dumps((_sourced(fn), tuple(args), dict(kwargs or {})))
    except Exception as exc:
        what = ("the arguments" if fn is None or isinstance(fn, bytes)
                else getattr(fn, "__qualname__", repr(fn)))
        raise PayloadError(f"cannot pickle the call to {what}: {type(exc).__name__}: {exc}") \
            from exc


def dumps_fn(fn: Callable) -> bytes:
    """``fn`` pickled on its own (cloudpickle), to travel once as a task's common payload
    or inside :func:`dumps_call`.  Raises :class:`PayloadError` naming ``fn`` and the
    pickling error when it cannot be pickled."""
    _unpicklable_uproot_records()
    try:
        return cloudpickle.dumps(_sourced(fn))
    except Exception as exc:
        raise PayloadError(f"cannot pickle {getattr(fn, '__qualname__', fn)!r}: "
                           f"{type(exc).__name__}: {exc}") from exc


def environment() -> dict:
    """Python and key package versions, for the environment check between client and pilot.

    Returns ``{"python": "3.12.1", "cloudpickle": "3.1.0", ...}`` (a new dict each call):
    one key per name in :data:`KEY_PACKAGES`, ``None`` for a package that is not
    installed.  Read once per process (the installed distributions' metadata took 1-2 ms
    to read on every submission): a package upgraded in a running kernel counts after the
    kernel's restart, when its new version is the one in use."""
    return dict(_environment())


@functools.cache
def _environment() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    env = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name in KEY_PACKAGES:
        try:
            env[name] = version(name)
        except PackageNotFoundError:
            env[name] = None
    return env


def workdir() -> dict:
    """Where this client works: ``{"host": hostname, "path": working directory}``.  Sent
    with each task; a pilot on the same host runs the task's jobs in that directory, so a
    relative path means what it means in the notebook (see :func:`job_directory`)."""
    return {"host": socket.gethostname(), "path": os.getcwd()}


def job_directory(workdir_: dict | None) -> str | None:
    """The directory a job of a task with ``workdir_`` (:func:`workdir`) runs in here: the
    client's working directory when this is the client's host and the directory exists,
    else ``None`` (the pilot's own directory: a remote site cannot see the client's)."""
    if not workdir_ or workdir_.get("host") != socket.gethostname():
        return None
    path = workdir_.get("path")
    return path if path and os.path.isdir(path) else None


def _where_note(exc: BaseException) -> None:
    """A note on an ``OSError`` about a relative path (``FileNotFoundError: 'data.csv'``)
    that says where the job ran: relative paths resolve there, not in the notebook's
    directory unless the pilot runs on the notebook's machine."""
    name = getattr(exc, "filename", None)
    if not isinstance(exc, OSError) or not isinstance(name, str | bytes) \
            or os.path.isabs(os.fsdecode(name)):
        return
    try:
        exc.add_note(f"panda-lab: this job ran in {os.getcwd()} on {socket.gethostname()}; "
                     "a relative path resolves there (jobs on the submitting machine run in "
                     "the client's working directory, elsewhere in the pilot's): use an "
                     "absolute path, or a dataset")
    except Exception:  # a note is a help, never a second failure
        pass


@dataclass
class Outcome:
    """What running one payload gave: ``ok`` and the cloudpickled ``result``, or the
    ``error`` record (``category``: "payload", "user", "input" or "merge", the
    ``ErrorCategory`` the retry rules of :mod:`panda_lab.model.retry` act on, as PanDA
    classifies failures; ``type``, ``message``, ``traceback``, ``exception``); the
    tails of ``stdout``/``stderr``; ``started_at``/``ended_at`` in seconds since the
    epoch; ``reads``, what the job read per storage endpoint (``[{"endpoint", "bytes",
    "seconds", "requests"}]``, see :mod:`panda_lab.reads`), the ``events`` it
    processed, its payload's ``peak_rss_mb`` (MB) and ``cpu_s`` (CPU seconds), filled
    by the worker (:mod:`panda_lab.pilot.usage`); ``None`` when not measured."""

    ok: bool
    result: bytes | None
    error: dict | None
    stdout: str
    stderr: str
    started_at: float
    ended_at: float
    reads: list[dict] = field(default_factory=list)
    #: What the job did to its site's stage-in cache (:func:`panda_lab.reads.take_cache`).
    cache: list[dict] = field(default_factory=list)
    #: Events the payload said it processed (:func:`panda_lab.reads.processed`).
    events: int = 0
    #: The payload's peak resident memory during the job (MB), and its CPU seconds.
    peak_rss_mb: float | None = None
    cpu_s: float | None = None


def _error(category: str, exc: BaseException, prefix: str = "") -> dict:
    """The report of a job's exception: its message, traceback text and the bytes that
    rebuild it in the notebook (:mod:`panda_lab.remote_errors`).  Never raises, whatever
    the exception's ``__str__``, ``__reduce__`` or attributes do: a failure here would
    take the worker down and turn the user's error into a lost job."""
    try:
        tb = fold_frames("".join(traceback.format_exception(exc)))
        # the input an analysis job failed on, first (analysis.runner.name_chunk's note)
        chunk = [n for n in getattr(exc, "__notes__", None) or ()
                 if isinstance(n, str) and n.startswith("panda-lab: failed on ")]
        if chunk:
            tb = f"{chunk[0]}\n{tb}"
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
        _where_note(exc)
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


def _unpicklable_uproot_records() -> None:
    """Let uproot's RNTuple metadata records travel: ``uproot.models.RNTuple.MetaData`` (the
    cluster summaries, ...) pickles but does not unpickle in uproot 5.7 (its ``__getattr__``
    raises ``KeyError`` for ``__setstate__``), and an ``uproot.dask`` graph over RNTuples
    carries the open RNTuples, with them.  Registered with ``copyreg`` to pickle by their
    constructor, once uproot's RNTuple module is loaded: a payload holding one comes after."""
    module = sys.modules.get("uproot.models.RNTuple")
    cls = getattr(module, "MetaData", None)
    if cls is not None and cls not in copyreg.dispatch_table:
        copyreg.pickle(cls, _reduce_uproot_record)


def _reduce_uproot_record(record: Any) -> tuple:
    return functools.partial(type(record), record.name, **record.__dict__["_fields"]), ()
