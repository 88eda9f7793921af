"""``panda_lab.connect()``: a session with a panda-lab server, local or remote.

With no argument it finds the local server through the connection file, or starts
one detached (SQLite, the default local sites), so a notebook needs no setup.
"""

from __future__ import annotations

import base64
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from panda_lab import runtime
from panda_lab.client.analysis import AnalysisTask, Dataset, Datasets, analyze
from panda_lab.client.compare import Comparison
from panda_lab.client.executor import PandaExecutor
from panda_lab.client.tasks import TaskHandle, tasks_frame
from panda_lab.http import ApiClient, ApiError, ServerUnreachable, idempotent
from panda_lab.model import TASK_FINAL
from panda_lab.payload import dumps_call, dumps_fn, environment, workdir


class Lab:
    """A connection to a panda-lab server and the verbs a user needs.

    With ``home`` (a local server's runtime directory) the connection follows the server
    when it restarts: a request the old address does not answer re-reads the connection
    file and goes on at the new one, so a notebook's ``lab`` and its monitors carry on.
    When no server answers, the error says so in a few lines, and the call that fixes it.
    """

    #: Seconds a submission keeps trying a server that does not answer (a restart, a
    #: lost connection) before it raises; its retries carry one idempotency key, so
    #: they never make a second task.
    submit_retry_s: float = 30.0

    def __init__(self, url: str, token: str, home: Path | None = None) -> None:
        self.home = home
        if home is not None:
            fix = ("`lab = panda_lab.connect()` starts it again (or `panda-lab server "
                   "start` in a terminal); this lab then finds it by itself.")
        else:
            fix = f"start the server at {url}, or `lab = panda_lab.connect(url=...)` another."
        self.api = ApiClient(url, token, find=runtime.finder(home) if home else None, fix=fix)
        _short_errors_in_ipython()

    @property
    def url(self) -> str:
        """The server's base URL now (it changes when a local server restarts)."""
        return self.api.url

    def __repr__(self) -> str:
        try:
            sites = self.api.get("/api/sites")
            summary = ", ".join(f"{s['name']} ({s['kind']}, {s['pilots']} pilot(s))" for s in sites)
        except Exception as exc:  # a repr must never raise
            summary = f"unreachable: {exc}"
        return f"<panda_lab.Lab {self.url} sites: {summary}>"

    def close(self) -> None:
        """Close the HTTP connections; the server and its tasks are left running."""
        self.api.close()

    # ---- tasks ---------------------------------------------------------------------
    def submit(
        self,
        fn: Callable,
        arglist: Iterable[tuple] ,
        *,
        name: str = "task",
        site: str | list[str] = "ANY",
        retries: int = 2,
        priority: int = 0,
        cores: int = 1,
        memory_mb: int = 0,
        walltime_s: float = 0.0,
        output_limit: int | None = None,
        network: str | None = None,
        policy: str | None = None,
    ) -> int:
        """Submit one job per argument tuple, all calling ``fn``; returns the task id.

        The function travels once, with the task; each job carries only its arguments.
        Jobs that run on a pilot of this machine (the local sites) run in this process's
        working directory, so relative paths mean what they mean here; elsewhere they run
        in the pilot's directory (:func:`panda_lab.payload.job_directory`).
        ``output_limit``: characters of each job's stdout and stderr kept in full for
        :meth:`job_output` (default :data:`panda_lab.output.OUTPUT_LIMIT`).
        ``network``: brokerage's network term for this task, ``"active"`` (weighed),
        ``"passive"`` (computed and shown only) or ``"off"``; ``None``: the server's.
        ``policy``: a brokerage policy for comparisons (``"round-robin"``,
        ``"least-loaded"``, ... :class:`panda_lab.model.brokerage.Policy`), overriding
        ``network``.
        """
        common = dumps_fn(fn)
        jobs = [{"payload": base64.b64encode(dumps_call(None, args)).decode()}
                for args in arglist]
        options = {"priority": priority, "cores": cores, "memory_mb": memory_mb,
                   "walltime_s": walltime_s, "max_attempts": retries + 1,
                   "client": environment(), "workdir": workdir()}
        if output_limit is not None:
            options["output_limit"] = output_limit
        if network is not None:
            options["network"] = network
        if policy is not None:
            options["policy"] = policy
        # one key for the request and its retries: a server that crashed or lost its
        # answer mid-way makes the task once (panda_lab.http.idempotent)
        reply = self.api.post("/api/tasks", {
            "name": name, "owner": os.environ.get("USER", ""), "site": site,
            "jobs": jobs, "common": base64.b64encode(common).decode(), "options": options,
        }, headers=idempotent(), retry_for=self.submit_retry_s)
        return reply["task"]

    def task_info(self, task: int | str) -> dict:
        """The server's record of a task (by id or name): ``id``, ``name``, ``state``,
        ``n_jobs``, ``n_done``, ``attempts_by_state``, ``options``...  Raises
        :class:`~panda_lab.http.ApiError` (404) for an unknown task."""
        return self.api.get(f"/api/tasks/{task}")

    def list_tasks(self, limit: int = 100, state: str | None = None) -> list[dict]:
        """The ``limit`` most recent tasks' records, newest first, only those in
        ``state`` when given."""
        return self.api.get("/api/tasks", limit=limit, state=state)

    def jobs(self, task: int | str, all_attempts: bool = False) -> list[dict]:
        """The task's jobs as records (the latest attempt of each, or every attempt with
        ``all_attempts``), by job index then attempt, without payloads.  Raises
        :class:`~panda_lab.http.ApiError` (404) for an unknown task."""
        return self.api.get(f"/api/tasks/{task}/jobs",
                            all_attempts="true" if all_attempts else "false")

    def wait(self, task: int | str, timeout: float | None = None) -> dict:
        """Block until the task is in a final state (``TASK_FINAL``); return its info dict.

        ``timeout`` is in seconds (``None``: wait for ever).  Raises :class:`TimeoutError`
        (message: the task and its current state) when the task is not final by then, and
        :class:`panda_lab.http.ApiError` when the server does not know the task.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 30.0 if deadline is None else max(0.0, min(30.0, deadline - time.monotonic()))
            info = self.api.get(f"/api/tasks/{task}/wait", timeout=left)
            if info["state"] in TASK_FINAL:
                return info
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"task {task} is still {info['state']} after {timeout} s")

    def results(self, task: int | str) -> dict[int, Any]:
        """Unpickled results by job index (only jobs that finished)."""
        import pickle

        rows = self.api.get(f"/api/tasks/{task}/results")
        return {r["index"]: pickle.loads(base64.b64decode(r["data"])) for r in rows}

    def failures(self, task: int | str) -> list[dict]:
        """The last failed or cancelled attempt of each job that has none after it (a
        job retried to success is not here), by job index; records with
        ``error_category``, ``error_message``, ``error_traceback``.  Raises
        :class:`~panda_lab.http.ApiError` (404) for an unknown task."""
        return self.api.get(f"/api/tasks/{task}/failures")

    def job_output(self, job_id: int, stream: str = "stdout") -> str:
        """All that is kept of one attempt's ``stream`` (``"stdout"`` or ``"stderr"``).

        A job's reports carry only the tail of its output (what ``jobs()``, ``%%panda``
        and the panel show, behind a marker line when earlier output is not in it).  When
        the job ends, the pilot keeps its full output on the server, up to the task's
        ``output_limit`` characters per stream (past it, the head and the tail around a
        marker line).  Text is valid UTF-8: bytes that were not are written ``\\xNN``
        (see :mod:`panda_lab.text`).  Raises :class:`~panda_lab.http.ApiError` (404) for
        an unknown job.
        """
        data = self.api.request("GET", f"/api/jobs/{int(job_id)}/output",
                                params={"stream": stream}, raw=True)
        return data.decode("utf-8", errors="replace")

    def kill(self, task: int | str) -> dict:
        """pbook's ``kill`` of a task by id or name; see :meth:`TaskHandle.kill`.
        Raises :class:`~panda_lab.http.ApiError`: 404 unknown task, 409 done or aborted."""
        return self.api.post(f"/api/tasks/{task}/kill")

    def retry(self, task: int | str) -> dict:
        """pbook's ``retry`` of a task by id or name; see :meth:`TaskHandle.retry`.
        Raises :class:`~panda_lab.http.ApiError`: 404 unknown task, 409 a task not in
        ``TASK_RETRYABLE``."""
        return self.api.post(f"/api/tasks/{task}/retry")

    def share(self, task: int | str, expires_s: float = 7 * 86400) -> dict:
        """A read-only link to one task's monitor page, expiring in ``expires_s`` seconds:
        ``{"id", "task", "url", "token", "expires_at", ...}``; whoever has ``url`` sees
        that task's page and nothing else.  Raises :class:`~panda_lab.http.ApiError`:
        404 unknown task (or another user's), 422 an expiry out of range."""
        link = self.api.post(f"/api/tasks/{task}/shares", {"expires_s": expires_s})
        return {**link, "url": self.url.rstrip("/") + link["path"]}

    def shares(self, task: int | str) -> list[dict]:
        """A task's share links (no tokens), with ``state``: live, expired or revoked."""
        return self.api.get(f"/api/tasks/{task}/shares")

    def revoke_share(self, task: int | str, share_id: int | None = None) -> list[int]:
        """Revoke share link ``share_id`` of a task, or all not revoked yet (None); returns
        the ids revoked.  Raises :class:`~panda_lab.http.ApiError` 404 for no such link."""
        body = {} if share_id is None else {"id": share_id}
        return self.api.post(f"/api/tasks/{task}/shares/revoke", body)["revoked"]

    def sites(self) -> list[dict]:
        """The server's sites: ``name``, ``kind``, ``pilots``, ``running`` and ``queued``
        job counts, and the rest of their configuration."""
        return self.api.get("/api/sites")

    def links(self) -> pd.DataFrame:
        """The (endpoint, site) links brokerage reads input over, indexed by (endpoint,
        site): learned throughput (``mbps``, MB/s) and latency (``latency_ms``), their
        ``source`` (learned, declared, prior), the ``observations`` they rest on and
        their age (``age_s``); see :func:`panda_lab.client.brokerage.links_frame`."""
        from panda_lab.client.brokerage import links_frame

        return links_frame(self.api.get("/api/links"))

    # ---- the notebook's API: executors, task handles, Dask --------------------------------
    def executor(self, site: str | list[str] = "ANY", **options: Any) -> PandaExecutor:
        """A ``concurrent.futures.Executor`` whose calls run as jobs; see PandaExecutor."""
        return PandaExecutor(self, site=site, **options)

    def task(self, id_or_name: int | str) -> TaskHandle:
        """Re-attach to a task by id, or by name (the newest task of that name): an
        :class:`AnalysisTask` for an analysis, else a :class:`TaskHandle`.  Raises
        :class:`~panda_lab.http.ApiError` (404) when no task has that id or name."""
        info = self.api.get(f"/api/tasks/{id_or_name}")
        if info["options"].get("kind") == "analysis":
            return AnalysisTask(self, info["id"])
        return TaskHandle(self, info["id"])

    def compare(self, a: Any, b: Any, timeout: float = 30.0) -> Comparison:
        """Overlay the merged histograms of two finished analysis tasks (ids, names or
        handles) and sum them up in numbers: see :func:`panda_lab.client.compare.compare`
        for what is returned and raised."""
        from panda_lab.client.compare import compare

        return compare(self, a, b, timeout=timeout)

    @property
    def datasets(self) -> Datasets:
        """The server's datasets: ``lab.datasets.register(name, "data/*.root", tree=...)``."""
        return Datasets(self)

    def analyze(self, process: Any, dataset: str | Dataset | dict,
                **options: Any) -> AnalysisTask:
        """Run ``process(events)`` over every event of a dataset, as jobs over the sites.

        ``dataset``: a registered dataset, or a coffea fileset (``{"DYJets": {"files":
        {path: "Events"}, "metadata": {...}}}``) with ``schema=``.  ``schema``: a coffea
        schema (``NanoAODSchema``) makes each chunk coffea's NanoEvents, for coffea
        processors.  ``events_per_job``: an int, or ``"auto"`` (scout jobs measure the speed
        first, then jobs are sized to ``target_job_seconds``); or ``files_per_job``.  Also
        ``columns`` (else found on a sample), ``skip_bad_files``, ``site``, ``name``,
        ``retries``.  See :func:`panda_lab.client.analysis.analyze`.
        """
        return analyze(self, process, dataset, **options)

    def tasks(self, limit: int = 100, state: str | None = None) -> pd.DataFrame:
        """The newest tasks as a DataFrame, one row each."""
        return tasks_frame(self.list_tasks(limit, state))

    def get(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        """A Dask scheduler function: ``dask.compute(x, scheduler=lab.get)``.

        Unlike ``scheduler=executor`` (one job per Dask task), this packs ready Dask
        tasks into jobs of ``chunksize`` tasks, ``ceil(graph size / in-flight jobs)``
        unless given (in flight: half the executor's ``_max_workers``), so
        tiny Dask tasks do not each pay for a job while a wide graph still spreads over
        every slot.
        """
        from dask.local import get_async

        name = kwargs.pop("name", "dask")
        with self.executor(name=name) as ex:
            in_flight = max(2, ex._max_workers // 2)
            graph = dsk if isinstance(dsk, Mapping) else dsk.__dask_graph__()
            size = len(graph)
            chunksize = kwargs.pop("chunksize", None) or max(1, -(-size // in_flight))
            return get_async(ex.submit, in_flight, dsk, keys, chunksize=chunksize, **kwargs)

    def _repr_html_(self) -> str:
        import html

        try:
            sites = self.sites()
            info = self.api.get("/api/info")
        except Exception as exc:  # a repr must never raise
            why = html.escape(str(exc))
            return f"<b>panda-lab</b> {html.escape(self.url)}: unreachable ({why})"
        rows = "".join(
            f"<tr><td>{html.escape(s['name'])}</td><td>{s['kind']}</td><td>{s['state']}</td>"
            f"<td>{s['pilots']}</td><td>{s['queued']}</td><td>{s['running']}</td></tr>"
            for s in sites)
        return (f"<b>panda-lab</b> {info['version']} at <code>{html.escape(self.url)}</code>"
                f" ({info['database']})<table><tr><th>site</th><th>kind</th><th>state</th>"
                f"<th>pilots</th><th>queued</th><th>running</th></tr>{rows}</table>")

    def monitor(self, limit: int = 10, interval: float = 0.5) -> Any:
        """A live widget of the recent tasks and the sites (needs the notebook extra)."""
        from panda_lab.widgets.monitor import LabMonitor

        return LabMonitor(self, limit=limit, interval=interval)

    def pilots(self, site: str | None = None) -> list[dict]:
        """The pilots the server knows (of ``site`` when given), by id: ``id``, ``site``,
        ``host``, ``pid``, ``state``, ``slots``, ``started_at`` and ``heartbeat_at``
        (seconds since the epoch), ``jobs_done``, ``info`` (environment, batch id) and
        its latest usage with its workers: ``rss_mb`` (resident memory, MB), ``cpu_s``
        (CPU seconds since it started), ``cpu_pct`` (% of one core lately); None before
        its first report."""
        return self.api.get("/api/pilots", site=site)


def remote_token() -> str | None:
    """The token for a remote server from the environment: ``PANDA_LAB_TOKEN``, else the
    file ``PANDA_LAB_TOKEN_FILE`` names, else (inside JupyterHub, where the server runs as
    a hub service) the single-user server's ``JUPYTERHUB_API_TOKEN``; None when none is
    set.  ``OSError`` when the token file cannot be read."""
    token = os.environ.get("PANDA_LAB_TOKEN")
    if not token and os.environ.get("PANDA_LAB_TOKEN_FILE"):
        token = Path(os.environ["PANDA_LAB_TOKEN_FILE"]).read_text().strip()
    return token or os.environ.get("JUPYTERHUB_API_TOKEN") or None


def _short_unreachable(shell: Any, etype: type, value: BaseException, tb: Any,
                       tb_offset: int | None = None) -> list[str]:
    """IPython's display of :class:`~panda_lab.http.ServerUnreachable`: its message
    (what happened, what fixes it) without the frames of the HTTP client under it.
    IPython leaves the showing to a custom handler (the kernel's ``_showtraceback``
    sends the error to the front end); returns the lines shown."""
    lines = [f"{etype.__name__}: {value}"]
    show = getattr(shell, "_showtraceback", None)
    if show is not None:
        show(etype, value, lines)
    else:  # pragma: no cover - an IPython without it
        print(lines[0], file=sys.stderr)
    return lines


def _short_errors_in_ipython() -> None:
    """In IPython, show a server that does not answer as its few lines of message; left
    alone when something else already set IPython's custom exception handler."""
    shell = None
    ipython = sys.modules.get("IPython")  # only where IPython runs already
    if ipython is not None:
        shell = ipython.get_ipython()
    if shell is None or shell.custom_exceptions not in ((), (ServerUnreachable,)):
        return
    shell.set_custom_exc((ServerUnreachable,), _short_unreachable)


def connect(url: str | None = None, token: str | None = None,
            home: str | os.PathLike | None = None, start: bool = True) -> Lab:
    """Connect to a server.

    - ``url`` given (or ``PANDA_LAB_URL`` set): a remote server; the token comes from
      ``token``, else :func:`remote_token` (``PANDA_LAB_TOKEN``, ``PANDA_LAB_TOKEN_FILE``,
      then inside JupyterHub ``JUPYTERHUB_API_TOKEN``: no token to copy there).
    - nothing given: the local server of ``PANDA_LAB_HOME`` (or the user's data dir),
      started detached if none runs and ``start`` is true.

    Returns a :class:`Lab`.  Raises :class:`ValueError` when ``url`` is given without a
    token from any of the three sources, and :class:`ConnectionError` when no local server
    runs and ``start`` is false (or the local server refuses the connection).
    """
    url = url or os.environ.get("PANDA_LAB_URL") or None
    if url is not None:
        token = token or remote_token()
        if not token:
            raise ValueError("a token is needed for a remote server: pass token=..., or set "
                             "PANDA_LAB_TOKEN or PANDA_LAB_TOKEN_FILE (inside JupyterHub, "
                             "JUPYTERHUB_API_TOKEN is used)")
        lab = Lab(url, token)
        lab.api.get("/api/info")
        return lab
    from panda_lab.server.main import server_alive, start_detached

    h = runtime.home(home)
    info = runtime.read_connection(h)
    if not server_alive(info):
        if not start:
            raise ConnectionError(f"no panda-lab server runs for {h}; start one with "
                                  "`panda-lab server start`")
        info = start_detached(h)
    try:
        return Lab(info["url"], token or info["user_token"], home=h)
    except ApiError as exc:  # pragma: no cover - defensive
        raise ConnectionError(str(exc)) from exc
