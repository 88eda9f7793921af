"""The one rule for text that leaves a job: valid UTF-8, no NUL, bounded in size.

What a job prints, the message and traceback of what it raised, and anything else a
pilot reports are the user's text, and may hold anything Python's ``str`` can hold:

- lone surrogates: ``os.fsdecode``/``os.listdir`` turn the undecodable bytes of a file
  name into U+DC80..U+DCFF (PEP 383), and JSON, SQLite, PostgreSQL and Jupyter's wire
  protocol all refuse them;
- NUL, which PostgreSQL refuses in ``text`` columns;
- ANSI escape codes, ``\\r`` progress bars, lines of any length.

:func:`clean` writes a byte smuggled in as a surrogate as ``\\xNN`` (the byte the file
name really had, as Python's ``backslashreplace`` writes it), any other lone surrogate
as ``\\uXXXX`` and NUL as ``\\x00``; every other character is kept, ANSI codes too: a
notebook renders them as colours, and HTML views escape or strip them
(:func:`strip_ansi`).  It is idempotent, so the pilot and the server can both apply it.
:func:`clip` bounds a text by keeping its head and tail around a marker line.
"""

from __future__ import annotations

import re
from typing import Any

_BAD = re.compile("[\x00\ud800-\udfff]")
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")

#: Characters of an error message and of a traceback a report carries; the rest is
#: clipped from the middle (the pickled exception, when there is one, keeps it all).
MESSAGE_LIMIT = 20_000
TRACEBACK_LIMIT = 200_000
#: Characters of an exception's type name a report keeps, about (the server takes up to
#: 1,000, :func:`clip`'s marker line included: a class made with ``type("E" * 1500,
#: ...)`` made the whole report unsendable).
TYPE_LIMIT = 900


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that did not decode (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return "\\x00" if code == 0 else f"\\u{code:04x}"


def clean(text: str) -> str:
    """``text`` made valid UTF-8 without NUL, by the rule of this module.

    Cheap for the common case: an ASCII text without NUL is returned as it is.  Returns a
    ``str`` that encodes to UTF-8 (``text.encode()`` cannot fail); never raises."""
    if text.isascii() and "\x00" not in text:
        return text
    return _BAD.sub(_escape, text)


def clean_obj(obj: Any) -> Any:
    """:func:`clean` applied to every string in nested dicts, lists and tuples (keys too);
    other values are returned unchanged.  Returns new containers: dicts stay dicts, lists
    and tuples both come back as lists (the JSON shape they are sent in)."""
    if isinstance(obj, str):
        return clean(obj)
    if isinstance(obj, dict):
        return {clean_obj(k): clean_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_obj(v) for v in obj]
    return obj


def clip(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else its head and its tail, about
    ``limit`` characters in all, around a line ``[... N characters dropped ...]``.

    ``limit`` counts characters (``str`` length), not bytes; the head and the tail are
    ``limit // 2`` each (at least 1), plus the marker line."""
    if len(text) <= limit:
        return text
    half = max(limit // 2, 1)
    dropped = len(text) - 2 * half
    return f"{text[:half]}\n[... {dropped:,} characters dropped ...]\n{text[-half:]}"


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences (colours, cursor moves, titles), for views
    that show text as HTML, where they would be noise."""
    return _ANSI.sub("", text) if "\x1b" in text else text


def clean_error(error: dict) -> dict:
    """A job's error record ready to report: its texts cleaned, the message, the
    traceback and the exception's type clipped to :data:`MESSAGE_LIMIT`,
    :data:`TRACEBACK_LIMIT` and :data:`TYPE_LIMIT`; bytes (the pickled exception) are
    left alone.  Returns a new dict with the same keys; never
    raises."""
    out = {}
    for key, value in error.items():
        if isinstance(value, str):
            value = clean(value)
            if key == "message":
                value = clip(value, MESSAGE_LIMIT)
            elif key == "traceback":
                value = clip(value, TRACEBACK_LIMIT)
            elif key == "type":
                value = clip(value, TYPE_LIMIT)
        elif not isinstance(value, bytes):
            value = clean_obj(value)
        out[key] = value
    return out
