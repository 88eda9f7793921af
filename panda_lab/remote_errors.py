"""A job's exception on its way back: made to travel on the pilot, rebuilt in the notebook.

A plain pickle of an exception is ``cls(*args)`` plus its ``__dict__``: it fails for a
user's ``class FitError(Exception)`` whose ``__init__(chi2, ndf)`` passes one formatted
message to ``Exception.__init__``, for keyword-only constructor arguments, for an
attribute that cannot be pickled (a lock, a generator) and for a ``__reduce__`` that
raises; it never carries ``__cause__``, ``__context__`` nor the members' chains of an
exception group.  ``concurrent.futures`` then fails the whole result; distributed
(with tblib) falls back to ``Exception(repr(exc))``.  Both lose the type, and with it
the notebook's ``except FitError``.

The rule here, one exception of the chain at a time:

1. its own pickling (``__reduce__``), when it comes back, on the pilot, as the same type
   with the same ``args``: a class that says how it pickles is obeyed;
2. else its parts, as the ``copy``/``pickle`` modules see an object: the class,
   ``cls.__new__(cls, *args)`` (no ``__init__``), ``args``, the ``__dict__``, the
   ``__slots__`` and the C-level fields of built-in bases (``OSError.errno``...).  A part
   that cannot be pickled (or is over :data:`VALUE_LIMIT`) stays behind and is named
   in a note (PEP 678) on the rebuilt exception;
3. ``__cause__``, ``__context__``, ``__suppress_context__``, ``__notes__`` and the
   members of a ``BaseExceptionGroup`` travel as links between the exceptions, so
   ``except*`` and the chain work in the notebook as they would have on the pilot.

Where a type truly cannot be rebuilt (its class is not importable in the notebook, or
cannot be pickled at all) the notebook gets a stand-in that names the remote type and
why: :func:`loads_exception`'s ``substitute``.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import types
from collections.abc import Callable
from typing import Any

import cloudpickle

from panda_lab.text import clip

#: Marks the record this module writes; anything else is a pickled exception as a
#: pilot of an older version sent it.
FORMAT = "panda-lab.exception/1"

#: Bytes of one pickled part (an argument, an attribute, the whole exception): a larger
#: one stays on the pilot, named, as the job's report must stay small.
VALUE_LIMIT = 1 << 20

#: Exceptions of one chain or group carried back; the rest of the chain is cut.
MAX_EXCEPTIONS = 100

#: Characters of an exception's message kept in the record (for a stand-in's message).
MESSAGE_LIMIT = 2000


def safe_str(exc: BaseException, limit: int | None = None) -> str:
    """``str(exc)``, or a placeholder when the exception's ``__str__`` raises; cut to
    ``limit`` characters (the middle is dropped and says how much).  Never raises for
    what ``__str__`` raises (any ``Exception``)."""
    try:
        text = str(exc)
    except Exception as err:
        text = f"<str() failed: {type(err).__name__}>"
    return clip(text, limit) if limit is not None else text


def type_name(cls: type) -> str:
    """``module.qualname`` of a class, as an error message names it (``builtins`` left
    out): ``"ValueError"``, ``"mymod.FitError"``; ``repr(cls)`` stands in for a missing
    ``__qualname__``.  Never raises."""
    module = getattr(cls, "__module__", None)
    qualname = getattr(cls, "__qualname__", repr(cls))
    return qualname if module in (None, "builtins") else f"{module}.{qualname}"


def _why(err: BaseException) -> str:
    return f"{type(err).__name__}: {safe_str(err, 300)}"


def _own_dumps(value: Any) -> bytes:
    """``cloudpickle.dumps`` with the exceptions' own pickling, whatever reducers a library
    registered for exception classes process-wide (``tblib.pickling_support.install``, which
    importing ``distributed`` runs, replaces every exception's reduction; its records would
    lose ``SystemExit.code`` and the attributes this module keeps by parts)."""
    table = {k: v for k, v in cloudpickle.Pickler.dispatch_table.items()
             if not (isinstance(k, type) and issubclass(k, BaseException))}

    class _Pickler(cloudpickle.Pickler):
        dispatch_table = table

    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.DEFAULT_PROTOCOL).dump(value)
    return buf.getvalue()


def _dumps_checked(value: Any) -> tuple[bytes, Any]:
    """``value`` pickled, under :data:`VALUE_LIMIT`, and what unpickling it here gives
    (a client with the same environment gets the same); raises what went wrong."""
    data = _own_dumps(value)
    if len(data) > VALUE_LIMIT:
        raise ValueError(f"too large to send back ({len(data)} bytes pickled, "
                         f"limit {VALUE_LIMIT})")
    return data, pickle.loads(data)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # numpy arrays and other values without a plain truth of ==
        return False


def _fields(exc: BaseException) -> dict[str, Any]:
    """Values that live outside ``__dict__``: user ``__slots__`` and the C fields of
    built-in bases (``OSError.errno``, ``SystemExit.code``, ``StopIteration.value``...),
    which ``cls.__new__`` does not set when the class has its own ``__init__``."""
    names: list[str] = []
    for klass in type(exc).__mro__:
        if klass in (BaseException, BaseExceptionGroup, object):
            continue
        if klass.__module__ == "builtins":
            names += [n for n, d in vars(klass).items() if not n.startswith("__")
                      and isinstance(d, types.MemberDescriptorType | types.GetSetDescriptorType)]
        else:
            slots = vars(klass).get("__slots__", ())
            names += [slots] if isinstance(slots, str) else list(slots)
    found: dict[str, Any] = {}
    for name in dict.fromkeys(names):
        if name in ("__dict__", "__weakref__"):
            continue
        try:
            value = getattr(exc, name)
        except Exception:  # an unset slot, OSError.characters_written when unset
            continue
        if value is not None:
            found[name] = value
    return found


class _Encoder:
    """Turns an exception and everything it links to into a list of plain records
    (dicts of str, bytes, int): the client unpickles each part apart, so one part it
    cannot load costs that part only."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.index: dict[int, int] = {}

    def add(self, exc: BaseException) -> int | None:
        if id(exc) in self.index:
            return self.index[id(exc)]
        if len(self.records) >= MAX_EXCEPTIONS:
            return None
        i = len(self.records)
        self.index[id(exc)] = i
        rec: dict[str, Any] = {
            "type": type_name(type(exc)), "message": safe_str(exc, MESSAGE_LIMIT),
            "pickled": None, "cls": None, "cls_error": None, "args": [], "attrs": {},
            "fields": {}, "lost": [], "group": None, "cause": None, "context": None,
            "suppress_context": bool(exc.__suppress_context__), "notes": None}
        self.records.append(rec)
        notes = getattr(exc, "__notes__", None)
        if isinstance(notes, list) and all(isinstance(n, str) for n in notes):
            rec["notes"] = list(notes)
        rec["pickled"] = self._whole(exc)
        if rec["pickled"] is None:
            self._parts(exc, rec)
        for link in ("cause", "context"):
            linked = getattr(exc, f"__{link}__")
            if isinstance(linked, BaseException):
                rec[link] = self.add(linked)
                if rec[link] is None:
                    rec["lost"].append(f"the chain is cut after {MAX_EXCEPTIONS} exceptions")
        return i

    @staticmethod
    def _whole(exc: BaseException) -> bytes | None:
        """The exception by its own pickling, if that brings back the same type and
        ``args`` (a group never: its members' chains would not travel)."""
        if isinstance(exc, BaseExceptionGroup):
            return None
        try:
            data, back = _dumps_checked(exc)
        except Exception:
            return None
        if type(back) is not type(exc) or not _same(back.args, exc.args):
            return None
        return data

    def _parts(self, exc: BaseException, rec: dict[str, Any]) -> None:
        try:
            rec["cls"] = _dumps_checked(type(exc))[0]
        except Exception as err:
            rec["cls_error"] = f"its class cannot be pickled on the pilot ({_why(err)})"
            return
        if isinstance(exc, BaseExceptionGroup):
            members = [m for m in map(self.add, exc.exceptions) if m is not None]
            if len(members) < len(exc.exceptions):
                rec["lost"].append(f"{len(exc.exceptions) - len(members)} of the group's "
                                   f"{len(exc.exceptions)} exceptions were cut (at most "
                                   f"{MAX_EXCEPTIONS} travel)")
            rec["group"] = {"message": exc.message, "members": members}
        else:
            for k, arg in enumerate(exc.args):
                rec["args"].append(self._value(f"args[{k}]", arg, rec, stand_in=True))
        for name, value in vars(exc).items():
            if name == "__notes__" and rec["notes"] is not None:
                continue
            data = self._value(f"attribute {name!r}", value, rec)
            if data is not None:
                rec["attrs"][name] = data
        for name, value in _fields(exc).items():
            data = self._value(f"field {name!r}", value, rec)
            if data is not None:
                rec["fields"][name] = data

    @staticmethod
    def _value(what: str, value: Any, rec: dict[str, Any], stand_in: bool = False) -> bytes | None:
        """``value`` pickled, or ``None`` with a line in ``rec["lost"]``; with ``stand_in``
        its repr takes its place (an argument must keep its position)."""
        try:
            return _dumps_checked(value)[0]
        except Exception as err:
            why = _why(err)
        kind = type_name(type(value))
        if not stand_in:
            rec["lost"].append(f"{what} ({kind}) was not sent back: {why}")
            return None
        try:
            text = clip(repr(value), 200)
        except Exception:
            text = f"<{kind}>"
        rec["lost"].append(f"{what} ({kind}) came back as its repr: {why}")
        return pickle.dumps(text)


def dumps_exception(exc: BaseException) -> bytes:
    """The bytes that rebuild ``exc`` (with its chain, notes and group members) on a
    client: :func:`loads_exception`.  Pilot side; never raises for anything the user's
    exception does (its ``__str__``, ``__reduce__`` or attributes).

    Returns a pickled dict ``{"format": FORMAT, "exceptions": [record, ...]}``, the first
    record ``exc`` itself, at most :data:`MAX_EXCEPTIONS` records, each part at most
    :data:`VALUE_LIMIT` bytes (a larger or unpicklable part stays behind, or comes back
    as its repr, and the rebuilt exception has a note saying so)."""
    enc = _Encoder()
    enc.add(exc)
    return pickle.dumps({"format": FORMAT, "exceptions": enc.records})


class _CannotRebuild(Exception):
    """Why one exception of the record cannot be rebuilt here."""


def _rebuild(rec: dict[str, Any], member: Callable[[int], BaseException]) -> BaseException:
    lost = list(rec["lost"])
    if rec["pickled"] is not None:
        try:
            exc = pickle.loads(rec["pickled"])
        except Exception as err:
            raise _CannotRebuild(f"it cannot be unpickled ({_why(err)})") from None
    else:
        if rec["cls"] is None:
            raise _CannotRebuild(rec["cls_error"] or "its class did not come back")
        try:
            cls = pickle.loads(rec["cls"])
        except Exception as err:
            raise _CannotRebuild(f"its class cannot be loaded ({_why(err)})") from None
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise _CannotRebuild(f"{cls!r} is not an exception class")
        try:
            if rec["group"] is not None:
                members = [member(m) for m in rec["group"]["members"]]
                exc = cls.__new__(cls, rec["group"]["message"], members)
            else:
                args = tuple(_load(b, f"args[{k}]", lost) for k, b in enumerate(rec["args"]))
                exc = cls.__new__(cls, *args)
                exc.args = args
        except Exception as err:
            raise _CannotRebuild(f"it cannot be created without its constructor "
                                 f"({_why(err)})") from None
        for name, data in rec["attrs"].items():
            value = _load(data, f"attribute {name!r}", lost)
            if value is not _MISSING:
                exc.__dict__[name] = value
        for name, data in rec["fields"].items():
            value = _load(data, f"field {name!r}", lost)
            try:
                if value is not _MISSING:
                    setattr(exc, name, value)
            except Exception as err:
                lost.append(f"field {name!r} cannot be set: {_why(err)}")
    if not isinstance(exc, BaseException):
        raise _CannotRebuild(f"it unpickles as a {type(exc).__name__}, not an exception")
    if rec["notes"] is not None and getattr(exc, "__notes__", None) is None:
        exc.__notes__ = list(rec["notes"])
    for line in lost:
        try:
            exc.add_note(f"panda-lab: {line}")
        except Exception:
            break  # __notes__ that is not a list: the user's, kept as it is
    return exc


_MISSING = object()


def _load(data: bytes, what: str, lost: list[str]) -> Any:
    try:
        return pickle.loads(data)
    except Exception as err:
        lost.append(f"{what} cannot be unpickled in the notebook: {_why(err)}")
        return _MISSING


def loads_exception(data: bytes,
                    substitute: Callable[[str, str, str], BaseException]) -> BaseException:
    """The exception :func:`dumps_exception` recorded, rebuilt with its own type.

    Each exception of the chain or group that cannot be rebuilt here becomes
    ``substitute(remote_type, message, reason)`` in its place: ``remote_type`` is
    ``module.qualname``, ``reason`` says why (the class is not importable here...).
    Bytes of an older pilot (one pickled exception) are unpickled as they are.

    Returns the rebuilt exception (or its stand-in), with ``__cause__``, ``__context__``,
    ``__suppress_context__`` and notes as on the pilot; parts that did not come back are
    named in notes starting ``"panda-lab: "``.  Raises what ``pickle.loads`` raises when
    ``data`` is not a pickle at all, and ``ValueError`` ("not a job's exception") when it
    unpickles to something that is neither an exception nor a record of this module."""
    obj = pickle.loads(data)
    if isinstance(obj, BaseException):
        return obj
    if not (isinstance(obj, dict) and obj.get("format") == FORMAT and obj.get("exceptions")):
        raise ValueError("these bytes are not a job's exception")
    records: list[dict[str, Any]] = obj["exceptions"]
    built: dict[int, BaseException] = {}

    def build(i: int) -> BaseException:  # a group's members first (they cannot loop)
        if i not in built:
            rec = records[i]
            try:
                built[i] = _rebuild(rec, build)
            except _CannotRebuild as err:
                built[i] = substitute(rec["type"], rec["message"], str(err))
        return built[i]

    for i in range(len(records)):
        build(i)
    for i, rec in enumerate(records):
        exc = built[i]
        try:
            if rec["context"] is not None:
                exc.__context__ = built[rec["context"]]
            if rec["cause"] is not None:
                exc.__cause__ = built[rec["cause"]]
            exc.__suppress_context__ = rec["suppress_context"]
        except Exception:  # an exception class that forbids setting these
            continue
    return built[0]


# ---- tracebacks that point at the user's code -------------------------------------------
#: Frames of these are folded in a job's traceback: panda-lab's own machinery (the
#: payload runner, the analysis runner) and the libraries that read the data.  The last
#: frame of a traceback (where the exception was raised) is always kept.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_LIBRARIES = re.compile(r"[/\\](uproot|fsspec|cloudpickle)[/\\]")
_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line \d+')

#: Set (to anything but "" or "0") to keep every frame: for debugging panda-lab itself.
FULL_TRACEBACKS = "PANDA_LAB_FULL_TRACEBACKS"


def _internal(path: str) -> str | None:
    """The name of the internal package a frame's file belongs to, or None."""
    if path.startswith(_PACKAGE_DIR + os.sep):
        return "panda_lab"
    m = _LIBRARIES.search(path)
    return m.group(1) if m else None


def fold_frames(tb: str) -> str:
    """A formatted traceback (``traceback.format_exception``'s text) with the frames of
    panda-lab, uproot, fsspec and cloudpickle folded into one line each run (``[... 2
    internal frames (panda_lab) hidden]``), so that what is left is the user's code and
    the line that raised.  The last frame of each traceback of the chain is kept, and
    anything that is not a plain frame (exception groups' boxes) is left as it is.
    Returns the text unchanged when :data:`FULL_TRACEBACKS` is set."""
    if os.environ.get(FULL_TRACEBACKS, "") not in ("", "0"):
        return tb
    lines = tb.splitlines(keepends=True)
    # group into blocks: a frame (its "File" line and the indented lines under it) or a line
    blocks: list[tuple[str | None, list[str]]] = []
    for line in lines:
        m = _FRAME.match(line)
        if m:
            blocks.append((m.group("file"), [line]))
        elif blocks and blocks[-1][0] is not None and line.startswith("    "):
            blocks[-1][1].append(line)
        else:
            blocks.append((None, [line]))
    out: list[str] = []
    hidden: list[str] = []

    def flush() -> None:
        if hidden:
            names = ", ".join(sorted(set(hidden)))
            out.append(f"  [... {len(hidden)} internal frame{'s' if len(hidden) > 1 else ''}"
                       f" ({names}) hidden]\n")
            hidden.clear()

    for i, (path, block) in enumerate(blocks):
        last = i + 1 == len(blocks) or blocks[i + 1][0] is None
        owner = _internal(path) if path is not None else None
        if owner is not None and not last:
            hidden.append(owner)
            continue
        flush()
        out.extend(block)
    flush()
    return "".join(out)
