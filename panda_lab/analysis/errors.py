"""The one exception for bad input data, so a pilot can tell it from a bug in the user's code.

A job that fails with :class:`DataError` failed because of a file (missing, corrupt, not what the
task said), and retrying it elsewhere, or from another replica, may help; any other exception
comes from the processor and retrying will not. The exception pickles with all its attributes,
because pilots ship failures back to the server by pickling them.
"""

from __future__ import annotations

from collections.abc import Mapping


class DataError(Exception):
    """A problem with an input file: ``file``, ``tree`` and the ``reason`` in words.

    ``entry_start``/``entry_stop`` are set when the problem was met reading a range of entries.
    """

    #: The error category a pilot reports for it: an input problem, retried elsewhere
    #: (``ErrorCategory.INPUT`` of :mod:`panda_lab.model.retry`, PanDA/JEDI's rule that
    #: a retry avoids the site where it failed).
    panda_category = "input"

    def __init__(
        self,
        file: str,
        tree: str | None,
        reason: str,
        entry_start: int | None = None,
        entry_stop: int | None = None,
    ) -> None:
        self.file = str(file)
        self.tree = tree
        self.reason = reason
        self.entry_start = entry_start
        self.entry_stop = entry_stop
        super().__init__(self._message())

    def _message(self) -> str:
        where = []
        if self.tree is not None:
            where.append(f"tree {self.tree!r}")
        if self.entry_start is not None or self.entry_stop is not None:
            where.append(f"entries {self.entry_start}-{self.entry_stop}")
        context = f" ({', '.join(where)})" if where else ""
        return f"{self.file}{context}: {self.reason}"

    def __reduce__(self):
        # Exception's default pickling replays ``args`` (the message) into __init__, which has
        # other parameters; rebuild from the attributes instead.
        return (
            type(self),
            (self.file, self.tree, self.reason, self.entry_start, self.entry_stop),
            self.__dict__,
        )


class BadFilesError(DataError):
    """Input files that cannot be used, each with its reason: ``bad_files`` maps file → reason.

    Raised by dataset registration, which inspects every file before it gives up, so one error
    names them all (``n_files`` is how many were given). A subclass of :class:`DataError`, so
    code that catches a single bad file catches this too; ``file`` is the first bad file.
    The message lists every bad file with its reason and says that ``skip_bad_files=True``
    registers the others.
    """

    def __init__(self, bad_files: Mapping[str, str], tree: str | None = None,
                 n_files: int | None = None) -> None:
        self.bad_files = dict(bad_files)
        self.n_files = n_files
        n = len(self.bad_files)
        of = f" of {n_files}" if n_files is not None else ""
        summary = f"{n}{of} file{'s' if n != 1 else ''} cannot be used"
        super().__init__(next(iter(self.bad_files), ""), tree, summary)

    def _message(self) -> str:
        tree = f" (tree {self.tree!r})" if self.tree is not None else ""
        lines = "".join(f"\n  {f}: {r}" for f, r in self.bad_files.items())
        return (f"{self.reason}{tree}; pass skip_bad_files=True to register the others "
                f"and record these as skipped:{lines}")

    def __reduce__(self):
        return (type(self), (self.bad_files, self.tree, self.n_files), self.__dict__)
