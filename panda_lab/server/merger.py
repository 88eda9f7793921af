"""The merge step of a dataset analysis: one merged result per task, built as results come.

PanDA's JEDI ends a task only after its merge step; here the merge runs continuously, on
one thread of its own (:class:`Merger`), so that a client can read the result so far at any
time and the event loop never spends its time unpickling and adding histograms.

The merger's thread never opens a store transaction itself: the store belongs to the event
loop's thread (the *owner*), so every store call the merger makes goes through
:meth:`Server.db_from_thread <panda_lab.server.app.Server.db_from_thread>`, a hop to the
loop.  Those calls are few and batched: a result arrives with its bytes (no read), the
task's chunks are read once per batch of new jobs, and the merged result is written at most
once per :data:`PERSIST_EVERY` per task.  The thread starts only once the loop runs
(:meth:`Merger.start`); until then (the server being built) results are queued, and the
store calls that queue them (:meth:`Merger.catch_up`, :meth:`Merger.submit`) run on the
building thread, the owner then.  Nothing on the loop blocks on the merger: the loop
awaits :meth:`Merger.settled`, a future the merger's thread resolves.

What is kept where (:class:`MergeState`): the merged value, its job indices and events are
saved together in the task's accumulator row, so a restart merges exactly the results not
in it (each chunk counts once); a merge error is kept in the task's options
(``merge_error``) by the service that fails the task.  The rest (the pickled copy for
``partial``, whether it changed since the last save, the input order seen so far) is
memory only and rebuilt from those rows.

Memory: everything the merger holds is within the server's budget for merged results
(``ServerConfig.merge_memory``); how it keeps to it, and what it refuses, is
:mod:`panda_lab.server.merge_budget`'s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from panda_lab.analysis.accumulate import MergeError
from panda_lab.server import merge_budget

if TYPE_CHECKING:  # pragma: no cover
    from panda_lab.server.app import Server

log = logging.getLogger("panda_lab.analysis")

#: Seconds between two writes of a task's merged result while it runs; an idle merger
#: saves what changed after as long, so a crash loses at most that much merging.
PERSIST_EVERY = 1.0

#: Test-only: ``PANDA_LAB_TEST_HOLD=sizing`` keeps scouted tasks from being sized and
#: ``=merging`` keeps the merger from merging, so that a test can SIGKILL the server at
#: exactly that step of a task (tests/server/test_restart_steps.py).  Never set otherwise.
HOLD_ENV = "PANDA_LAB_TEST_HOLD"


def held(step: str) -> bool:
    """Whether the test-only hold (:data:`HOLD_ENV`) keeps the server at ``step``."""
    return os.environ.get(HOLD_ENV) == step


def load_result(data: bytes) -> Any:
    """A job's pickled result (a ``ChunkResult``: ``result``, ``events``, ``seconds``,
    ``rss_mb``).  Raises :class:`MergeError` (path ``result``) when it cannot be unpickled
    here."""
    try:
        return pickle.loads(data)
    except Exception as exc:
        raise MergeError("result", f"cannot be unpickled on the server: "
                                   f"{type(exc).__name__}: {exc}") from exc


def has_awkward(value: Any) -> bool:
    """Whether an accumulator holds awkward arrays (they concatenate: order matters)."""
    if isinstance(value, dict):
        return any(has_awkward(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_awkward(v) for v in value)
    return type(value).__module__.startswith("awkward")


@dataclass
class MergeState:
    """One task's merged result and what the merger knows about it.

    Durable (read back by :meth:`Merger.load`): ``value``, ``merged``, ``events`` (the
    accumulator row, written together) and ``error`` (the task's ``merge_error`` option).
    Memory only: the rest, rebuilt after a restart."""

    value: Any = None
    #: Bytes of ``value`` (its pickled size when last measured; see merge_budget).
    size: int = 0
    #: ``value`` is only in ``data`` (loaded from the store, not unpickled yet).
    packed: bool = False
    #: ``data`` is older than ``value``.
    stale: bool = False
    used_at: float = 0.0            # time.monotonic() of the last merge or read
    #: Job indices whose results are in ``value``.
    merged: set[int] = field(default_factory=set)
    events: int = 0
    data: bytes | None = None       # the pickled value, for cheap ``partial()`` answers
    dirty: bool = False             # changed since it was last saved
    saved_at: float = 0.0           # time.monotonic() of the last save
    out_of_order: bool = False      # awkward arrays must be concatenated in input order
    #: Where each job's input starts, (file index, entry): the input order of its result.
    starts: dict[int, tuple[int, int]] = field(default_factory=dict)
    last: tuple[int, int] | None = None   # the latest input start merged so far
    final: bool = False             # the task ended and its last merge is done
    error: dict | None = None       # a merge error (MergeError.to_dict()): nothing more merges
    #: The merge rules (the task's ``accumulate`` option): coffea's for a coffea processor.
    rules: str = "panda-lab"


#: One queued piece of work: (task, job index or None, job id, result bytes or None,
#: final, ended); see :meth:`Merger.submit`.
_Item = tuple[int, int | None, int | None, bytes | None, bool, bool]


class Merger:
    """Merges each finished chunk's result into its task's result, on its own thread.

    ``on_error(task_id, error)`` is called on that thread when a result cannot be merged
    (``error``: a :meth:`MergeError.to_dict` naming the job, its input and what differed,
    plus ``job_id``); the task's result then takes no more results.

    Thread rule: :meth:`submit`, :meth:`finalize`, :meth:`flush`, :meth:`catch_up`,
    :meth:`stop` and the readers (:meth:`error`, :meth:`merged`, :meth:`snapshot`) run on
    the store's owner thread (the loop's, or the building thread before the loop runs),
    since they may read a task's saved state from the store directly."""

    def __init__(self, server: Server,
                 on_error: Callable[[int, dict], None] | None = None) -> None:
        self.server = server
        self.store = server.store
        self.on_error = on_error or (lambda _task, _err: None)
        self.accs: dict[int, MergeState] = {}
        config = getattr(server, "config", None)
        #: Bytes the merged results may hold (None: no budget, for a bare merger).
        self.budget: int | None = getattr(config, "merge_memory", None)
        self._queued = 0                             # bytes of results queued with them
        self._handling: int | None = None            # the task the merger's thread holds
        #: (out_of_order, final, last) of states dropped for the budget, restored on
        #: loading: what the saved row does not say.
        self._dropped: dict[int, tuple[bool, bool, tuple[int, int] | None]] = {}
        #: The most :meth:`memory` held after a merge step or a read (kept to the budget).
        self.peak = 0
        self._q: queue.Queue[_Item | None] = queue.Queue()
        self._lock = threading.Lock()
        self._done = threading.Lock()                # guards _pending and _waiters
        self._pending: dict[int, int] = {}          # task -> items queued, not yet done
        self._waiters: dict[int, list[asyncio.Future]] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ---- life ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start merging (once the event loop runs: the thread's store calls hop to it).
        Again after :meth:`close`, for a server whose app is started again."""
        self._stopping = False
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="panda-merger")
            self._thread.start()

    async def close(self, timeout: float = 10.0) -> None:
        """Stop after the item being merged (what is still queued waits for the next
        :meth:`start`, or is merged again after a restart, from the stored results); waits
        up to ``timeout`` seconds, on the loop, which serves the thread's last store calls
        meanwhile."""
        self._stopping = True
        self._q.put(None)  # wakes the thread
        thread = self._thread
        if thread is not None and thread.is_alive():
            await asyncio.to_thread(thread.join, timeout)

    # ---- what the loop hands over ---------------------------------------------------------
    def submit(self, task_id: int, index: int | None, job_id: int | None,
               data: bytes | None, final: bool = False, ended: bool = False) -> None:
        """Queue job ``index``'s result (``data``, or read from the store when None) for
        merging; with ``final``, then put awkward arrays in input order and save;
        ``ended``: the task has ended.  Returns at once.  A result that would take the
        queue over the budget is queued without its bytes (read from the store when
        merged)."""
        with self._done:  # counted first: a task with work queued stays in memory
            self._pending[task_id] = self._pending.get(task_id, 0) + 1
        self._acc(task_id)  # loaded here, on the owner thread, before the merger needs it
        if data is not None and self.budget is not None:
            with self._done:
                if self.memory() + len(data) > self.budget:
                    data = None
                else:
                    self._queued += len(data)
        self._q.put((task_id, index, job_id, data, final, ended))

    def finalize(self, task_id: int) -> None:
        """Make the merged result final and save it (before the task is closed)."""
        self.submit(task_id, None, None, None, final=True)

    def flush(self, task_id: int) -> None:
        """Persist now (the task ended)."""
        self.submit(task_id, None, None, None, final=True, ended=True)

    def stop(self, task_id: int, error: dict) -> None:
        """Merge no more results of the task: ``error`` (a job's merge failed on a pilot)."""
        acc = self._acc(task_id)
        with self._lock:
            acc.error = acc.error or error

    def catch_up(self) -> None:
        """After a restart, on the building thread: queue the stored results of analysis
        tasks that are not in their saved merged state (merged once the thread starts)."""
        for task_id in self.store.analysis_tasks_to_merge():
            acc = self._acc(task_id)
            if acc.error is not None:
                continue  # it failed on a merge error: nothing more is merged
            for r in self.store.results(task_id):
                if r["index"] not in acc.merged:
                    self.submit(task_id, r["index"], r["job_id"], r["data"])
            self.flush(task_id)

    # ---- waiting and reading ----------------------------------------------------------------
    def busy(self, task_id: int) -> bool:
        """Results of the task are queued or being merged."""
        with self._done:
            return bool(self._pending.get(task_id))

    async def settled(self, task_id: int) -> None:
        """Wait, on the loop and without a thread, until everything submitted for the task
        so far is merged (or saved)."""
        with self._done:
            if not self._pending.get(task_id):
                return
            fut = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(task_id, []).append(fut)
        await fut

    def error(self, task_id: int) -> dict | None:
        """The task's merge error, if one happened (``MergeError.to_dict()``), else None."""
        return self._acc(task_id).error

    def merged(self, task_id: int) -> set[int]:
        """The job indices in the task's merged result (a copy)."""
        acc = self._acc(task_id)
        with self._lock:
            return set(acc.merged)

    def snapshot(self, task_id: int) -> tuple[bytes | None, int, int, bool, dict | None]:
        """The merged result now: (pickled value or None, jobs merged, events, final,
        merge error)."""
        acc = self._acc(task_id)
        with self._lock:
            packed = acc.stale or (acc.data is None and acc.value is not None)
            if packed:
                self._pack(acc)
            out = acc.data, len(acc.merged), acc.events, acc.final, acc.error
        if packed and self.budget is not None:
            self._evict()  # the new copy may take it over the budget
        return out

    def memory(self) -> int:
        """Bytes the merger holds now: every task's merged value and pickled copy, and
        the results queued with their bytes."""
        with self._lock:
            return self._queued + sum(merge_budget.held(a) for a in self.accs.values())

    @staticmethod
    def _pack(acc: MergeState) -> None:
        """Pickle the value into ``data`` (under the lock): its size is measured too."""
        acc.data = pickle.dumps(acc.value)
        acc.size, acc.stale = len(acc.data), False

    @staticmethod
    def _unpack(acc: MergeState) -> None:
        """The value of a state loaded packed (merger's thread, under the lock)."""
        if acc.packed:
            acc.value = pickle.loads(acc.data) if acc.data else None
            acc.size, acc.packed = len(acc.data or b""), False

    def _acc(self, task_id: int) -> MergeState:
        """The task's state, read from the store the first time (on the owner thread)."""
        with self._lock:
            acc = self.accs.get(task_id)
        if acc is None:
            acc = self.load(task_id)
            with self._lock:
                if task_id not in self.accs and task_id in self._dropped:
                    acc.out_of_order, acc.final, acc.last = self._dropped.pop(task_id)
                acc = self.accs.setdefault(task_id, acc)
            acc.used_at = time.monotonic()
            if self.budget is not None:
                self._evict()  # loaded again: others may have to go
        acc.used_at = time.monotonic()
        return acc

    def load(self, task_id: int) -> MergeState:
        """A task's merge state as saved: the accumulator row and the merge error, the
        value still pickled (unpickled when merged into).  Runs on the owner thread."""
        data, merged, events = self.store.load_accumulator(task_id)
        options = self.store.task_options(task_id)
        error = options.get("merge_error")
        # The saved value does not say in which order its arrays were concatenated:
        # redo the merge in input order at the end (if it holds arrays), as a merge out
        # of order would.
        return MergeState(None, merged=merged, events=events, data=data,
                          size=len(data or b""), packed=data is not None,
                          saved_at=time.monotonic(), error=error, out_of_order=bool(merged),
                          rules=options.get("accumulate") or "panda-lab")

    # ---- the merger's thread ---------------------------------------------------------------
    def _db(self, fn: Callable, *args: Any) -> Any:
        """A store call from the merger's thread: handed to the loop, which owns the store."""
        return self.server.db_from_thread(fn, *args)

    def _state(self, task_id: int) -> MergeState:
        """The task's state, in hand until :meth:`_one_done` (never dropped meanwhile);
        loaded again, on the owner thread, if the budget dropped it since submit()."""
        with self._lock:
            self._handling = task_id
            acc = self.accs.get(task_id)
        if acc is None:
            acc = self._db(self._acc, task_id)
        acc.used_at = time.monotonic()
        return acc

    def _run(self) -> None:
        while not self._stopping:
            try:
                item = self._q.get(timeout=PERSIST_EVERY)
            except queue.Empty:  # idle: save what changed since the last save
                self._persist_idle()
                try:
                    self._keep_to_budget()
                except Exception:
                    log.exception("keeping the merged results within their budget failed")
                continue
            if item is None:  # close() woke the thread
                continue
            task_id = item[0]
            if item[3] is not None and self.budget is not None:
                with self._done:
                    self._queued -= len(item[3])
            try:
                self._handle(*item)
            except Exception:
                log.exception("merging a result of task %s failed", task_id)
            finally:
                self._one_done(task_id)

    def _one_done(self, task_id: int) -> None:
        """One item of the task is done: keep to the budget (the task may be dropped now,
        if nothing more is queued), then wake who waits for the task to settle."""
        with self._lock:
            self._handling = None
        with self._done:
            self._pending[task_id] -= 1
            waiters = []
            if not self._pending[task_id]:
                del self._pending[task_id]
                waiters = self._waiters.pop(task_id, [])
        try:
            self._keep_to_budget()
        except Exception:
            log.exception("keeping the merged results within their budget failed")
        for fut in waiters:
            try:
                fut.get_loop().call_soon_threadsafe(_resolve, fut)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    def _persist_idle(self) -> None:
        with self._lock:
            dirty = [(t, a) for t, a in self.accs.items() if a.dirty]
        for task_id, acc in dirty:
            try:
                self._persist(task_id, acc)
            except Exception:
                log.exception("saving the merged result of task %s failed", task_id)

    def _handle(self, task_id: int, index: int | None, job_id: int | None,
                data: bytes | None, final: bool, ended: bool) -> None:
        acc = self._state(task_id)
        if index is not None and index not in acc.merged and acc.error is None \
                and not held("merging"):
            try:
                self._merge_one(task_id, index, data, acc)
            except MergeError as exc:
                self._failed(task_id, index, job_id, acc, exc)
                if isinstance(exc, merge_budget.OverBudget):  # keep only what is saved
                    self._drop_unsaved(task_id, acc)
        if final and acc.out_of_order and acc.error is None:
            with self._lock:
                self._unpack(acc)
        if final and acc.out_of_order and acc.error is None and has_awkward(acc.value):
            try:
                self._remerge_in_order(task_id, acc)
            except MergeError as exc:
                self._failed(task_id, None, None, acc, exc)
        if acc.dirty and (final or time.monotonic() - acc.saved_at > PERSIST_EVERY):
            self._persist(task_id, acc)
        if ended:
            acc.final = True

    def _merge_one(self, task_id: int, index: int, data: bytes | None,
                   acc: MergeState) -> None:
        from panda_lab.analysis.accumulate import merge

        if data is None:  # a large result, kept in the result store
            data = self._db(self.store.results, task_id, [index])[0]["data"]
        cr = load_result(data)
        start = self._start(task_id, acc, index)
        with self._lock:
            self._unpack(acc)
            value = merge(acc.value, cr.result, rules=acc.rules)  # raises before any change
            size = self._within_budget(task_id, acc, value, len(data))
            # Job indices are not input order (scouts come first): compare inputs.
            if start is None or (acc.last is not None and start < acc.last):
                acc.out_of_order = True
            if start is not None:
                acc.last = start if acc.last is None else max(acc.last, start)
            acc.value, acc.size = value, size
            acc.merged.add(index)
            acc.events += cr.events
            acc.dirty = acc.stale = True

    def _start(self, task_id: int, acc: MergeState, index: int) -> tuple[int, int] | None:
        """Where job ``index``'s input starts; the task's chunks are read again when a job
        is new (after sizing), so once per batch of jobs, not per result."""
        if index not in acc.starts:
            starts: dict[int, tuple[int, int]] = {}
            for c in self._db(self.store.task_chunks, task_id):
                key = (c["file_index"], c["start"])
                starts[c["job_index"]] = min(starts.get(c["job_index"], key), key)
            acc.starts = starts
        return acc.starts.get(index)

    def _failed(self, task_id: int, index: int | None, job_id: int | None, acc: MergeState,
                exc: MergeError) -> None:
        chunks = [c for c in self._db(self.store.task_chunks, task_id)
                  if c["job_index"] == index]
        with self._lock:
            merged_jobs = set(acc.merged)
        err = MergeError(exc.path, exc.reason, task=task_id, job_index=index, chunks=chunks,
                         merged_jobs=merged_jobs)
        with self._lock:
            acc.error = {**err.to_dict(), "job_id": job_id}
            error = acc.error
        log.error("%s", err)
        self.on_error(task_id, error)

    def _remerge_in_order(self, task_id: int, acc: MergeState) -> None:
        """Awkward arrays are concatenated, so their order matters: redo the merge in
        input order (file, then entry) once the task is over.  Histograms and numbers
        do not care, and keep their running merge."""
        from panda_lab.analysis.accumulate import merge_all

        sizes = self._db(self.store.result_sizes, task_id)
        indices = [i for i in sizes if i in acc.merged]
        starts = {i: self._start(task_id, acc, i) or (i, 0) for i in indices}
        indices.sort(key=lambda i: starts[i])
        # Read in batches that fit what the budget leaves free, not all at once.
        room = max(1, (self.budget or sum(sizes.values())) - self.memory())
        value = merge_all((pickle.loads(data).result
                           for batch in merge_budget.batches(sizes, indices, room)
                           for data in self._in_order(task_id, batch)), rules=acc.rules)
        with self._lock:
            acc.value, acc.stale = value, True
            acc.out_of_order = False
            acc.last = max(starts.values(), default=None)
            acc.dirty = True

    def _in_order(self, task_id: int, batch: list[int]) -> list[bytes]:
        """The stored results of the jobs of ``batch``, in the batch's order (the store
        gives them by job index)."""
        rows = {r["index"]: r["data"] for r in self._db(self.store.results, task_id, batch)}
        return [rows[i] for i in batch]

    def _persist(self, task_id: int, acc: MergeState) -> None:
        with self._lock:
            if acc.stale or acc.data is None:
                self._pack(acc)
            merged, events, data = set(acc.merged), acc.events, acc.data
            acc.saved_at = time.monotonic()
        self._db(self.store.save_accumulator, task_id, data, merged, events)
        with self._lock:
            # only now may the budget drop it (merges happen on this thread only)
            acc.dirty = False
        self.server.announce("partial", {"task": task_id, "events": events,
                                         "jobs_merged": len(merged)})

    # ---- the budget (panda_lab.server.merge_budget) -----------------------------------
    def _within_budget(self, task_id: int, acc: MergeState, value: Any, added: int) -> int:
        """The size of ``value``, a task's new merged value (under the lock): estimated
        from the last measure plus the result's bytes, measured (pickled) when that
        estimate is over the budget.  Raises :class:`~merge_budget.OverBudget` when the
        measure is over it too."""
        size = acc.size + added
        if self.budget is None or 2 * size <= self.budget:
            return size
        size = len(pickle.dumps(value))
        if 2 * size > self.budget:  # the value and its pickled copy
            from panda_lab.server.config import MERGE_MEMORY_HOW

            raise merge_budget.OverBudget("result", merge_budget.refusal(2 * size, self.budget,
                                                            MERGE_MEMORY_HOW))
        return size

    def _drop_unsaved(self, task_id: int, acc: MergeState) -> None:
        """A refused task keeps only its saved merged result, pickled."""
        if acc.dirty:
            self._persist(task_id, acc)
        with self._lock:
            acc.value, acc.packed = None, acc.data is not None

    def _keep_to_budget(self) -> None:
        """Drop what may be dropped (saved, not in hand, no error), least recently
        used first, until the merger holds no more than its budget; if that is not
        enough, save the unsaved ones that may be dropped once saved, and drop them too."""
        if self.budget is None:
            self.peak = max(self.peak, self.memory())
            return
        held = self._evict()
        if held > self.budget:
            with self._done, self._lock:
                unsaved = sorted(((a.used_at, t, a) for t, a in self.accs.items()
                                  if a.dirty and t != self._handling and a.error is None),
                                 key=lambda x: x[0])
            for _, task_id, acc in unsaved:
                self._persist(task_id, acc)
                held = self._evict()
                if held <= self.budget:
                    break
        self.peak = max(self.peak, held)

    def _evict(self) -> int:
        """One round of :func:`merge_budget.to_evict` (on any thread: it only forgets what
        is saved); returns the bytes held after it."""
        assert self.budget is not None
        with self._done, self._lock:
            total = self._queued + sum(merge_budget.held(a) for a in self.accs.values())
            states = [(t, a, a.used_at, not a.dirty and t != self._handling
                       and a.error is None and not a.stale)
                      for t, a in self.accs.items()]
            for task_id, what in merge_budget.to_evict(states, total, self.budget):
                acc = self.accs[task_id]
                if what == "value":
                    acc.value, acc.packed = None, True
                else:
                    del self.accs[task_id]
                    self._dropped[task_id] = (acc.out_of_order, acc.final, acc.last)
            held = self._queued + sum(merge_budget.held(a) for a in self.accs.values())
            self.peak = max(self.peak, held)
            return held


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)
