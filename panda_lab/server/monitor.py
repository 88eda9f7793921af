"""The web monitor: BigPanDA's views (tasks, a task, jobs, a job, errors, sites), served
by the server itself, each as JSON and as a page.

As on BigPanDA, every view is a URL whose query string is its filter (``owner`` or
``user``, ``state`` (comma-separated), ``site``, ``name`` with ``*`` wildcards, a time
window ``days`` or ``hours``, and for jobs ``task``, ``category``, ``attempt``), sort
(``sort=-created``: descending) and page (``page``, ``per_page``), and answers JSON at
``/monitor/api/VIEW`` or at the page's own URL with ``?json`` or ``Accept:
application/json``.  A bad parameter is a 422 naming it.

Pages are one static shell (``monitor_static/index.html``) that renders the JSON views
in the browser.  Every route, assets included, wants a token as a bearer header, like the
rest of the API; a browser's navigation carries no header, so a page asked for as HTML
without one is refused (401) with the shell as the refusal's body: its login form takes
the token, keeps it in ``sessionStorage`` and fetches the assets with it.

Who sees what is the API's rule (:mod:`panda_lab.server.auth`): a user's views hold
their own work only (another's task or job page is a 404, another's name as ``owner`` a
403); admins and read-only tokens see everyone's and filter by ``owner``; sites are
everyone's.  A share link's token (``panda-lab share``, :mod:`panda_lab.server.api_share`)
opens its one task's page and JSON, nothing else.
"""

from __future__ import annotations

import inspect
import time
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as FastPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response

from panda_lab.model import ErrorCategory, JobState, TaskState
from panda_lab.server.app import Server
from panda_lab.server.auth import (
    MonitorWho,
    _bearer,
    job_of,
    monitor_auth,
    task_of,
)
from panda_lab.server.monitor_plots import MergedPlots
from panda_lab.server.schemas import NO_NUL, IdPath, TaskRef
from panda_lab.store.rows.monitor import JOB_SORTS, TASK_SORTS, Filter, Page

STATIC = resources.files("panda_lab.server") / "monitor_static"
#: The assets a page loads, with their media types.
ASSETS = {"monitor.js": "text/javascript", "events.js": "text/javascript",
          "monitor.css": "text/css"}
#: Rows a page may ask for at once.
MAX_PER_PAGE = 500

Text = Annotated[str | None, Query(max_length=256, pattern=NO_NUL)]


def _bad(param: str, msg: str) -> RequestValidationError:
    """A 422 naming the query parameter ``param``, as FastAPI's own validation says it."""
    return RequestValidationError([{"loc": ("query", param), "msg": msg,
                                    "type": "value_error"}])


def _states(value: str | None, vocabulary: type, param: str = "state") -> tuple[str, ...]:
    if not value:
        return ()
    known = {str(s) for s in vocabulary}
    out = tuple(v.strip() for v in value.split(",") if v.strip())
    for v in out:
        if v not in known:
            raise _bad(param, f"unknown state {v!r}; one of {', '.join(sorted(known))}")
    return out


def _since(days: float | None, hours: float | None) -> float | None:
    if days is not None and hours is not None:
        raise _bad("hours", "give days or hours, not both")
    if days is None and hours is None:
        return None
    return time.time() - (days * 86400 if days is not None else hours * 3600)


def _page(sort: str | None, page: int, per_page: int, sorts: dict, default: str) -> Page:
    key = sort or default
    descending = key.startswith("-")
    key = key.lstrip("-")
    if key not in sorts:
        raise _bad("sort", f"unknown sort key {key!r}; one of {', '.join(sorted(sorts))}")
    return Page(key, descending, page, per_page)


Window = Annotated[float | None, Query(gt=0, le=36500, allow_inf_nan=False)]
PageNo = Annotated[int, Query(ge=1, le=1_000_000)]
PerPage = Annotated[int, Query(ge=1, le=MAX_PER_PAGE)]


class Common:
    """The parameters every listing takes."""

    def __init__(self, owner: Text = None, user: Text = None, site: Text = None,
                 name: Text = None, days: Window = None, hours: Window = None,
                 sort: Annotated[str | None, Query(max_length=32)] = None,
                 page: PageNo = 1, per_page: PerPage = 50,
                 state: Annotated[str | None, Query(max_length=1000)] = None) -> None:
        if owner and user and owner != user:
            raise _bad("user", "give owner or user (the same thing), not two values")
        self.owner, self.site, self.name = owner or user, site, name
        self.since = _since(days, hours)
        self.sort, self.page, self.per_page, self.state = sort, page, per_page, state


def _server(request: Request) -> Server:
    return request.app.state.server


api = APIRouter()


@api.get("/tasks")
async def tasks_view(request: Request, c: Annotated[Common, Depends()],
                     who: MonitorWho) -> dict:
    """Tasks: state, progress, owner, sites, age, duration, failures (``monitor_tasks``);
    a user's own only (``Identity.owner``)."""
    s = _server(request)
    f = Filter(owner=who.owner(c.owner), state=_states(c.state, TaskState), site=c.site,
               name=c.name, since=c.since)
    return await s.db(s.store.monitor_tasks, f,
                      _page(c.sort, c.page, c.per_page, TASK_SORTS, "-id"))


@api.get("/tasks/{task}")
async def task_view(request: Request, task: TaskRef, who: MonitorWho) -> dict:
    """One task (``monitor_task``), by id or name, with its merged histograms drawn
    (``"histograms"``, :class:`~panda_lab.server.monitor_plots.MergedPlots`); another
    user's is a 404."""
    s = _server(request)
    record = await s.db(s.store.monitor_task, await task_of(s, who, task))
    record["histograms"] = await request.app.state.monitor_plots.of(s, record)
    return record


@api.get("/jobs")
async def jobs_view(request: Request, c: Annotated[Common, Depends()],
                    task: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
                    category: ErrorCategory | None = None,
                    attempt: Annotated[int | None, Query(ge=1, le=1000)] = None,
                    *, who: MonitorWho) -> dict:
    """Job attempts with facets (``monitor_jobs``); a user's own only."""
    s = _server(request)
    f = Filter(owner=who.owner(c.owner), state=_states(c.state, JobState), site=c.site, name=c.name,
               since=c.since, task=task, error_category=category and str(category),
               attempt=attempt)
    return await s.db(s.store.monitor_jobs, f,
                      _page(c.sort, c.page, c.per_page, JOB_SORTS, "-id"))


@api.get("/jobs/{job_id}")
async def job_view(request: Request, job_id: IdPath, who: MonitorWho) -> dict:
    """One attempt (``monitor_job``); another user's is a 404."""
    s = _server(request)
    await job_of(s, who, job_id)
    return await s.db(s.store.monitor_job, job_id)


@api.get("/errors")
async def errors_view(request: Request, c: Annotated[Common, Depends()],
                      task: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
                      category: ErrorCategory | None = None, *, who: MonitorWho) -> dict:
    """Failed attempts grouped by category and message, site, task and time
    (``monitor_errors``), a user's own only; the window defaults to the last day."""
    s = _server(request)
    since = c.since if c.since is not None else time.time() - 86400
    f = Filter(owner=who.owner(c.owner), site=c.site, name=c.name, since=since, task=task,
               error_category=category and str(category))
    return await s.db(s.store.monitor_errors, f)


@api.get("/sites")
async def sites_view(request: Request, days: Window = None, hours: Window = None) -> dict:
    """Sites, their pilots and failure rate over the window (default: the last hour).
    Sites are no one's: every user sees them, as ``/api/sites`` (counts, no task named)."""
    s = _server(request)
    since = _since(days, hours)
    return await s.db(s.store.monitor_sites, since if since is not None else time.time() - 3600)


# ---- pages -----------------------------------------------------------------------------
class LoginRequired(Exception):
    """A page asked for without a valid token: answered with the login shell."""

    def __init__(self, error: HTTPException) -> None:
        self.error = error


def _wants_json(request: Request) -> bool:
    return "json" in request.query_params or \
        "application/json" in request.headers.get("accept", "")


def _wants_html(request: Request) -> bool:
    return not _wants_json(request) and "text/html" in request.headers.get("accept", "")


async def page_auth(request: Request, creds=Depends(_bearer)) -> None:
    """The monitor's rule (``monitor_auth``); a refused page asked for as HTML gets the
    shell."""
    try:
        await monitor_auth(request, creds)
    except HTTPException as exc:
        if _wants_html(request):
            raise LoginRequired(exc) from None
        raise


def shell() -> str:
    """The page every monitor URL shows: the app renders the view its URL names."""
    return (STATIC / "index.html").read_text(encoding="utf-8")


pages = APIRouter()
#: Page paths and the JSON view each stands for.
PAGE_VIEWS = {"/": tasks_view, "/tasks": tasks_view, "/tasks/{task}": task_view,
              "/jobs": jobs_view, "/jobs/{job_id}": job_view, "/errors": errors_view,
              "/sites": sites_view}


def _page_route(path: str, view) -> None:
    """A page at ``path`` taking ``view``'s parameters (validated alike): the view's JSON
    when asked for, else the shell."""
    params = [p for p in inspect.signature(view).parameters.values() if p.name != "request"]

    async def endpoint(request: Request, **kwargs):
        if _wants_json(request):
            return await view(request, **kwargs)
        return HTMLResponse(shell())

    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                           annotation=Request), *params])
    endpoint.__name__ = f"page_{view.__name__}"
    pages.add_api_route(path, endpoint, methods=["GET"], include_in_schema=False)


for _path, _view in PAGE_VIEWS.items():
    _page_route(_path, _view)


#: An asset's name: a file name of the monitor's own (longer or other characters: a 422).
AssetName = Annotated[str, FastPath(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


@pages.get("/static/{name}", include_in_schema=False)
async def asset(name: AssetName) -> Response:
    """The monitor's script and style (package data: no Node at install time)."""
    if name not in ASSETS:
        raise HTTPException(404, f"no asset {name!r}")
    return Response((STATIC / name).read_bytes(), media_type=ASSETS[name],
                    headers={"Cache-Control": "no-cache"})


def install(app: FastAPI) -> None:
    """Add the monitor's routes to ``app``: JSON under ``/monitor/api`` and pages under
    ``/monitor``, all behind ``monitor_auth``; each view filters by who asks."""
    app.state.monitor_plots = MergedPlots()
    app.include_router(api, prefix="/monitor/api", dependencies=[Depends(monitor_auth)])
    app.include_router(pages, prefix="/monitor", dependencies=[Depends(page_auth)])

    @app.exception_handler(LoginRequired)
    async def _login(_request: Request, exc: LoginRequired) -> HTMLResponse:
        return HTMLResponse(shell(), exc.error.status_code, headers=exc.error.headers)

    invalid = app.exception_handlers[RequestValidationError]

    @app.exception_handler(RequestValidationError)
    async def _invalid_page(request: Request, exc: RequestValidationError):
        """A page whose URL has a bad filter is still the page (which shows the JSON
        view's 422, naming the parameter); anything else answers as before."""
        path = request.url.path
        if path.startswith("/monitor/") and not path.startswith("/monitor/api/") \
                and _wants_html(request):
            return HTMLResponse(shell())
        return await invalid(request, exc)
