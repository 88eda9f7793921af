"""What clients read of a dataset analysis: the result so far and the fate of every input.

Read-only views over the merger's state and the store, for ``GET /tasks/{id}/partial`` and
``GET /tasks/{id}/report``.  Both run on the store's owner thread (the event loop's, through
``Server.db``) and read no job result: the merged result is the merger's latest copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from panda_lab.model import TASK_FINAL
from panda_lab.model.retry import ErrorCategory
from panda_lab.model.splitter import SplitFile

if TYPE_CHECKING:  # pragma: no cover
    from panda_lab.server.merger import Merger
    from panda_lab.store import Store


def partial(store: Store, merger: Merger, files: Sequence[SplitFile], task_id: int) -> dict:
    """The merged result so far and the coverage per file.

    ``files``: the task's input files (empty when the task is not a known analysis).
    Returns ``{"data": pickled merged value or None, "jobs_merged", "events", "final",
    "total_events", "per_file": [{"file_index", "path", "events_done", "entries"}],
    "merge_error": dict or None}``; ``final`` is true once the task ended and every result
    (or a merge error) is in.  Raises ``TaskNotFound`` for an unknown task whose state the
    answer needs."""
    data, n_merged, events, final, error = merger.snapshot(task_id)
    if not final and not merger.busy(task_id):
        # A task that ended before this server started: final once all is merged.
        info = store.get_task(task_id)
        final = info["state"] in TASK_FINAL and \
            (n_merged >= info["n_done"] or error is not None)
    merged = merger.merged(task_id)
    per_file: dict[int, dict] = {}
    for f in files:
        per_file[f["file_index"]] = {"file_index": f["file_index"], "path": f["path"],
                                     "events_done": 0, "entries": f["entries"]}
    for c in store.task_chunks(task_id):
        if c["job_index"] in merged and c["file_index"] in per_file:
            per_file[c["file_index"]]["events_done"] += c["stop"] - c["start"]
    total = sum(f["entries"] for f in per_file.values())
    return {"data": data, "jobs_merged": n_merged, "events": events, "final": final,
            "total_events": total, "per_file": list(per_file.values()),
            "merge_error": error}


def report(store: Store, merger: Merger, task_id: int) -> list[dict]:
    """The store's report (every input range with the fate of its job, then the files no
    job reads), with whether each range is in the merged result (``merged``) and the merge
    error on the job it names (``error_category`` "merge").  Raises ``TaskNotFound``."""
    rows = store.analysis_report(task_id)
    merged = merger.merged(task_id)
    error = merger.error(task_id)
    for r in rows:
        r["merged"] = r["job_index"] in merged
        if error is not None and r["job_index"] == error.get("job_index"):
            r["error_category"], r["error"] = str(ErrorCategory.MERGE), error["message"]
    return rows
