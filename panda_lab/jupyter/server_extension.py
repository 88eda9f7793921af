"""The jupyter_server extension behind the JupyterLab panel: ``/panda-lab/...``.

Every endpoint is an authenticated Jupyter API handler: the browser speaks only to
Jupyter, with Jupyter's own login, and the extension speaks to the panda-lab server found
through the connection file of ``PANDA_LAB_HOME`` (the same server a notebook's
``panda_lab.connect()`` finds), with the notebook user's own token: ``PANDA_LAB_TOKEN``
(or the file ``PANDA_LAB_TOKEN_FILE`` names) in the Jupyter server's environment, as on
a shared server where each user has a token of their own (``panda-lab users add``), else
the user token of the connection file (the server owner's, on a laptop).  With
``PANDA_LAB_URL`` set (a shared server, e.g. a JupyterHub service) that server is used
instead of the connection file's, and inside JupyterHub the single-user server's
``JUPYTERHUB_API_TOKEN`` is the token when no other is given.  So the panel
shows what the server lets that user see (:mod:`panda_lab.server.auth`).  The panel's logic
lives here, behind a small REST API, so the TypeScript side stays a thin view that
survives JupyterLab upgrades.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado.iostream import StreamClosedError

from panda_lab import runtime
from panda_lab.model import JobState
from panda_lab.model.usage import job_usage
from panda_lab.widgets.snapshot import group_errors, merge_error_group
from panda_lab.widgets.stream import row_usage

try:  # the brokerage's own sentence for a decision, where the model words it
    from panda_lab.model.explain import explain as explain_brokerage
except ImportError:  # a model without it: the panel words the decision itself
    explain_brokerage = None

PREFIX = "panda-lab"


class ServerDown(Exception):
    """No panda-lab server answers for this home: no connection file, or its server does
    not answer.  The handlers turn it into a 503 with ``running: false``."""


class PandaLink:
    """The way to the panda-lab server; the connection file is read on every call, so a
    server started, stopped or restarted after Jupyter is found.  ``home`` as
    :func:`panda_lab.runtime.home` takes it (``None``: ``PANDA_LAB_HOME`` or the user's
    data directory)."""

    def __init__(self, home: str | None = None, token: str | None = None) -> None:
        self.home = runtime.home(home)
        if token is None and os.environ.get("PANDA_LAB_TOKEN"):
            token = os.environ["PANDA_LAB_TOKEN"]
        if token is None and os.environ.get("PANDA_LAB_TOKEN_FILE"):
            token = Path(os.environ["PANDA_LAB_TOKEN_FILE"]).read_text().strip() or None
        #: A shared server's URL; None: the connection file's.
        self.url = os.environ.get("PANDA_LAB_URL") or None
        if token is None and self.url is not None:
            token = os.environ.get("JUPYTERHUB_API_TOKEN") or None
        #: The notebook user's own token; None: the connection file's user token.
        self.token = token

    def headers(self, info: dict) -> dict:
        """The ``Authorization`` header for the server of ``info`` (the connection file)."""
        return {"Authorization": f"Bearer {self.token or info['user_token']}"}

    def connection(self) -> dict:
        """The connection file's contents (``url``, ``user_token``, ...).  Raises
        :class:`ServerDown` naming the home when there is no readable file."""
        if self.url is not None:
            return {"url": self.url, "user_token": self.token}
        info = runtime.read_connection(self.home)
        if not info:
            raise ServerDown(f"no panda-lab server has run for {self.home}")
        return info

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request to the server with the user token (``kwargs`` as httpx takes
        them; 30 s timeout); returns the decoded JSON body.

        Raises :class:`ServerDown` without a connection file or when the server does not
        answer (any ``httpx.TransportError``), and ``tornado.web.HTTPError`` with the
        server's status and its ``detail`` (first 200 characters) as the reason for an
        error status, so the panel sees the server's own refusal (404, 409...)."""
        info = self.connection()
        headers = self.headers(info)
        try:
            async with httpx.AsyncClient(base_url=info["url"], timeout=30) as client:
                r = await client.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise ServerDown(f"the panda-lab server at {info['url']} does not answer "
                             f"({type(exc).__name__})") from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise tornado.web.HTTPError(r.status_code, reason=str(detail)[:200])
        return r.json()


class PandaHandler(APIHandler):
    """Base: answers JSON, and 503 with ``running: false`` when the server is down."""

    @property
    def link(self) -> PandaLink:
        """The extension's one :class:`PandaLink` (in the web app's settings)."""
        return self.settings["panda_lab_link"]

    async def answer(self, make: Callable[[], Awaitable[Any]]) -> None:
        """Finish the request with ``await make()`` as JSON, or a 503 whose body is
        ``{"running": false, "message": ..., "hint": ...}`` when it raises
        :class:`ServerDown`; a ``tornado.web.HTTPError`` passes through as its status."""
        try:
            body = await make()
        except ServerDown as exc:
            self.set_status(503)
            body = {"running": False, "message": str(exc),
                    "hint": "start it from the panel, or run `panda-lab server start`"}
        self.finish(json.dumps(body))


class StatusHandler(PandaHandler):
    """``GET /panda-lab/status``: ``{"running": true, "url", "home"}`` and the server's
    ``/api/info``; 503 with ``running: false`` when no server answers."""

    @tornado.web.authenticated
    async def get(self) -> None:
        async def status() -> dict:
            info = await self.link.request("GET", "/api/info")
            return {"running": True, "url": self.link.connection()["url"],
                    "home": str(self.link.home), **info}
        await self.answer(status)


class StartHandler(PandaHandler):
    """Start the local server of this home (SQLite, local sites), as `server start` does."""

    @tornado.web.authenticated
    async def post(self) -> None:
        """``POST /panda-lab/start``: answers ``{"running": true, "url", "home"}`` once
        the server runs (at once when one already did); a 500 says why it could not
        start."""
        from panda_lab.server.main import start_detached

        home = self.link.home
        try:
            await asyncio.to_thread(start_detached, home)  # returns at once if one runs
        except Exception as exc:
            raise tornado.web.HTTPError(500, reason=f"could not start: {exc}") from exc
        info = self.link.connection()
        self.finish(json.dumps({"running": True, "url": info["url"], "home": str(home)}))


class StatesHandler(PandaHandler):
    """The vocabulary of states and their named sets (the server's ``GET /api/states``),
    from which the panel reads which tasks may be killed or retried and the order of
    job states, instead of retyping them."""

    @tornado.web.authenticated
    async def get(self) -> None:
        await self.answer(lambda: self.link.request("GET", "/api/states"))


class TasksHandler(PandaHandler):
    """``GET /panda-lab/tasks?limit=N`` (default 50): the server's recent tasks; a 400
    when ``limit`` is not an integer."""

    @tornado.web.authenticated
    async def get(self) -> None:
        try:
            limit = int(self.get_argument("limit", "50"))
        except ValueError:
            raise tornado.web.HTTPError(400, reason="limit must be an integer") from None
        await self.answer(lambda: self.link.request("GET", "/api/tasks",
                                                     params={"limit": limit}))


class TaskHandler(PandaHandler):
    """A task as the panel shows it: its record, jobs per site and state, its failed
    attempts grouped by category and message (with an example job to open), every
    attempt for the task stream, and an analysis task's report (``task.report()``)."""

    #: Logical jobs listed with a task (each opens to its brokerage decision and logs).
    JOBS_SHOWN = 500
    #: Attempts drawn in the task stream (the oldest first).
    ATTEMPTS_SHOWN = 2000
    #: What the panel reads of an attempt: the job table's and the task stream's columns.
    ATTEMPT_FIELDS = ("id", "job_index", "attempt", "state", "site", "pilot_id",
                      "created_at", "started_at", "ended_at", "error_category",
                      "error_message", "peak_rss_mb", "cpu_s")

    @tornado.web.authenticated
    async def get(self, task: str) -> None:
        """The task's record plus ``errors`` (groups as dicts, a merge error first),
        ``jobs`` (the newest attempt of the first :attr:`JOBS_SHOWN` logical jobs, each
        with :attr:`ATTEMPT_FIELDS` and ``attempts``, how many it had), ``n_jobs_listed``,
        ``attempts`` (every attempt, up to :attr:`ATTEMPTS_SHOWN`, with
        :attr:`ATTEMPT_FIELDS`) and ``report`` (an analysis task's input ranges as
        ``GET /api/tasks/ID/report`` gives them; None for other tasks), ``pilots`` (each
        pilot that ran an attempt: ``{"id", "site", "state", "rss_mb", "cpu_s",
        "cpu_pct", "usage"}``, ``usage`` its memory and CPU now and its attempts' here in
        words, panda_lab/widgets/stream.py ``row_usage``); the server's 404 for an
        unknown task."""
        async def summary() -> dict:
            info, every = await asyncio.gather(
                self.link.request("GET", f"/api/tasks/{task}"),
                self.link.request("GET", f"/api/tasks/{task}/jobs",
                                  params={"all_attempts": "true"}))
            report = None
            if info["options"].get("kind") == "analysis":
                report = await self.link.request("GET", f"/api/tasks/{task}/report")
            failed = [j for j in every if j["state"] == JobState.FAILED]
            errors = [g.__dict__ for g in group_errors(failed) if g.category != "merge"]
            merge = merge_error_group(info)  # results that could not be merged, first
            if merge is not None:
                errors.insert(0, merge.__dict__)
            newest: dict[int, dict] = {}
            tries: dict[int, int] = {}
            for j in every:  # by index, then attempt: the last one seen is the newest
                newest[j["job_index"]] = j
                tries[j["job_index"]] = tries.get(j["job_index"], 0) + 1
            shown = [{**{k: j.get(k) for k in self.ATTEMPT_FIELDS},
                      "attempts": tries[j["job_index"]]}
                     for j in list(newest.values())[: self.JOBS_SHOWN]]
            attempts = [{k: j.get(k) for k in self.ATTEMPT_FIELDS}
                        for j in sorted(every, key=lambda j: j["id"])[: self.ATTEMPTS_SHOWN]]
            ids = sorted({j["pilot_id"] for j in attempts if j["pilot_id"] is not None})
            pilots = await self.link.request("GET", "/api/pilots", params={
                "ids": ",".join(map(str, ids))}) if ids else []
            keep = ("id", "site", "state", "rss_mb", "cpu_s", "cpu_pct")
            pilots = [{**{k: p.get(k) for k in keep}, "usage": row_usage(
                p, [j for j in attempts if j["pilot_id"] == p["id"]])} for p in pilots]
            return {**info, "errors": errors, "jobs": shown, "n_jobs_listed": len(newest),
                    "attempts": attempts, "report": report, "pilots": pilots}
        await self.answer(summary)


class TaskActionHandler(PandaHandler):
    """``POST /panda-lab/tasks/ID/kill``, ``.../retry`` or ``.../acknowledge`` (its failed
    jobs seen: they leave the status bar's count): the server's answer, or its refusal's
    status (409 for a task the action does not apply to)."""

    @tornado.web.authenticated
    async def post(self, task: str, action: str) -> None:
        await self.answer(lambda: self.link.request("POST", f"/api/tasks/{task}/{action}"))


class JobHandler(PandaHandler):
    """One attempt: its brokerage decision, status history, output tails and traceback,
    ``explanation``: the model's sentence for the decision (None where the model has
    no ``explain``; the panel then words it from ``broker_info``), and ``usage``: what its
    payload used (peak memory, CPU) in words (panda_lab/model/usage.py)."""

    @tornado.web.authenticated
    async def get(self, job: str) -> None:
        async def one() -> dict:
            out = await self.link.request("GET", f"/api/jobs/{job}")
            out["explanation"] = (explain_brokerage(out.get("broker_info") or {})
                                  if explain_brokerage is not None else None)
            # what its payload used, in words ("not measured" before it ends: never 0)
            out["usage"] = job_usage(out)
            return out
        await self.answer(one)


class SitesHandler(PandaHandler):
    """``GET /panda-lab/sites``: the server's sites with their pilots and job counts."""

    @tornado.web.authenticated
    async def get(self) -> None:
        await self.answer(lambda: self.link.request("GET", "/api/sites"))


class CountsHandler(PandaHandler):
    """What the status bar shows, the server's ``GET /api/counts`` (one SQL aggregate
    each, panda_lab/store/rows/counts.py): ``{"running", "prefetched", "waiting",
    "failed", "failed_tasks"}``."""

    @tornado.web.authenticated
    async def get(self) -> None:
        await self.answer(lambda: self.link.request("GET", "/api/counts"))


class EventsHandler(PandaHandler):
    """The server's event stream (Server-Sent Events), passed through as it comes, with a
    keep-alive every 5 s; ``?tasks=1,2`` limits it to those tasks.  A 503 when there is
    no connection file; the stream just ends when the server goes away (the browser's
    ``EventSource`` reconnects)."""

    @tornado.web.authenticated
    async def get(self) -> None:
        try:
            info = self.link.connection()
        except ServerDown as exc:
            raise tornado.web.HTTPError(503, reason=str(exc)) from None
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        params = {"ping": "5"}
        if self.get_argument("tasks", None):
            params["tasks"] = self.get_argument("tasks")
        headers = self.link.headers(info)
        try:
            async with httpx.AsyncClient(base_url=info["url"], timeout=None) as client, \
                    client.stream("GET", "/api/events", params=params,
                                  headers=headers) as r:
                if r.status_code >= 400:  # the server's refusal (a task not one's own: 404)
                    detail = (await r.aread()).decode(errors="replace")
                    raise tornado.web.HTTPError(r.status_code, reason=detail[:200])
                async for chunk in r.aiter_raw():
                    self.write(chunk)
                    await self.flush()
        except (StreamClosedError, asyncio.CancelledError):
            return  # the browser went away
        except httpx.TransportError:
            pass  # the server went away: the browser's EventSource reconnects
        self.finish()


#: Every route of the extension: the auth test walks this list.
ROUTES = [
    (r"/status", StatusHandler),
    (r"/start", StartHandler),
    (r"/states", StatesHandler),
    (r"/tasks", TasksHandler),
    (r"/tasks/(\d+)", TaskHandler),
    (r"/tasks/(\d+)/(kill|retry|acknowledge)", TaskActionHandler),
    (r"/jobs/(\d+)", JobHandler),
    (r"/sites", SitesHandler),
    (r"/counts", CountsHandler),
    (r"/events", EventsHandler),
]


def _load_jupyter_server_extension(server_app: Any) -> None:
    web_app = server_app.web_app
    base = url_path_join(web_app.settings["base_url"], PREFIX)
    web_app.settings["panda_lab_link"] = PandaLink()
    web_app.add_handlers(".*$", [(url_path_join(base, pattern), handler)
                                 for pattern, handler in ROUTES])
    server_app.log.info("panda-lab: panel API at %s, server home %s", base,
                        web_app.settings["panda_lab_link"].home)
