"""A job's stdout and stderr: captured on the pilot, shown as a tail, kept in full.

A job's output reaches three places:

- its **tail**, the last :data:`TAIL` characters, travels with every report (live while
  the job runs, and at its end) and is what the notebook, the panel and ``panda-lab jobs``
  show.  A tail never silently starts in the middle: when earlier output is not in it, it
  begins with a marker line (:func:`marker`) that says how many lines and characters are
  not shown and how to get them, and it is cut at a line start unless the one line left
  is longer than the tail (the marker says so then);
- its **full output**, up to the task's ``output_limit`` characters per stream, spooled
  to a file on the pilot while the job runs (so it survives a worker killed at its
  walltime) and uploaded to the server when the job ends, if the tail did not hold it
  all: ``lab.job_output(job_id)`` or ``panda-lab output JOB`` read it.  Output past the
  limit is dropped from the middle: the file keeps the first ``output_limit`` characters,
  then a marker line naming the limit, then the tail.

Every character goes through :func:`panda_lab.text.clean` as it is written, so what is
counted, shown and kept is the same valid UTF-8 text.
"""

from __future__ import annotations

import io
import re
import threading
from pathlib import Path

from panda_lab.text import clean

#: Characters of a stream's tail that each report carries.
TAIL = 4000

#: Characters of each stream kept in a job's full output, unless the task says otherwise
#: (``output_limit=`` of ``lab.submit``, ``%%panda --output-limit``).
OUTPUT_LIMIT = 4_000_000

#: Characters of pending writes that make a capture clean, count and spool them.
_BATCH = 1 << 16

_MARKER = re.compile(r"\[\.\.\. ([\d,]+) lines? \(([\d,]+) characters?\) not shown[^\n]*\]\n")


def where(job_id: int | None) -> str:
    """How a user gets a job's full output: the words the markers end with.

    Returns e.g. ``"full output: `panda-lab output 7` or lab.job_output(7)"``, or that it
    is not kept when ``job_id`` is ``None`` (a run outside a job)."""
    if job_id is None:
        return "full output: not kept for this run"
    return f"full output: `panda-lab output {job_id}` or lab.job_output({job_id})"


def marker(lines: int, chars: int, midline: bool, job_id: int | None) -> str:
    """The line that starts a tail when ``lines`` newlines and ``chars`` characters of
    earlier output are not in it; ``midline`` when the tail starts inside a line.

    Returns ``"[... 1,234 lines (56,789 characters) not shown; full output: ...]\n"``
    (newline included); :func:`split_tail` reads the counts back."""
    cut = ", and the next line starts mid-line" if midline else ""
    return (f"[... {lines:,} line{'s' if lines != 1 else ''} ({chars:,} characters) "
            f"not shown{cut}; {where(job_id)}]\n")


def split_tail(text: str) -> tuple[int, int, str, str]:
    """A tail taken apart: ``(lines, chars, marker line, body)``, where ``lines`` and
    ``chars`` count the output before ``body`` (0 and 0 when the tail holds all).

    A text that does not start with a :func:`marker` line is all body: ``(0, 0, "",
    text)``; never raises."""
    m = _MARKER.match(text)
    if m is None:
        return 0, 0, "", text
    return (int(m.group(1).replace(",", "")), int(m.group(2).replace(",", "")),
            m.group(), text[m.end():])


class Capture(io.TextIOBase):
    """A stand-in for ``sys.stdout``/``sys.stderr`` while a job runs.

    ``writes`` counts the writes, so a watcher (the worker's output ticker, another
    thread) can tell cheaply whether there is anything new; :meth:`tail` may be called
    from that thread at any time.  With a ``spool`` path, the first ``limit`` characters
    are also written to that file."""

    def __init__(self, job_id: int | None = None, spool: str | Path | None = None,
                 limit: int = OUTPUT_LIMIT) -> None:
        super().__init__()
        self.job_id, self.limit = job_id, max(0, int(limit))
        self.writes = 0
        #: Characters and newlines written so far (of the cleaned text), as of the last
        #: :meth:`tail`, :meth:`flush` or :meth:`finish`.
        self.chars = self.lines = 0
        # Writes are only appended here (a job may print a million short lines); they are
        # cleaned, counted and spooled in batches, under the lock.
        self._pending: list[str] = []
        self._pending_len = 0
        self._recent = ""  # the last TAIL + 1 characters
        self._lock = threading.Lock()
        self._spool = spool  # opened at the first output: most jobs print little or nothing
        self._file: io.TextIOBase | None = None
        self._kept = 0

    encoding = "utf-8"  # what ``print`` may ask; text is written as str, never bytes

    def writable(self) -> bool:
        """Always ``True`` (``io.TextIOBase``'s protocol)."""
        return True

    def write(self, s: str) -> int:
        """Take ``s`` (cheap: cleaned, counted and spooled in batches of 64 KiB) and
        return ``len(s)``, characters, as ``io.TextIOBase.write`` does.

        Raises ``TypeError`` for anything but ``str``, as ``sys.stdout`` does for bytes."""
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        with self._lock:
            self.writes += 1
            self._pending.append(s)
            self._pending_len += len(s)
            if self._pending_len > _BATCH:
                self._drain()
        return len(s)

    def _drain(self) -> None:
        """Clean, count, keep and spool the pending writes; call with the lock held."""
        if not self._pending:
            return
        s = clean("".join(self._pending))
        self._pending.clear()
        self._pending_len = 0
        self.chars += len(s)
        self.lines += s.count("\n")
        self._recent = (self._recent + s[-(TAIL + 1):])[-(TAIL + 1):]
        if self._spool is not None and self._file is None and s:
            try:
                self._file = open(self._spool, "w", encoding="utf-8")  # noqa: SIM115
            except OSError:  # no room for it: the tails still travel
                self._spool = None
        if self._file is not None and self._kept < self.limit:
            part = s[:self.limit - self._kept]
            self._file.write(part)
            self._kept += len(part)

    def flush(self) -> None:
        """Write the spooled output to disk (the worker's ticker calls this every half
        second while a job prints, so a killed worker loses at most that much).
        Without a spool file it only cleans and counts the pending writes.  A spool file
        that cannot be opened (``OSError``) is given up silently: the tails still travel."""
        with self._lock:
            self._drain()
            if self._file is not None:
                self._file.flush()

    def tail(self) -> str:
        """The last :data:`TAIL` characters at most, cut at a line start, behind a
        :func:`marker` line when output before them is not shown.  Returns ``""`` before
        any output; safe to call from another thread while the job writes."""
        with self._lock:
            self._drain()
            hidden_lines, hidden, midline, text = self._tail()
        if not hidden:
            return text
        return marker(hidden_lines, hidden, midline, self.job_id) + text

    def _tail(self) -> tuple[int, int, bool, str]:
        """``(lines, chars, midline, text)``: the tail's text and what comes before it;
        call with the lock held."""
        recent = self._recent
        if self.chars <= TAIL:
            return 0, 0, False, recent
        text = recent[-TAIL:]
        midline = recent[-TAIL - 1] != "\n"
        if midline:
            nl = text.find("\n")
            if 0 <= nl < len(text) - 1:  # keep one whole line at least
                text, midline = text[nl + 1:], False
        return self.lines - text.count("\n"), self.chars - len(text), midline, text

    def finish(self) -> None:
        """Close the spool file.  Output past the limit ends it with a marker line that
        names the limit, then the tail, so the kept output ends as the job's did.
        Returns nothing; a no-op without a spool file, and when called again."""
        with self._lock:
            self._drain()
            f, self._file, self._spool = self._file, None, None
            if f is None:
                return
            over = self.chars - self._kept
            if over > 0:
                _, hidden, _, text = self._tail()
                if hidden >= self._kept:  # a gap between the head and the tail
                    f.write(f"\n[... {hidden - self._kept:,} characters past the output "
                            f"limit of {self.limit:,} characters dropped; raise it with "
                            "output_limit= (lab.submit) or %%panda --output-limit ...]\n")
                    f.write(text)
                else:  # the tail overlaps the head: what is left is all in it
                    f.write(self._recent[-over:])
            f.close()


def tail_delta(old: str, new: str) -> str | None:
    """What tail ``new`` adds to tail ``old`` of the same growing stream, found from their
    markers' counts: exact, and a gap between them (more printed between two looks than
    a tail holds) comes out as a marker line that says what it skipped.  ``None`` when
    neither tail has a marker: then only their texts can tell.  Otherwise the
    text ``new`` adds, ``""`` when it adds nothing."""
    lines_old, chars_old, _, body_old = split_tail(old)
    lines_new, chars_new, mark, body_new = split_tail(new)
    if not mark and not chars_old:
        return None
    end = chars_old + len(body_old)
    if chars_new <= end:
        return body_new[end - chars_new:]
    m = _MARKER.match(mark)
    assert m is not None  # chars_new > 0 comes from a marker
    lines = max(0, lines_new - lines_old - body_old.count("\n"))
    return (f"[... {lines:,} line{'s' if lines != 1 else ''} ({chars_new - end:,}"
            f"{mark[m.end(2):]}{body_new}")
