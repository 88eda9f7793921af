"""The memory budget of the server's merged results, and what the merger does to keep to it.

What the merger holds in memory (:mod:`panda_lab.server.merger`): per task, the merged value
and its pickled copy (the copy answers ``partial()`` without pickling again); results
queued for merging that came inline with their report (at most the store's
``INLINE_LIMIT`` each); and, while an awkward result is put back in input order at the
end, the job results being merged.  On a Binder container of 2 GB that memory is shared
with JupyterLab, the kernel and the pilots, and a server killed for memory takes the
demo with it; so it has a budget (:attr:`ServerConfig.merge_memory
<panda_lab.server.config.ServerConfig.merge_memory>`, from the resource plan of
:mod:`panda_lab.resources`, or ``$PANDA_LAB_MERGE_MEMORY`` / ``--merge-memory``), kept by
the rules Dask's workers follow for their data (``distributed.worker.memory``: spill the
least recently used to disk past a target, refuse what cannot fit at all):

* **nothing is lost**: every job result is in the store before it is merged, and a merged
  value leaves memory only once it is saved in its accumulator row;
* a result that would push the queue over the budget is queued without its bytes and
  read back from the store when merged;
* past the budget, saved merged values are dropped, least recently used first (the
  pickled copy stays while it fits: a ``partial()`` of a task that ended costs no
  unpickling), then their copies, then unsaved ones are saved and dropped too; the next
  merge or read loads them again from the store.  Only the task being merged is never
  dropped;
* the in-order merge at the end reads the job results in batches that fit what is free;
* a single task whose merged result alone would be over the budget is refused: the task
  fails with a message that gives the size, the budget and how to raise it
  (:data:`~panda_lab.server.config.MERGE_MEMORY_HOW`); the merged result up to then
  stays readable, and every job result stays in the result store.

Sizes are pickled sizes: for numpy arrays, histograms and awkward arrays, what they take
in memory to within a few per cent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from panda_lab.analysis.accumulate import MergeError


class OverBudget(MergeError):
    """A task's merged result alone would be over the budget: the task is refused (its
    merge error says why, with :func:`refusal`'s words)."""


class Held(Protocol):
    """What the budget reads of a task's merge state."""

    value: Any
    data: bytes | None
    size: int


def held(acc: Held) -> int:
    """Bytes a task's merge state holds: its merged value (``size``, the pickled size of
    the value when last measured) and its pickled copy."""
    return (acc.size if acc.value is not None else 0) + (len(acc.data) if acc.data else 0)


def mb(n: int) -> str:
    """``n`` bytes in MB, for messages: ``"12.3 MB"``."""
    return f"{n / 2**20:.1f} MB"


def refusal(size: int, budget: int, how: str) -> str:
    """Why a task's merged result is refused (the reason of its merge error)."""
    return (f"the merged result would take {mb(size)} of the server's memory, over its "
            f"budget of {mb(budget)} for merged results; raise the budget ({how}) and run "
            f"the analysis again: every job's result is kept in the result store, and the "
            f"merged result up to this job stays readable")


def to_evict(states: Iterable[tuple[int, Held, float, bool]], total: int, budget: int
             ) -> list[tuple[int, str]]:
    """What to drop so that ``total`` bytes come under ``budget``.

    ``states``: ``(task, state, last used (monotonic s), may drop)``; only those that may
    be dropped (saved, not being merged, no error) are chosen, least recently used first,
    their value before their pickled copy.  Returns ``[(task, "value" or "all")]``;
    fewer than needed when not enough may be dropped."""
    out: list[tuple[int, str]] = []
    order = sorted((s for s in states if s[3]), key=lambda s: s[2])
    # First the values that have a pickled copy (it is enough to load them again)...
    for task_id, acc, _, _ in order:
        if total <= budget:
            return out
        if acc.value is not None and acc.data is not None:
            total -= acc.size
            out.append((task_id, "value"))
    # ...then whole states: they are saved in the store.
    for task_id, acc, _, _ in order:
        if total <= budget:
            return out
        total -= len(acc.data or b"") + (acc.size if acc.value is not None and
                                          acc.data is None else 0)
        out.append((task_id, "all"))
    return out


def batches(sizes: dict[int, int], order: list[int], room: int) -> Iterator[list[int]]:
    """The job ``order`` cut into batches of at most ``room`` bytes of results each (a
    result larger than ``room`` alone in its batch); ``sizes``: bytes by job index."""
    batch: list[int] = []
    used = 0
    for index in order:
        n = sizes.get(index, 0)
        if batch and used + n > room:
            yield batch
            batch, used = [], 0
        batch.append(index)
        used += n
    if batch:
        yield batch
