"""Dataset analyses on the server: the orchestration of a task from submit to close.

The way an analysis travels: ``submit`` splits the dataset (or sends scouts first, see
:mod:`panda_lab.model.splitter`); ``on_changes`` sees every job change, hands finished
results to the merger (:mod:`panda_lab.server.merger`) and, once the scouts are done,
sizes and generates the remaining jobs; once every job has a final attempt and every
result is merged, the task is closed.  What clients read of it is in
:mod:`panda_lab.server.analysis_report`.

An analysis task stays *open* until its results are merged: its jobs ending do not end it;
the service closes it once the merger holds every result (PanDA's JEDI likewise ends a
task only after its merge step).  So ``done`` means the merged result is there, and a
result that cannot be merged can still fail the task (see :meth:`AnalysisService.merge_failed`).

Everything the orchestration decides from is in the database, so a server killed at any
step goes on exactly where it was (:class:`AnalysisTask` says what is kept where): the
scouts' measurements are read back from their stored results, the merge progress from the
accumulator row, a merge error from the task's options.

Threads: everything here runs on the store's owner thread, the event loop's once the
server runs (``submit``, ``scout_measures`` and ``_generate`` through ``Server.db``), and
the building thread before (``load_known_tasks``).  The merger's thread reaches this
module only through ``_on_merge_error``, which hands the error to the loop.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from panda_lab.analysis.accumulate import MergeError
from panda_lab.analysis.files import check_columns
from panda_lab.model import JOB_FINAL, TASK_FINAL, JobState, TaskState
from panda_lab.model.retry import ErrorCategory
from panda_lab.model.splitter import (
    SplitFile,
    SplitRule,
    remaining,
    scouts,
    size_from_scouts,
    split_all,
    split_empty,
)
from panda_lab.payload import dumps_call
from panda_lab.server.merger import HOLD_ENV, Merger, held, load_result
from panda_lab.store import Changes, SubmissionKey, TaskStateError

if TYPE_CHECKING:  # pragma: no cover
    from panda_lab.server.app import Server

log = logging.getLogger("panda_lab.analysis")


def job_specs(job_chunks: list[list[dict]]) -> list[dict]:
    """One job spec (``{"payload": bytes}``) per chunk list; the processor travels once,
    as the task's common payload."""
    return [{"payload": dumps_call(None, (cs,))} for cs in job_chunks]


@dataclass
class AnalysisTask:
    """What the orchestration keeps in memory about one analysis task.

    Every field is a copy of something durable, read back by
    :meth:`AnalysisService.load_known_tasks` when the server starts:

    * ``rule``: the task's options (``split``);
    * ``files``: the files of the dataset the task's options name (the datasets tables;
      a dataset registered again with ``replace`` since the submit is read as it is now);
    * ``scouting``: the task's state is ``scouting`` (its remaining jobs are not made yet);
    * ``ended``: the task's state is final (a retry makes it running and open again).

    Memory only, and rebuilt by :meth:`AnalysisService.resume`: the checks in flight
    (``AnalysisService._generating``, ``_closing``), which a restart simply runs again.
    The merged result's own state is the merger's (:class:`~panda_lab.server.merger.MergeState`).
    """

    rule: SplitRule
    files: list[SplitFile]
    scouting: bool
    ended: bool


class AnalysisService:
    """Submits, scouts, sizes and closes dataset analyses (JEDI's task handling)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.store = server.store
        self.merger = Merger(server, on_error=self._on_merge_error)
        self.tasks: dict[int, AnalysisTask] = {}   # every analysis task this server knows
        self._generating: set[int] = set()
        self._closing: dict[int, bool] = {}  # task -> checked again once this check ends
        self._background: set[asyncio.Task] = set()

    # ---- submit ----------------------------------------------------------------------
    def submit(self, name: str, dataset: str, common: bytes, rule: SplitRule, site: Any,
               options: dict, skip_bad_files: bool, owner: str = "",
               columns: list[str] | None = None,
               key: SubmissionKey | None = None) -> tuple[int, Changes]:
        """Split the dataset by ``rule`` (or make its scouts) and create the task with
        those jobs; runs on the store's owner thread.  The task is made open: it ends when
        its results are merged, not when its jobs end (see the module's docstring).
        ``key``: the request's idempotency key, recorded with the task.
        Returns (task id, the store's changes, to be published).  Raises
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
            open_=bool(first), state=state, job_chunks=first, key=key)
        self.tasks[task_id] = AnalysisTask(rule, files, scouting, ended=not first)
        return task_id, changes

    # ---- every change goes through here ------------------------------------------------
    def on_changes(self, changes: Changes) -> None:
        """Runs on the event loop: feed the merger, notice finished scouting, and close
        a task whose every job ended once its results are merged."""
        touched: set[int] = set()
        for c in changes.jobs:
            if not self._is_analysis(c.task_id):
                continue
            if c.state == JobState.FINISHED:
                self.merger.submit(c.task_id, c.job_index, c.job_id, c.result)
            if c.state == JobState.FAILED and c.error_category == ErrorCategory.MERGE:
                self._pilot_merge_error(c.task_id, c.job_index, c.job_id, c.error_message)
            if c.state in JOB_FINAL:
                touched.add(c.task_id)
        for task_id, state in changes.tasks:
            if not self._is_analysis(task_id):
                continue
            t = self.tasks[task_id]
            if state in TASK_FINAL:
                t.ended = True
                self.merger.flush(task_id)
            elif state == TaskState.RUNNING and t.ended:
                # retried: open again, so that it ends only once the new results merged
                t.ended = False
                self.store.reopen_task(task_id)
        for task_id in touched:
            t = self.tasks[task_id]
            if t.scouting and t.rule.mode == "auto":
                if task_id not in self._generating:
                    self._spawn(self._maybe_generate(task_id))
            else:
                self._spawn(self._maybe_close(task_id))

    def _is_analysis(self, task_id: int) -> bool:
        return task_id in self.tasks

    def resume(self) -> None:
        """Started with the server, on the running loop: start merging, and finish the
        scouting or the closing that a restart interrupted."""
        self.merger.start()
        for task_id, t in self.tasks.items():
            if t.scouting and t.rule.mode == "auto":
                self._spawn(self._maybe_generate(task_id))
            elif not t.ended:
                self._spawn(self._maybe_close(task_id))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)  # keep a reference until it is done
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Stopped with the server, on the loop while it still runs: stop merging."""
        await self.merger.close()

    async def _merged(self, task_id: int) -> dict | None:
        """Wait until the merger holds what was submitted for the task; its merge error."""
        await self.merger.settled(task_id)
        return self.merger.error(task_id)

    # ---- scouting ------------------------------------------------------------------------
    async def _maybe_generate(self, task_id: int) -> None:
        """When every scout has a final attempt, size and make the remaining jobs."""
        self._generating.add(task_id)
        try:
            s = self.server
            info = await s.db(self.store.get_task, task_id)
            if info["state"] != TaskState.SCOUTING:
                self.tasks[task_id].scouting = False
                if info["state"] not in TASK_FINAL:
                    self._spawn(self._maybe_close(task_id))
                return
            jobs = await s.db(self.store.list_jobs, task_id)
            if any(j["state"] not in JOB_FINAL for j in jobs):
                return
            error = await self._merged(task_id)
            if error is not None:
                await self._fail(task_id, error)
                return
            if held("sizing"):
                log.warning("task %s: not sized (%s=sizing)", task_id, HOLD_ENV)
                return
            measures = await s.db(self.scout_measures, task_id)
            rule = self.tasks[task_id].rule
            user_failed = [j for j in jobs if j["state"] == JobState.FAILED
                           and j["error_category"] == ErrorCategory.USER]
            try:
                changes = await s.db(self._generate, task_id, measures, rule, bool(user_failed))
            except TaskStateError as exc:  # killed or failed meanwhile
                log.info("task %s: not sized: %s", task_id, exc)
                return
            self.tasks[task_id].scouting = False
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
                cr = load_result(r["data"])
            except MergeError:  # the merger reports it too, and fails the task
                continue
            out.append({"index": r["index"], "events": cr.events, "seconds": cr.seconds,
                        "rss_mb": cr.rss_mb, "site": sites.get(r["index"])})
        return out

    def _generate(self, task_id: int, measures: list[dict], rule: SplitRule,
                  user_failed: bool) -> Changes:
        """Size the rest from the scouts and add its jobs, in one transaction."""
        files = self.tasks[task_id].files
        done = self.store.task_chunks(task_id)
        scouting = size_from_scouts(measures, rule.target_job_seconds,
                                    self.server.config.max_events_per_job)
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
        info = await s.db(self.store.task_progress, task_id)
        if info is None or not info["open"] or info["state"] in TASK_FINAL or \
                info["state"] == TaskState.SCOUTING or info["unfinished"]:
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

    def _on_merge_error(self, task_id: int, error: dict) -> None:
        """On the merger's thread: hand the error to the event loop."""
        loop = self.server.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.merge_failed, task_id, error)
        # else: the server is stopping; a restart finds the error when it merges again

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
        if first or info["state"] not in TASK_FINAL:
            changes = await s.db(self.store.fail_task, task_id, error["message"],
                                 {"merge_error": error})
            s.publish(changes)
        if first:
            s.bus.publish("merge_error", {**error, "task": task_id})

    # ---- what clients read ---------------------------------------------------------------
    def files_of(self, task_id: int) -> list[SplitFile]:
        """The input files of an analysis task this server knows; ``[]`` for another task."""
        t = self.tasks.get(task_id)
        return t.files if t is not None else []

    def load_known_tasks(self) -> None:
        """When the server is built (after a restart), on the building thread before the
        loop runs: which tasks are analyses, whose scouting is unfinished, which have
        ended (all read from the tasks and datasets tables), and queue for merging the
        stored results that are not in their task's saved merged result."""
        for t in self.store.tasks_of_kind("analysis"):
            ds = t["options"].get("dataset")
            try:
                files = self.store.get_dataset(ds)["files"]
            except LookupError:
                files = []
            rule = SplitRule(**t["options"].get("split", {}))
            self.tasks[t["id"]] = AnalysisTask(rule, files,
                                               scouting=t["state"] == TaskState.SCOUTING,
                                               ended=t["state"] in TASK_FINAL)
        self.merger.catch_up()
