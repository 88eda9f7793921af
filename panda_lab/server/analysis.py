"""Dataset analyses on the server: scouting, generating jobs, merging results as they come.

The way an analysis travels: ``submit`` splits the dataset (or sends scouts first);
``on_changes`` sees every job change, hands finished results to the merger and, once
the scouts are done, sizes and generates the remaining jobs; the merger keeps one merged
result per task, persisted together with the job indices it holds, so a restart merges
exactly the results not yet in it: each chunk counts once.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from panda_lab.analysis.files import check_columns
from panda_lab.model import JOB_FINAL, TaskState
from panda_lab.payload import dumps_call
from panda_lab.server.splitter import (
    SplitRule,
    remaining,
    scouts,
    size_from_scouts,
    split_all,
    split_empty,
)
from panda_lab.store import Changes

if TYPE_CHECKING:  # pragma: no cover
    from panda_lab.server.app import Server

log = logging.getLogger("panda_lab.analysis")

#: Seconds between two writes of a task's merged result while it runs.
PERSIST_EVERY = 1.0


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
    out_of_order: bool = False      # awkward arrays must be concatenated in chunk order
    final: bool = False             # the task ended and its last merge is done


def _has_awkward(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_awkward(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_awkward(v) for v in value)
    return type(value).__module__.startswith("awkward")


class Merger:
    """Merges each finished chunk's result into its task's result, on its own thread."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.store = server.store
        self.accs: dict[int, Acc] = {}
        self.measures: dict[int, list[dict]] = {}
        self._q: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name="panda-merger")
        self._thread.start()

    def submit(self, task_id: int, index: int, job_id: int, site: str | None,
               data: bytes | None, final: bool = False) -> None:
        self._q.put((task_id, index, job_id, site, data, final))

    def flush(self, task_id: int) -> None:
        """Persist now (the task ended)."""
        self._q.put((task_id, None, None, None, None, True))

    def wait_idle(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while (self._q.unfinished_tasks) and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._q.unfinished_tasks

    def catch_up(self) -> None:
        """After a restart: merge the results of analysis tasks not in their saved state."""
        for task_id in self.store.analysis_tasks_to_merge():
            acc = self._acc(task_id)
            for r in self.store.results(task_id):
                if r["index"] not in acc.merged:
                    self.submit(task_id, r["index"], r["job_id"], None, r["data"])
            self.flush(task_id)

    def _acc(self, task_id: int) -> Acc:
        with self._lock:
            acc = self.accs.get(task_id)
            if acc is None:
                data, merged, events = self.store.load_accumulator(task_id)
                acc = Acc(pickle.loads(data) if data else None, merged, events, data,
                          saved_at=time.monotonic())
                self.accs[task_id] = acc
            return acc

    def snapshot(self, task_id: int) -> tuple[bytes | None, int, int, bool]:
        acc = self._acc(task_id)
        with self._lock:
            if acc.dirty or (acc.data is None and acc.value is not None):
                acc.data = pickle.dumps(acc.value)
            return acc.data, len(acc.merged), acc.events, acc.final

    def _run(self) -> None:
        from panda_lab.analysis.accumulate import merge

        while True:
            item = self._q.get()
            try:
                task_id, index, _job_id, site, data, final = item
                acc = self._acc(task_id)
                if index is not None and index not in acc.merged:
                    if data is None:
                        data = self.store.results(task_id, [index])[0]["data"]
                    cr = pickle.loads(data)
                    with self._lock:
                        if acc.merged and index < max(acc.merged):
                            acc.out_of_order = True
                        acc.value = merge(acc.value, cr.result)
                        acc.merged.add(index)
                        acc.events += cr.events
                        acc.dirty = True
                    self.measures.setdefault(task_id, []).append(
                        {"index": index, "events": cr.events, "seconds": cr.seconds,
                         "rss_mb": cr.rss_mb, "site": site})
                if final and acc.out_of_order and _has_awkward(acc.value):
                    self._remerge_in_order(task_id, acc)
                if acc.dirty and (final or time.monotonic() - acc.saved_at > PERSIST_EVERY):
                    self._persist(task_id, acc)
                if final and index is None:
                    acc.final = True
            except Exception:
                log.exception("merging a result of task %s failed", item[0])
            finally:
                self._q.task_done()

    def _remerge_in_order(self, task_id: int, acc: Acc) -> None:
        """Awkward arrays are concatenated, so their order matters: redo the merge in
        input order (file, then entry) once the task is over.  Histograms and numbers
        do not care, and keep their running merge."""
        from panda_lab.analysis.accumulate import merge_all

        first: dict[int, tuple[int, int]] = {}
        for c in self.store.task_chunks(task_id):
            key = (c["file_index"], c["start"])
            first[c["job_index"]] = min(first.get(c["job_index"], key), key)
        rows = [r for r in self.store.results(task_id) if r["index"] in acc.merged]
        rows.sort(key=lambda r: first.get(r["index"], (r["index"], 0)))
        value = merge_all(pickle.loads(r["data"]).result for r in rows)
        with self._lock:
            acc.value = value
            acc.out_of_order = False
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
        self.merger = Merger(server)
        self.tasks: dict[int, dict] = {}   # analysis task id -> its split rule and files
        self._generating: set[int] = set()
        self._background: set[asyncio.Task] = set()

    # ---- submit ----------------------------------------------------------------------
    def submit(self, name: str, dataset: str, common: bytes, rule: SplitRule, site: Any,
               options: dict, skip_bad_files: bool, owner: str = "",
               columns: list[str] | None = None) -> tuple[int, Changes]:
        """Runs on the store's thread.  Raises ``DatasetNotFound`` and, for ``columns``
        that no file of the dataset has, ``UnknownColumns``."""
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
            open_=scouting, state=state, job_chunks=first)
        self.tasks[task_id] = {"rule": rule, "files": files, "scouting": scouting}
        return task_id, changes

    # ---- every change goes through here ------------------------------------------------
    def on_changes(self, changes: Changes) -> None:
        """Runs on the event loop: feed the merger, and notice finished scouting."""
        final = {str(s) for s in JOB_FINAL}
        touched: set[int] = set()
        for c in changes.jobs:
            if not self._is_analysis(c.task_id):
                continue
            if c.state == "finished":
                self.merger.submit(c.task_id, c.job_index, c.job_id, c.site, c.result)
            if c.state in final:
                touched.add(c.task_id)
        for task_id, state in changes.tasks:
            if self._is_analysis(task_id) and state in ("done", "finished", "failed", "aborted"):
                self.merger.flush(task_id)
        for task_id in touched:
            if self.tasks.get(task_id, {}).get("scouting", True) and \
                    self.tasks[task_id]["rule"].mode == "auto" and task_id not in self._generating:
                self._spawn(self._maybe_generate(task_id))

    def _is_analysis(self, task_id: int) -> bool:
        return task_id in self.tasks

    def resume(self) -> None:
        """Started with the server: finish the scouting that a restart interrupted."""
        for task_id, t in self.tasks.items():
            if t.get("scouting") and t["rule"].mode == "auto":
                self._spawn(self._maybe_generate(task_id))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)  # keep a reference until it is done
        task.add_done_callback(self._background.discard)

    async def _maybe_generate(self, task_id: int) -> None:
        """When every scout has a final attempt, size and make the remaining jobs."""
        self._generating.add(task_id)
        try:
            s = self.server
            info = await s.db(self.store.get_task, task_id)
            if info["state"] != TaskState.SCOUTING:
                self.tasks[task_id]["scouting"] = False
                return
            jobs = await s.db(self.store.list_jobs, task_id)
            if any(j["state"] not in {str(x) for x in JOB_FINAL} for j in jobs):
                return
            await asyncio.get_running_loop().run_in_executor(None, self.merger.wait_idle)
            measures = [m for m in self.merger.measures.get(task_id, [])]
            rule: SplitRule = self.tasks[task_id]["rule"]
            user_failed = [j for j in jobs if j["state"] == "failed"
                           and j["error_category"] == "user"]
            changes = await s.db(self._generate, task_id, measures, rule, bool(user_failed))
            self.tasks[task_id]["scouting"] = False
            s.publish(changes)
        finally:
            self._generating.discard(task_id)

    def _generate(self, task_id: int, measures: list[dict], rule: SplitRule,
                  user_failed: bool) -> Changes:
        files = self.tasks[task_id]["files"]
        done = self.store.task_chunks(task_id)
        scouting = size_from_scouts(measures, rule.target_job_seconds)
        self.store.update_task_options(task_id, {"scouting": scouting.as_dict()})
        changes = Changes()
        if user_failed:
            # The processor fails on real data: the rest would fail the same way.
            changes.extend(self.store.close_task(task_id))
            return changes
        rest = remaining(files, done, scouting.events_per_job)
        if rest:
            _ids, more = self.store.add_jobs(task_id, job_specs(rest), job_chunks=rest)
            changes.extend(more)
        changes.extend(self.store.set_task_state(task_id, TaskState.SCOUTING, TaskState.RUNNING))
        changes.extend(self.store.close_task(task_id))
        return changes

    # ---- what clients read -------------------------------------------------------------
    def partial(self, task_id: int) -> dict:
        """Runs on the store's thread: the merged state and the coverage per file."""
        data, n_merged, events, final = self.merger.snapshot(task_id)
        if not final and not self.merger._q.unfinished_tasks:
            # A task that ended before this server started: final once all is merged.
            info = self.store.get_task(task_id)
            final = info["state"] in ("done", "finished", "failed", "aborted") and \
                n_merged >= info["n_done"]
        merged = set(self.merger.accs[task_id].merged) if task_id in self.merger.accs else set()
        per_file: dict[int, dict] = {}
        for f in self.tasks.get(task_id, {}).get("files", []):
            per_file[f["file_index"]] = {"file_index": f["file_index"], "path": f["path"],
                                         "events_done": 0, "entries": f["entries"]}
        for c in self.store.task_chunks(task_id):
            if c["job_index"] in merged and c["file_index"] in per_file:
                per_file[c["file_index"]]["events_done"] += c["stop"] - c["start"]
        total = sum(f["entries"] for f in per_file.values())
        return {"data": data, "jobs_merged": n_merged, "events": events, "final": final,
                "total_events": total, "per_file": list(per_file.values())}

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
                                   "scouting": t["state"] == TaskState.SCOUTING}
        self.merger.catch_up()
