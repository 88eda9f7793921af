"""Dataset analyses on the server: scouting, generating jobs, merging results as they come.

The way an analysis travels: ``submit`` splits the dataset (or sends scouts first);
``on_changes`` sees every job change, hands finished results to the merger and, once
the scouts are done, sizes and generates the remaining jobs; the merger keeps one merged
result per task, persisted together with the job indices it holds, so a restart merges
exactly the results not yet in it: each chunk counts once.

An analysis task stays *open* until its results are merged: its jobs ending do not end it;
the service closes it once the merger holds every result (PanDA's JEDI likewise ends a
task only after its merge step).  So ``done`` means the merged result is there, and a
result that cannot be merged can still fail the task.

Everything the orchestration decides from is in the database, so a server killed at any
step goes on exactly where it was: the scouts' measurements are read back from their
stored results, the merge progress from the accumulator row, a merge error from the
task's options.

A result that cannot be merged (see :func:`AnalysisService.merge_failed`) fails the task.
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
from panda_lab.analysis.files import check_columns
from panda_lab.model import JOB_FINAL, TASK_FINAL, TaskState
from panda_lab.model.splitter import (
    SplitRule,
    remaining,
    scouts,
    size_from_scouts,
    split_all,
    split_empty,
)
from panda_lab.payload import dumps_call
from panda_lab.store import Changes, TaskStateError

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

_FINAL_JOB = frozenset(str(s) for s in JOB_FINAL)
_FINAL_TASK = frozenset(str(s) for s in TASK_FINAL)


def _held(step: str) -> bool:
    return os.environ.get(HOLD_ENV) == step


def job_specs(job_chunks: list[list[dict]]) -> list[dict]:
    """One job per chunk list; the processor travels once, as the task's common payload."""
    return [{"payload": dumps_call(None, (cs,))} for cs in job_chunks]


@dataclass
class Acc:
    value: Any = None
    merged: set[int] = field(default_factory=set)
    events: int = 0
    data: bytes | None = None       # the pickled value, for cheap ``partial()`` answers
    dirty: bool = False
    saved_at: float = 0.0
    out_of_order: bool = False      # awkward arrays must be concatenated in input order
    #: Where each job's input starts, (file index, entry): the input order of its result.
    starts: dict[int, tuple[int, int]] = field(default_factory=dict)
    last: tuple[int, int] | None = None   # the latest input start merged so far
    final: bool = False             # the task ended and its last merge is done
    error: dict | None = None       # a merge error (MergeError.to_dict()): nothing more merges


def _has_awkward(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_awkward(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_awkward(v) for v in value)
    return type(value).__module__.startswith("awkward")


class Merger:
    """Merges each finished chunk's result into its task's result, on its own thread.

    ``on_error(task_id, error)`` is called on that thread when a result cannot be merged
    (a :class:`MergeError` naming the job, its input and what differed); the task's result
    then takes no more results."""

    def __init__(self, server: Server,
                 on_error: Callable[[int, MergeError], None] | None = None) -> None:
        self.server = server
        self.store = server.store
        self.on_error = on_error or (lambda _task, _err: None)
        self.accs: dict[int, Acc] = {}
        self._q: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._pending: dict[int, int] = {}          # task -> items queued, not yet done
        self._done = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True, name="panda-merger")
        self._thread.start()

    def submit(self, task_id: int, index: int | None, job_id: int | None, site: str | None,
               data: bytes | None, final: bool = False, ended: bool = False) -> None:
        """Merge job ``index``'s result (``data``, or read from the store); with ``final``,
        then put awkward arrays in input order and save; ``ended``: the task has ended."""
        with self._done:
            self._pending[task_id] = self._pending.get(task_id, 0) + 1
        self._q.put((task_id, index, job_id, site, data, final, ended))

    def finalize(self, task_id: int) -> None:
        """Make the merged result final and save it (before the task is closed)."""
        self.submit(task_id, None, None, None, None, final=True)

    def flush(self, task_id: int) -> None:
        """Persist now (the task ended)."""
        self.submit(task_id, None, None, None, None, final=True, ended=True)

    def busy(self, task_id: int) -> bool:
        """Results of the task are queued or being merged."""
        with self._done:
            return bool(self._pending.get(task_id))

    def wait_task(self, task_id: int, timeout: float | None = None) -> bool:
        """Block until every result submitted for the task so far is merged."""
        with self._done:
            return self._done.wait_for(lambda: not self._pending.get(task_id), timeout)

    def error(self, task_id: int) -> dict | None:
        """The task's merge error, if one happened (``MergeError.to_dict()``)."""
        return self._acc(task_id).error

    def stop(self, task_id: int, error: dict) -> None:
        """Merge no more results of the task: ``error`` (a job's merge failed on a pilot)."""
        acc = self._acc(task_id)
        with self._lock:
            acc.error = acc.error or error

    def catch_up(self) -> None:
        """After a restart: merge the results of analysis tasks not in their saved state."""
        for task_id in self.store.analysis_tasks_to_merge():
            acc = self._acc(task_id)
            if acc.error is not None:
                continue  # it failed on a merge error: nothing more is merged
            for r in self.store.results(task_id):
                if r["index"] not in acc.merged:
                    self.submit(task_id, r["index"], r["job_id"], None, r["data"])
            self.flush(task_id)

    def _acc(self, task_id: int) -> Acc:
        with self._lock:
            acc = self.accs.get(task_id)
        if acc is not None:
            return acc
        data, merged, events = self.store.load_accumulator(task_id)
        error = self.store.get_task(task_id)["options"].get("merge_error")
        value = pickle.loads(data) if data else None
        # The saved value does not say in which order its arrays were concatenated:
        # redo the merge in input order at the end, as a merge out of order would.
        acc = Acc(value, merged, events, data, saved_at=time.monotonic(), error=error,
                  out_of_order=bool(merged) and _has_awkward(value))
        with self._lock:
            return self.accs.setdefault(task_id, acc)

    def snapshot(self, task_id: int) -> tuple[bytes | None, int, int, bool, dict | None]:
        acc = self._acc(task_id)
        with self._lock:
            if acc.dirty or (acc.data is None and acc.value is not None):
                acc.data = pickle.dumps(acc.value)
            return acc.data, len(acc.merged), acc.events, acc.final, acc.error

    def merged(self, task_id: int) -> set[int]:
        acc = self._acc(task_id)
        with self._lock:
            return set(acc.merged)

    def _run(self) -> None:
        while True:
            try:
                item = self._q.get(timeout=PERSIST_EVERY)
            except queue.Empty:  # idle: save what changed since the last save
                self._persist_idle()
                continue
            task_id = item[0]
            try:
                self._handle(*item)
            except Exception:
                log.exception("merging a result of task %s failed", task_id)
            finally:
                with self._done:
                    self._pending[task_id] -= 1
                    if not self._pending[task_id]:
                        del self._pending[task_id]
                    self._done.notify_all()
                self._q.task_done()

    def _persist_idle(self) -> None:
        with self._lock:
            dirty = [(t, a) for t, a in self.accs.items() if a.dirty]
        for task_id, acc in dirty:
            try:
                self._persist(task_id, acc)
            except Exception:
                log.exception("saving the merged result of task %s failed", task_id)

    def _handle(self, task_id: int, index: int | None, job_id: int | None, _site: str | None,
                data: bytes | None, final: bool, ended: bool) -> None:
        acc = self._acc(task_id)
        if index is not None and index not in acc.merged and acc.error is None \
                and not _held("merging"):
            try:
                self._merge_one(task_id, index, data, acc)
            except MergeError as exc:
                self._failed(task_id, index, job_id, acc, exc)
        if final and acc.out_of_order and acc.error is None and _has_awkward(acc.value):
            try:
                self._remerge_in_order(task_id, acc)
            except MergeError as exc:
                self._failed(task_id, None, None, acc, exc)
        if acc.dirty and (final or time.monotonic() - acc.saved_at > PERSIST_EVERY):
            self._persist(task_id, acc)
        if ended:
            acc.final = True

    def _merge_one(self, task_id: int, index: int, data: bytes | None, acc: Acc) -> None:
        from panda_lab.analysis.accumulate import merge

        if data is None:
            data = self.store.results(task_id, [index])[0]["data"]
        try:
            cr = pickle.loads(data)
        except Exception as exc:
            raise MergeError("result", f"cannot be unpickled on the server: "
                                       f"{type(exc).__name__}: {exc}") from exc
        start = self._start(task_id, acc, index)
        with self._lock:
            value = merge(acc.value, cr.result)  # raises before anything changes
            # Job indices are not input order (scouts come first): compare inputs.
            if start is None or (acc.last is not None and start < acc.last):
                acc.out_of_order = True
            if start is not None:
                acc.last = start if acc.last is None else max(acc.last, start)
            acc.value = value
            acc.merged.add(index)
            acc.events += cr.events
            acc.dirty = True

    def _start(self, task_id: int, acc: Acc, index: int) -> tuple[int, int] | None:
        """Where job ``index``'s input starts; the task's chunks are read again when a job
        is new (after sizing), so once per batch of jobs, not per result."""
        if index not in acc.starts:
            starts: dict[int, tuple[int, int]] = {}
            for c in self.store.task_chunks(task_id):
                key = (c["file_index"], c["start"])
                starts[c["job_index"]] = min(starts.get(c["job_index"], key), key)
            acc.starts = starts
        return acc.starts.get(index)

    def _failed(self, task_id: int, index: int | None, job_id: int | None, acc: Acc,
                exc: MergeError) -> None:
        chunks = [c for c in self.store.task_chunks(task_id) if c["job_index"] == index]
        err = MergeError(exc.path, exc.reason, task=task_id, job_index=index, chunks=chunks,
                         merged_jobs=self.merged(task_id))
        with self._lock:
            acc.error = {**err.to_dict(), "job_id": job_id}
        log.error("%s", err)
        self.on_error(task_id, err)

    def _remerge_in_order(self, task_id: int, acc: Acc) -> None:
        """Awkward arrays are concatenated, so their order matters: redo the merge in
        input order (file, then entry) once the task is over.  Histograms and numbers
        do not care, and keep their running merge."""
        from panda_lab.analysis.accumulate import merge_all

        rows = [r for r in self.store.results(task_id) if r["index"] in acc.merged]
        starts = {r["index"]: self._start(task_id, acc, r["index"]) or (r["index"], 0)
                  for r in rows}
        rows.sort(key=lambda r: starts[r["index"]])
        value = merge_all(pickle.loads(r["data"]).result for r in rows)
        with self._lock:
            acc.value = value
            acc.out_of_order = False
            acc.last = max(starts.values(), default=None)
            acc.dirty = True

    def _persist(self, task_id: int, acc: Acc) -> None:
        with self._lock:
            acc.data = pickle.dumps(acc.value)
            merged, events, data = set(acc.merged), acc.events, acc.data
            acc.dirty = False
            acc.saved_at = time.monotonic()
        self.store.save_accumulator(task_id, data, merged, events)
        self.server.announce("partial", {"task": task_id, "events": events,
                                         "jobs_merged": len(merged)})


class AnalysisService:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.store = server.store
        self.merger = Merger(server, on_error=self._on_merge_error)
        self.tasks: dict[int, dict] = {}   # analysis task id -> its split rule and files
        self._generating: set[int] = set()
        self._closing: dict[int, bool] = {}  # task -> checked again once this check ends
        self._background: set[asyncio.Task] = set()

    # ---- submit ----------------------------------------------------------------------
    def submit(self, name: str, dataset: str, common: bytes, rule: SplitRule, site: Any,
               options: dict, skip_bad_files: bool, owner: str = "",
               columns: list[str] | None = None) -> tuple[int, Changes]:
        """Runs on the store's thread.  The task is made open: it ends when its results
        are merged, not when its jobs end (see the module's docstring).  Raises
        ``DatasetNotFound`` and, for ``columns`` that no file of the dataset has,
        ``UnknownColumns``."""
        ds = self.store.get_dataset(dataset)
        files = ds["files"]
        if columns and files:
            check_columns(files, columns, f"dataset {dataset!r} (tree {ds['tree']!r})")
        options = dict(options, kind="analysis", dataset=dataset, skip_bad_files=skip_bad_files,
                       split=rule.__dict__, total_events=ds["n_events"],
                       bad_files=ds.get("bad_files", []))
        if not any(f["entries"] for f in files):
            # Nothing to split: the processor still runs once, on no events of the first
            # file, so the result has the shape it would have (empty histograms, zero
            # counts); without a file there is no job, and no result.
            first, state = split_empty(files), TaskState.READY
        elif rule.mode == "auto":
            first, state = scouts(files, rule), TaskState.SCOUTING
        else:
            first, state = split_all(files, rule), TaskState.READY
        read = {c["file_index"] for cs in first for c in cs}
        options["empty_files"] = [[f["file_index"], f["path"], f["tree"]] for f in files
                                  if f["entries"] == 0 and f["file_index"] not in read]
        scouting = state == TaskState.SCOUTING
        task_id, _ids, changes = self.store.create_task(
            name, job_specs(first), owner=owner, site=site, options=options, common=common,
            # a dataset without files has no job and nothing to merge: it ends at once
            open_=bool(first), state=state, job_chunks=first)
        self.tasks[task_id] = {"rule": rule, "files": files, "scouting": scouting,
                               "ended": not first}
        return task_id, changes

    # ---- every change goes through here ------------------------------------------------
    def on_changes(self, changes: Changes) -> None:
        """Runs on the event loop: feed the merger, notice finished scouting, and close
        a task whose every job ended once its results are merged."""
        touched: set[int] = set()
        for c in changes.jobs:
            if not self._is_analysis(c.task_id):
                continue
            if c.state == "finished":
                self.merger.submit(c.task_id, c.job_index, c.job_id, c.site, c.result)
            if c.state == "failed" and c.error_category == "merge":
                self._pilot_merge_error(c.task_id, c.job_index, c.job_id, c.error_message)
            if c.state in _FINAL_JOB:
                touched.add(c.task_id)
        for task_id, state in changes.tasks:
            if not self._is_analysis(task_id):
                continue
            t = self.tasks[task_id]
            if state in _FINAL_TASK:
                t["ended"] = True
                self.merger.flush(task_id)
            elif state == TaskState.RUNNING and t.get("ended"):
                # retried: open again, so that it ends only once the new results merged
                t["ended"] = False
                self.store.reopen_task(task_id)
        for task_id in touched:
            t = self.tasks[task_id]
            if t.get("scouting") and t["rule"].mode == "auto":
                if task_id not in self._generating:
                    self._spawn(self._maybe_generate(task_id))
            else:
                self._spawn(self._maybe_close(task_id))

    def _is_analysis(self, task_id: int) -> bool:
        return task_id in self.tasks

    def resume(self) -> None:
        """Started with the server: finish the scouting or the closing that a restart
        interrupted."""
        for task_id, t in self.tasks.items():
            if t.get("scouting") and t["rule"].mode == "auto":
                self._spawn(self._maybe_generate(task_id))
            elif not t.get("ended"):
                self._spawn(self._maybe_close(task_id))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)  # keep a reference until it is done
        task.add_done_callback(self._background.discard)

    async def _merged(self, task_id: int) -> dict | None:
        """Wait until the merger holds what was submitted for the task; its merge error."""
        await asyncio.get_running_loop().run_in_executor(None, self.merger.wait_task, task_id)
        return self.merger.error(task_id)

    # ---- scouting ------------------------------------------------------------------------
    async def _maybe_generate(self, task_id: int) -> None:
        """When every scout has a final attempt, size and make the remaining jobs."""
        self._generating.add(task_id)
        try:
            s = self.server
            info = await s.db(self.store.get_task, task_id)
            if info["state"] != TaskState.SCOUTING:
                self.tasks[task_id]["scouting"] = False
                if info["state"] not in _FINAL_TASK:
                    self._spawn(self._maybe_close(task_id))
                return
            jobs = await s.db(self.store.list_jobs, task_id)
            if any(j["state"] not in _FINAL_JOB for j in jobs):
                return
            error = await self._merged(task_id)
            if error is not None:
                await self._fail(task_id, error)
                return
            if _held("sizing"):
                log.warning("task %s: not sized (%s=sizing)", task_id, HOLD_ENV)
                return
            measures = await s.db(self.scout_measures, task_id)
            rule: SplitRule = self.tasks[task_id]["rule"]
            user_failed = [j for j in jobs if j["state"] == "failed"
                           and j["error_category"] == "user"]
            try:
                changes = await s.db(self._generate, task_id, measures, rule, bool(user_failed))
            except TaskStateError as exc:  # killed or failed meanwhile
                log.info("task %s: not sized: %s", task_id, exc)
                return
            self.tasks[task_id]["scouting"] = False
            s.publish(changes)
            self._spawn(self._maybe_close(task_id))
        finally:
            self._generating.discard(task_id)

    def scout_measures(self, task_id: int) -> list[dict]:
        """What each finished scout measured (events, seconds, rss_mb, site), read back
        from the stored results: the same after a restart as before it.  Runs on the
        store's thread."""
        scouts_ = sorted({c["job_index"] for c in self.store.task_chunks(task_id) if c["scout"]})
        sites = {j["job_index"]: j["site"] for j in self.store.list_jobs(task_id)}
        out = []
        for r in self.store.results(task_id, scouts_):
            try:
                cr = pickle.loads(r["data"])
            except Exception:  # the merger reports it as a merge error
                continue
            out.append({"index": r["index"], "events": cr.events, "seconds": cr.seconds,
                        "rss_mb": cr.rss_mb, "site": sites.get(r["index"])})
        return out

    def _generate(self, task_id: int, measures: list[dict], rule: SplitRule,
                  user_failed: bool) -> Changes:
        """Size the rest from the scouts and add its jobs, in one transaction."""
        files = self.tasks[task_id]["files"]
        done = self.store.task_chunks(task_id)
        scouting = size_from_scouts(measures, rule.target_job_seconds)
        # A processor that fails on real data (a user error) would fail the rest the same way.
        rest = [] if user_failed else remaining(files, done, scouting.events_per_job)
        _ids, changes = self.store.add_jobs(
            task_id, job_specs(rest), job_chunks=rest,
            advance=(TaskState.SCOUTING, TaskState.RUNNING),
            options={"scouting": scouting.as_dict()})
        return changes

    # ---- ending --------------------------------------------------------------------------
    async def _maybe_close(self, task_id: int) -> None:
        """Close the task (it then ends: done, finished or failed) once every job has a
        final attempt and every result is merged.  One check per task at a time; a
        change during a check makes it check again."""
        if task_id in self._closing:
            self._closing[task_id] = True
            return
        self._closing[task_id] = False
        try:
            while True:
                await self._close_if_merged(task_id)
                if not self._closing[task_id]:
                    return
                self._closing[task_id] = False
        finally:
            del self._closing[task_id]

    async def _close_if_merged(self, task_id: int) -> None:
        s = self.server
        info = await s.db(self.store.get_task, task_id)
        if not info["open"] or info["state"] in _FINAL_TASK or \
                info["state"] == TaskState.SCOUTING:
            return
        if any(n for st, n in info["attempts_by_state"].items() if st not in _FINAL_JOB):
            return
        error = await self._merged(task_id)
        if error is not None:
            await self._fail(task_id, error)
            return
        if len(self.merger.merged(task_id)) < info["n_done"]:
            return  # not merged yet (a restart merges them, then checks again)
        # Saved in its final form (arrays in input order) before the task says "done": a
        # crash right after leaves nothing to redo.
        self.merger.finalize(task_id)
        error = await self._merged(task_id)
        if error is not None:
            await self._fail(task_id, error)
            return
        changes = await s.db(self.store.close_task, task_id)
        s.publish(changes)

    # ---- merge errors --------------------------------------------------------------------
    def merge_failed(self, task_id: int, error: dict) -> None:
        """A result of the task cannot be merged: the task fails, at once.

        PanDA's ``failed``, not ``finished`` (partial): ``finished`` promises a right result
        over the input it covers, and there is none here.  The chunks disagree about what
        they compute (10 bins against 20, a histogram against a number), so neither side is
        *the* result, and merging the rest would only hide it: the processor must be fixed
        and the analysis run again.  So the jobs still waiting or running are cancelled,
        the task ends ``failed`` with the error as its message and in its options
        (``merge_error``: job, file and entry range, key path, what differed), and the
        event stream carries a ``merge_error`` message: a client learns it at once.  The
        result merged before the error stays readable (``partial()``) for inspection."""
        self._spawn(self._fail(task_id, error))

    def _on_merge_error(self, task_id: int, err: MergeError) -> None:
        """On the merger's thread: hand the error to the event loop."""
        loop = self.server.loop
        error = self.merger.error(task_id) or err.to_dict()
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.merge_failed, task_id, error)
        # else: the server is starting; ``resume`` finds the error when it checks the task

    def _pilot_merge_error(self, task_id: int, job_index: int, job_id: int,
                           message: str | None) -> None:
        """A job's own chunks did not merge on its pilot: the same as on the server."""
        chunks = [c for c in self.store.task_chunks(task_id) if c["job_index"] == job_index]
        error = {"path": None, "reason": None, "task": task_id, "job_index": job_index,
                 "job_id": job_id, "chunks": [{k: c[k] for k in ("file_index", "path", "start",
                                                                 "stop")} for c in chunks],
                 "merged_jobs": [], "merged_chunks": [], "source": "pilot",
                 "message": f"task {task_id}, job {job_index}: {message}"}
        self.merger.stop(task_id, error)
        self.merge_failed(task_id, self.merger.error(task_id) or error)

    async def _fail(self, task_id: int, error: dict) -> None:
        s = self.server
        info = await s.db(self.store.get_task, task_id)
        first = not info["options"].get("merge_error")
        if first or info["state"] not in _FINAL_TASK:
            changes = await s.db(self.store.fail_task, task_id, error["message"],
                                 {"merge_error": error})
            s.publish(changes)
        if first:
            s.bus.publish("merge_error", {**error, "task": task_id})

    # ---- what clients read -------------------------------------------------------------
    def partial(self, task_id: int) -> dict:
        """Runs on the store's thread: the merged state and the coverage per file."""
        data, n_merged, events, final, error = self.merger.snapshot(task_id)
        if not final and not self.merger.busy(task_id):
            # A task that ended before this server started: final once all is merged.
            info = self.store.get_task(task_id)
            final = info["state"] in _FINAL_TASK and \
                (n_merged >= info["n_done"] or error is not None)
        merged = self.merger.merged(task_id)
        per_file: dict[int, dict] = {}
        for f in self.tasks.get(task_id, {}).get("files", []):
            per_file[f["file_index"]] = {"file_index": f["file_index"], "path": f["path"],
                                         "events_done": 0, "entries": f["entries"]}
        for c in self.store.task_chunks(task_id):
            if c["job_index"] in merged and c["file_index"] in per_file:
                per_file[c["file_index"]]["events_done"] += c["stop"] - c["start"]
        total = sum(f["entries"] for f in per_file.values())
        return {"data": data, "jobs_merged": n_merged, "events": events, "final": final,
                "total_events": total, "per_file": list(per_file.values()),
                "merge_error": error}

    def report(self, task_id: int) -> list[dict]:
        """Runs on the store's thread: the store's report, with whether each range is in
        the merged result (``merged``) and the merge error on the job it names."""
        rows = self.store.analysis_report(task_id)
        merged = self.merger.merged(task_id)
        error = self.merger.error(task_id)
        for r in rows:
            r["merged"] = r["job_index"] in merged
            if error is not None and r["job_index"] == error.get("job_index"):
                r["error_category"], r["error"] = "merge", error["message"]
        return rows

    def load_known_tasks(self) -> None:
        """After a restart: which tasks are analyses, and whose scouting is unfinished."""
        for t in self.store.tasks_of_kind("analysis"):
            ds = t["options"].get("dataset")
            try:
                files = self.store.get_dataset(ds)["files"]
            except LookupError:
                files = []
            rule = SplitRule(**t["options"].get("split", {}))
            self.tasks[t["id"]] = {"rule": rule, "files": files,
                                   "scouting": t["state"] == TaskState.SCOUTING,
                                   "ended": t["state"] in _FINAL_TASK}
        self.merger.catch_up()
