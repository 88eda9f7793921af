"""Datasets and dataset analyses from the notebook: ``lab.datasets``, ``lab.analyze``.

Files are inspected here, on the client (entries, sizes, cluster boundaries from the
files' metadata only), and the dataset is kept by the server for every notebook.  An
analysis handle gives the merged result so far (``partial``), the final result, and a
report of what happened to every file and entry range.
"""

from __future__ import annotations

import base64
import glob
import numbers
import os
import pickle
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial as bind
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from panda_lab.analysis.accumulate import COFFEA, MergeError, rules_for
from panda_lab.analysis.errors import BadFilesError, DataError
from panda_lab.client.fileset import is_fileset, register_fileset
from panda_lab.client.tasks import TaskHandle
from panda_lab.http import ApiError, idempotent
from panda_lab.model import JOB_UNSUCCESSFUL, TASK_FINAL, JobState
from panda_lab.payload import dumps_fn, environment, workdir

if TYPE_CHECKING:  # pragma: no cover
    from panda_lab.analysis.files import FileInfo
    from panda_lab.client.session import Lab


class IncompleteResult(RuntimeError):
    """Some input was not processed; ``report`` says which and why.

    Never raised for results that cannot be merged: that is a :class:`MergeError`."""

    def __init__(self, message: str, report: pd.DataFrame) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class Dataset:
    """A registered dataset: its usable ``files`` and, in ``bad_files``, the files given at
    registration that could not be used (path -> reason), skipped with ``skip_bad_files``."""

    name: str
    tree: str
    n_files: int
    n_events: int
    size_bytes: int
    files: list[dict]
    bad_files: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        bad = f", {len(self.bad_files)} bad files skipped" if self.bad_files else ""
        return (f"<Dataset {self.name!r}: {self.n_files} files, {self.n_events:,} events, "
                f"{self.size_bytes / 1e6:.1f} MB, tree {self.tree!r}{bad}>")

    def files_frame(self) -> pd.DataFrame:
        """The usable files as a table, one row a file: columns ``file_index`` (position
        in the list given at registration), ``path``, ``entries`` (events) and
        ``size_bytes`` (bytes on storage)."""
        return pd.DataFrame(self.files, columns=["file_index", "path", "entries", "size_bytes"])


def _expand(files: str | Path | list) -> list[str]:
    """Paths, globs and URLs to the list of files, in order (each glob's matches sorted).

    Raises ``FileNotFoundError`` naming every glob that matches nothing: a pattern that
    finds no file is a mistake in the pattern, not a bad file to skip.  A plain path is kept
    as given, so a missing one is reported with the other bad files."""
    items = files if isinstance(files, list | tuple) else [files]
    out: list[str] = []
    empty: list[str] = []
    for item in items:
        s = str(item)
        if "://" in s and not s.startswith("file://"):
            out.append(s)
            continue
        s = s.removeprefix("file://")
        matches = sorted(glob.glob(s)) if glob.has_magic(s) else [s]
        if not matches:
            empty.append(s)
        out.extend(str(Path(m).resolve()) for m in matches)
    if empty:
        raise FileNotFoundError(f"no file matches {', '.join(map(repr, empty))}")
    return out


def _inspect_all(paths: list[str], tree: str) -> tuple[dict[int, FileInfo], dict[int, str]]:
    """Inspect every file (a few at a time): the good ones' metadata and every bad one's
    reason, by position in ``paths``.  Only :class:`DataError` marks a file bad."""
    from panda_lab.analysis.files import inspect_file

    def one(path: str) -> FileInfo | DataError:
        try:
            return inspect_file(path, tree)
        except DataError as exc:
            return exc

    good: dict[int, FileInfo] = {}
    bad: dict[int, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(paths)))) as pool:
        for k, got in enumerate(pool.map(one, paths)):
            if isinstance(got, DataError):
                bad[k] = got.reason
            else:
                good[k] = got
    return good, bad


class Datasets:
    """The server's dataset catalogue."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def register(self, name: str, files: str | Path | list, tree: str = "Events",
                 replace: bool = False, endpoint: str = "local",
                 replicas: dict[str, list[str]] | None = None,
                 skip_bad_files: bool = False) -> Dataset:
        """Register files (paths, globs or URLs) as a dataset; reads only their metadata.
        ``tree`` names a TTree or an RNTuple (uproot's ``f["Events"] = {...}`` writes one).

        ``files`` are at storage ``endpoint``; ``replicas`` maps other endpoints to the
        URLs of the same files, in the same order.  A job reads the replica at its site's
        endpoint first (``endpoint =`` in sites.toml), then the others in turn.

        Every file is inspected before anything is decided.  Files that cannot be used
        (missing, unreadable, not ROOT, truncated, no such tree, not a tree, a URL that
        does not answer) raise one :class:`~panda_lab.analysis.errors.BadFilesError`
        whose ``bad_files`` maps each to its reason; with ``skip_bad_files=True`` the
        others are registered and the bad ones are kept with their reasons
        (``Dataset.bad_files``), and every analysis of the dataset reports them as
        skipped.  A glob that matches nothing raises ``FileNotFoundError``.  An empty
        list registers a dataset without files, which analyses to ``None``.

        Registering again the same files (the same paths, tree and sizes) under the same
        name gives back the dataset already registered, without reading the files again:
        a notebook can be run twice.

        Returns the :class:`Dataset` as the server now keeps it (:meth:`get`).

        Raises ``ValueError`` when a ``replicas`` list does not give one URL per file;
        :class:`~panda_lab.http.ApiError` with status 409 when ``name`` is taken by other
        files and ``replace`` is false, and 422 when a file's cluster boundaries do not
        cover its entries; :class:`~panda_lab.http.ServerUnreachable` when the server is
        down."""
        paths = _expand(files)
        for ep, urls in (replicas or {}).items():
            if len(urls) != len(paths):
                raise ValueError(f"replicas at {ep!r}: {len(urls)} URLs for {len(paths)} files;"
                                 " give one per file, in the same order")
        if not replace:
            same = self._registered_as(name, paths, tree)
            if same is not None:
                return same
        good, bad = _inspect_all(paths, tree)
        if bad and not skip_bad_files:
            raise BadFilesError({paths[k]: r for k, r in bad.items()}, tree, len(paths))
        body = {"name": name, "tree": tree, "replace": replace, "files": [
            {"file_index": k, "path": i.path, "tree": i.tree, "entries": i.entries,
             "size_bytes": i.size_bytes, "clusters": i.clusters, "branches": i.branches,
             "replicas": [{"endpoint": endpoint, "url": i.path}] + [
                 {"endpoint": ep, "url": str(urls[k])} for ep, urls in (replicas or {}).items()]}
            for k, i in good.items()],
            "bad_files": [{"file_index": k, "path": paths[k], "tree": tree, "reason": r}
                          for k, r in bad.items()]}
        self.lab.api.post("/api/datasets", body)
        return self.get(name)

    def _registered_as(self, name: str, paths: list[str], tree: str) -> Dataset | None:
        """The dataset ``name`` when it holds exactly ``paths`` (good or bad, in order) of
        ``tree``, each local file of the size registered; ``None`` when there is no such
        dataset.  Raises :class:`~panda_lab.http.ApiError` (409) when the name is taken
        by other files, before any file is read."""
        try:
            ds = self.get(name)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        kept = {f["file_index"]: f for f in ds.files}
        bad = list(ds.bad_files)
        listed = [kept[k]["path"] for k in sorted(kept)]

        def size_now(path: str) -> int | None:
            try:
                return os.stat(path).st_size
            except OSError:
                return None
        same = (ds.tree == tree and sorted(listed + bad) == sorted(paths)
                and all(size_now(f["path"]) == f["size_bytes"] for f in ds.files
                        if "://" not in f["path"]))
        if not same:
            raise ApiError(409, f"dataset {name!r} is registered with other files (or files "
                                "changed since); pass replace=True to register these in its "
                                "place, or choose another name", "POST", "/api/datasets")
        return ds

    def get(self, name: str) -> Dataset:
        """The dataset registered as ``name`` (also ``lab.datasets[name]``).

        Raises :class:`~panda_lab.http.ApiError` with status 404 when there is none."""
        d = self.lab.api.get(f"/api/datasets/{name}")
        return Dataset(d["name"], d["tree"], d["n_files"], d["n_events"], d["size_bytes"],
                       d["files"], {b["path"]: b["reason"] for b in d.get("bad_files", [])})

    def list(self) -> pd.DataFrame:
        """Every registered dataset, one row each, indexed by ``name``: ``tree``,
        ``n_files``, ``n_events`` (events in the usable files), ``size_bytes`` and
        ``created_at`` (as the server stores it).  Empty, with those columns, when there
        are none."""
        rows = self.lab.api.get("/api/datasets")
        return pd.DataFrame(rows, columns=["name", "tree", "n_files", "n_events", "size_bytes",
                                           "created_at"]).set_index("name")

    __getitem__ = get


@dataclass
class Partial:
    """The merged result so far and how much of the dataset it covers."""

    result: Any
    events: int
    total_events: int
    jobs_merged: int
    per_file: pd.DataFrame
    #: The task ended and the merger has merged its last result: this is the result.
    final: bool = False
    #: Why the results could not be merged (``MergeError.to_dict()``), if they could not.
    merge_error: dict | None = None

    @property
    def fraction(self) -> float:
        """``events / total_events``, from 0.0 to 1.0; 1.0 for a dataset without events."""
        return self.events / self.total_events if self.total_events else 1.0

    def __repr__(self) -> str:
        return (f"<Partial {self.events:,}/{self.total_events:,} events "
                f"({100 * self.fraction:.1f}%), {self.jobs_merged} jobs merged>")


class AnalysisTask(TaskHandle):
    """A dataset analysis: a task whose jobs each process a chunk of the dataset."""

    #: Where a notebook user looks for what an analysis lost: each chunk's fate first.
    _look = "task.report(), task.errors()"

    def __init__(self, lab: Lab, task_id: int, processor: Any = None) -> None:
        super().__init__(lab, task_id)
        self.processor = processor

    def partial(self) -> Partial:
        """Cheap: the server's merged state, without reading any job's result.

        Returns a :class:`Partial`: the merged result so far (unpickled here; ``None``
        before the first merge), events merged of the dataset's total, jobs merged, and
        ``per_file`` (columns ``file_index``, ``path``, ``events_done``, ``entries``).
        Raises :class:`~panda_lab.http.ApiError` (404) for a task the server does not
        know."""
        snap = self.lab.api.get(f"/api/tasks/{self.id}/partial")
        result = pickle.loads(base64.b64decode(snap["data"])) if snap["data"] else None
        per_file = pd.DataFrame(snap.get("per_file", []),
                                columns=["file_index", "path", "events_done", "entries"])
        return Partial(result, snap["events"], snap["total_events"], snap["jobs_merged"],
                       per_file, snap.get("final", False), snap.get("merge_error"))

    def result(self, timeout: float | None = None, allow_incomplete: bool = False) -> Any:
        """Wait for the task and return the merged result (postprocessed, if the processor
        has ``postprocess``).

        Raises :class:`~panda_lab.analysis.accumulate.MergeError` as soon as the task failed
        because results could not be merged (it names the job, its file and entry range,
        the key path and what differed; ``.report`` is attached), and
        :class:`IncompleteResult` when some input was not processed, unless every such
        chunk was a bad file skipped on request (``skip_bad_files``) or
        ``allow_incomplete`` is set; then it warns.  Files skipped at registration are
        warned about too.  A dataset without entries gives the processor's output on no
        events (one job reads none of the first file); one without files gives ``None``,
        and ``postprocess`` is not called on ``None``.

        ``timeout`` is in seconds (``None``: wait for ever); past it, :class:`TimeoutError`
        (from :meth:`wait`)."""
        info = self.lab.wait(self.id, timeout=timeout)  # the task as it ended
        self._raise_merge_error(info["options"].get("merge_error"))
        deadline = time.monotonic() + 30
        p = self.partial()
        while not (p.final and p.jobs_merged >= info["n_done"]) and p.merge_error is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)  # the merger is finishing the last results
            p = self.partial()
        self._raise_merge_error(p.merge_error)
        if p.events != p.total_events or info["n_done"] < info["n_jobs"]:
            rep = self.report()
            bad = rep[rep["job_index"].notna() & ~rep["status"].isin(["done", "done after retry"])]
            msg = (f"task {self.id}: {p.total_events - p.events:,} of {p.total_events:,} "
                   f"events not processed ({len(bad)} chunks: "
                   f"{', '.join(sorted(set(bad['status'])))})")
            failed = bad[bad["error"].notna()]
            if len(failed):  # the input of the first failure and why, at the top
                first = failed.iloc[0]
                msg += (f"; first: {first['path']}, entries {first['start']:,} to "
                        f"{first['stop']:,}: {first['error']}")
            skipped_only = not bad.empty and set(bad["status"]) <= {"skipped"}
            if not (allow_incomplete or skipped_only):
                raise IncompleteResult(msg + "; see .report", rep)
            warnings.warn(msg, stacklevel=2)
        skipped = info["options"].get("bad_files") or []
        if skipped:
            warnings.warn(f"task {self.id}: {len(skipped)} file(s) of dataset "
                          f"{info['options'].get('dataset')!r} were skipped at registration "
                          "as bad; see .report", stacklevel=2)
        from panda_lab.analysis.runner import postprocess

        if self.processor is None or p.result is None:
            return p.result
        return postprocess(self.processor, p.result)

    def _raise_merge_error(self, error: dict | None) -> None:
        if error is None:
            return
        exc: BaseException | None = None
        if error.get("source") == "pilot":  # the job's own exception, with all its fields
            exc = self.errors().get(error["job_index"])
        if not isinstance(exc, MergeError):
            exc = MergeError.from_dict(error)
        exc.task, exc.job_index = self.id, error["job_index"]
        exc.report = self.report()  # type: ignore[attr-defined]
        raise exc

    @property
    def complete(self) -> bool:
        """Every input was processed: the task ended, every job finished, and no file of
        the dataset was skipped (at registration or as bad input)."""
        info = self.info()
        p = self.partial()
        return (info["state"] in TASK_FINAL and p.events == p.total_events
                and info["n_done"] == info["n_jobs"] and not info["options"].get("bad_files"))

    @property
    def scouting(self) -> dict | None:
        """What the scout jobs measured (``events_per_job="auto"``, JEDI's scouts), as the
        server keeps it in the task's options: ``events_per_second`` (median over the
        scouts), ``rss_mb`` (largest resident memory, MB), ``per_site`` (events/s by
        site), ``events_per_job`` (the size it gave the other jobs) and ``note``; ``None``
        before the scouts finish or without scouts."""
        return self.info()["options"].get("scouting")

    def report(self) -> pd.DataFrame:
        """Every input range and its fate: done, done after retry, skipped (bad file, with
        ``skip_bad_files``), failed (why), merge failed (its result could not be merged:
        ``error`` says why), not merged (finished after a merge error, so not in the
        result), or still waiting or running.

        After the jobs' rows come the files no job read, with ``job_index`` <NA>: files
        without entries (``start`` = ``stop`` = 0, "done") and files found bad at
        registration (``start``/``stop`` <NA>, "skipped", ``error`` saying why).

        Returns a DataFrame, one row per range: ``job_index``, ``file_index``, ``path``,
        ``tree``, ``start``/``stop`` (entry numbers, stop exclusive), ``scout``, ``state``,
        ``attempts``, ``sites``, ``error_category``, ``error``, ``merged`` and ``status``
        (the fate above).  Raises :class:`~panda_lab.http.ApiError` (404) for an unknown
        task."""
        rows = self.lab.api.get(f"/api/tasks/{self.id}/report")
        info = self.info()
        skip = info["options"].get("skip_bad_files")
        df = pd.DataFrame(rows, columns=["job_index", "file_index", "path", "tree", "start",
                                         "stop", "scout", "state", "attempts", "sites",
                                         "error_category", "error", "merged"])
        for col in ("job_index", "start", "stop"):
            df[col] = df[col].astype("Int64")
        merge_failed = "merge_error" in info["options"]

        def status(r: pd.Series) -> str:
            if pd.isna(r["job_index"]):  # no job: nothing to read, or bad at registration
                return "done" if pd.isna(r["error"]) else "skipped"
            if r["error_category"] == "merge":
                return "merge failed"
            if r["state"] == JobState.FINISHED:
                if merge_failed and not r["merged"]:
                    return "not merged"
                return "done" if r["attempts"] == 1 else "done after retry"
            if r["state"] in JOB_UNSUCCESSFUL:
                return "skipped" if skip and r["error_category"] == "input" else "failed"
            return r["state"]

        df["status"] = df.apply(status, axis=1) if len(df) else pd.Series(dtype=str)
        return df


def analyze(lab: Lab, process: Any, dataset: str | Dataset | dict, *,
            events_per_job: int | str = "auto", files_per_job: int | None = None,
            target_job_seconds: float = 60.0, columns: list[str] | None = None,
            skip_bad_files: bool = False, site: str | list[str] = "ANY",
            name: str | None = None, retries: int = 2, n_scouts: int = 3,
            schema: Any = None, treename: str | None = None,
            network: str | None = None, policy: str | None = None) -> AnalysisTask:
    """Submit ``process`` over ``dataset`` as one analysis task; return its
    :class:`AnalysisTask` at once (the jobs run on pilots).

    ``dataset`` is a registered dataset (its name or :class:`Dataset`) or a coffea-style
    fileset, ``{"DYJets": {"files": {path: "Events"}, "metadata": {...}}, ...}``
    (:mod:`panda_lab.client.fileset`; ``treename`` for lists of files without trees),
    registered here first, its datasets' results merged into one as in coffea.

    ``schema``: ``None`` gives panda-lab's own events (:mod:`panda_lab.analysis.events`); a
    coffea schema (``coffea.nanoevents.NanoAODSchema``, or its name ``"NanoAOD"``) gives
    each chunk as coffea's NanoEvents, lazily read, with ``events.metadata`` as coffea's
    ``Runner`` gives it (the fileset's dataset and metadata; a registered dataset's name).

    The split is by events (``events_per_job``, an int), by whole files
    (``files_per_job``), or ``"auto"``: scout jobs measure the rate and the rest are cut
    to about ``target_job_seconds`` seconds each (JEDI's scouts).  Raises
    :class:`ValueError` when ``files_per_job`` or ``events_per_job`` is not a positive
    int (or ``"auto"``) or a fileset is malformed, :class:`ImportError` saying
    ``pip install 'panda-lab[coffea]'`` for a coffea schema where coffea is not installed,
    and :class:`panda_lab.payload.PayloadError` when ``process`` cannot be pickled; the
    server's refusal (unknown dataset) is a :class:`panda_lab.http.ApiError`.
    ``network``: brokerage's network term for this task (``"active"``, ``"passive"``
    or ``"off"``; ``None``: the server's); ``policy`` a brokerage policy to compare
    (``"round-robin"``, ``"least-loaded"``...), overriding it.
    """
    from panda_lab.analysis.runner import run_chunks

    def count(x: Any) -> bool:
        return isinstance(x, numbers.Integral) and not isinstance(x, bool) and x > 0

    spec = None
    if schema is not None:
        from panda_lab.analysis.nanoevents import NanoEventsSpec, resolve_schema, schema_ref

        spec = NanoEventsSpec(schema_ref(resolve_schema(schema)))
    if is_fileset(dataset):
        if spec is None:
            raise ValueError("a coffea fileset needs a coffea schema: schema=NanoAODSchema")
        ds_name, spec.per_file = register_fileset(lab, dataset, treename=treename,
                                                  skip_bad_files=skip_bad_files)
        name = name or f"analysis-{'+'.join(map(str, dataset))}"[:200]
    else:
        ds_name = dataset.name if isinstance(dataset, Dataset) else dataset
        if spec is not None:
            spec.dataset = ds_name
    if files_per_job is not None:
        if not count(files_per_job):
            raise ValueError(f"files_per_job must be a positive int, not {files_per_job!r}")
        split = {"mode": "files", "files_per_job": int(files_per_job)}
    elif isinstance(events_per_job, str) and events_per_job == "auto":
        split = {"mode": "auto", "target_job_seconds": target_job_seconds, "n_scouts": n_scouts}
    elif count(events_per_job):
        split = {"mode": "events", "events_per_job": int(events_per_job)}
    else:
        raise ValueError(f"events_per_job must be a positive int or 'auto', "
                         f"not {events_per_job!r}")
    cols = [columns] if isinstance(columns, str) else list(columns) if columns else None
    job_fn = bind(run_chunks, process, cols, nanoevents=spec) if spec else \
        bind(run_chunks, process, cols)
    reply = lab.api.post("/api/analyses", {
        "name": name or f"analysis-{ds_name}", "dataset": ds_name,
        "processor": base64.b64encode(dumps_fn(job_fn)).decode(), "split": split,
        "columns": cols, "site": site, "skip_bad_files": skip_bad_files,
        "options": {"max_attempts": retries + 1, "client": environment(),
                    "workdir": workdir(),
                    # the server merges the jobs' results by the same rules as the jobs
                    **({"accumulate": COFFEA} if rules_for(process) == COFFEA else {}),
                    **({"network": network} if network is not None else {}),
                    **({"policy": policy} if policy is not None else {})},
    }, headers=idempotent(), retry_for=lab.submit_retry_s)  # retried, made once
    return AnalysisTask(lab, reply["task"], process)
