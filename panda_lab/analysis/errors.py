"""The one exception for bad input data, so a pilot can tell it from a bug in the user's code.

A job that fails with :class:`DataError` failed because of a file (missing, corrupt, not what the
task said), and retrying it elsewhere, or from another replica, may help; any other exception
comes from the processor and retrying will not. The exception pickles with all its attributes,
because pilots ship failures back to the server by pickling them.
"""

from __future__ import annotations


class DataError(Exception):
    """A problem with an input file: ``file``, ``tree`` and the ``reason`` in words.

    ``entry_start``/``entry_stop`` are set when the problem was met reading a range of entries.
    """

    #: The error category a pilot reports for it: an input problem, retried elsewhere.
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
