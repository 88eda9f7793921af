"""The client API: what notebooks, the CLI and monitors call with a user token.

Each route is authenticated by the router's ``client_auth`` (:mod:`panda_lab.server.auth`,
which also keeps read-only identities to GET); those on owned work take ``who: Who`` and
go through ``task_of``/``job_of``: another user's task or job is a 404."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError

from panda_lab import __version__
from panda_lab.model import TASK_FINAL, JobState, PilotState, TaskState, vocabulary
from panda_lab.server.app import Server
from panda_lab.server.auth import Who, job_of, task_of
from panda_lab.server.events import encode
from panda_lab.server.schemas import (
    NO_NUL,
    IdempotencyKey,
    IdPath,
    IntList,
    JobIds,
    JobIndices,
    JobsAdd,
    TaskRef,
    TaskSubmit,
    int_list,
)
from panda_lab.store import SubmissionKey, TaskNotFound
from panda_lab.store.rows.submissions import fingerprint

router = APIRouter()


def _server(request: Request) -> Server:
    return request.app.state.server


@router.get("/info")
async def info(request: Request) -> dict:
    s = _server(request)
    return {"version": __version__, "time": time.time(), "database": s.store.engine.dialect.name,
            "sites": [c.name for c in s.config.sites],
            "heartbeat_timeout": s.config.heartbeat_timeout, "task_lease": s.config.task_lease,
            "network": s.config.network}


@router.get("/states")
async def states(request: Request) -> dict:
    """The vocabulary of states and named sets (``panda_lab.model.states.vocabulary``), so
    that clients in other languages (the JupyterLab panel) never retype it."""
    _server(request)
    return vocabulary()


@router.get("/sites")
async def sites(request: Request, who: Who,
                user: Annotated[str | None, Query(max_length=128, pattern=NO_NUL)] = None
                ) -> list[dict]:
    """The sites, their pilots, and queued and running jobs: a user's own jobs; an
    admin's or a monitor's: everyone's, or ``user``'s.  Pilots are counted for all."""
    s = _server(request)
    return await s.db(s.store.list_sites, who.owner(user))


@router.get("/links")
async def links(request: Request) -> list[dict]:
    """The (endpoint, site) links brokerage reads input over: what it uses now (``mbps``,
    ``latency_ms``, ``source``: learned, declared or prior), the observations the
    estimate rests on and their age, the declared values, and the bytes and seconds
    measured in all."""
    s = _server(request)
    return await s.db(s.store.links)


@router.get("/pilots")
async def pilots(request: Request,
                 site: Annotated[str | None, Query(max_length=128, pattern=NO_NUL)] = None,
                 state: PilotState | None = None, ids: IntList = None) -> list:
    """Pilots (of ``site``, in ``state``, among ``ids``) by id, each with its latest
    usage (``rss_mb``, ``cpu_s``, ``cpu_pct``: panda_lab/pilot/usage.py)."""
    s = _server(request)
    return await s.db(s.store.list_pilots, site, state, int_list(ids, "ids", 1))


@router.post("/tasks", status_code=201)
async def submit(request: Request, response: Response, body: TaskSubmit, who: Who,
                 idempotency_key: IdempotencyKey = None) -> dict:
    """Submit a task and its jobs: each job is brokered to a site and activated at once.
    Its owner is ``who``: the ``owner`` a client sends is ignored (older clients send
    their OS user name).

    An ``open`` task comes with a lease of ``lease_s`` seconds: renew it (``POST
    /tasks/{id}/lease``) every third of that, or the watchdog closes the task.

    With an ``Idempotency-Key``, a repeat of the request (the client got no answer: the
    server crashed, the connection broke) makes no second task: it is answered 200 with
    the first one's task and jobs (``Idempotent-Replayed: true``); the key sent with
    another request is a 422."""
    s = _server(request)
    lease_s = s.config.task_lease if body.open else None
    key = submission_key(who.name, idempotency_key, "POST /tasks", body)
    prior = await replayed(s, response, key)
    if prior is not None:
        return {"task": prior["task"], "jobs": prior["jobs"],
                **({"lease_s": lease_s} if lease_s else {})}
    jobs = [j.store_dict() for j in body.jobs]
    common = base64.b64decode(body.common) if body.common is not None else None
    try:
        task_id, ids, changes = await s.db(
            s.store.create_task, body.name, jobs, owner=who.name, site=body.site,
            options=body.options.model_dump(), common=common, open_=body.open,
            lease_s=lease_s, key=key)
    except IntegrityError:  # the same key at the same time: the other request made it
        prior = await replayed(s, response, key)
        if prior is None:
            raise
        return {"task": prior["task"], "jobs": prior["jobs"],
                **({"lease_s": lease_s} if lease_s else {})}
    s.publish(changes)
    return {"task": task_id, "jobs": ids, **({"lease_s": lease_s} if lease_s else {})}


@router.post("/tasks/{task}/jobs", status_code=201)
async def add_jobs(request: Request, response: Response, task: TaskRef, who: Who,
                   body: JobsAdd, idempotency_key: IdempotencyKey = None) -> dict:
    """Add jobs to an open task; with an ``Idempotency-Key`` a repeat adds none and is
    answered with the first request's jobs, as for ``POST /tasks``."""
    s = _server(request)
    task_id = await task_of(s, who, task)
    key = submission_key(who.name, idempotency_key, f"POST /tasks/{task_id}/jobs", body)
    prior = await replayed(s, response, key)
    if prior is None:
        try:
            ids, changes = await s.db(s.store.add_jobs, task_id,
                                      [j.store_dict() for j in body.jobs], key=key)
        except IntegrityError:  # the same key at the same time
            prior = await replayed(s, response, key)
            if prior is None:
                raise
    if prior is not None:
        return prior
    s.publish(changes)
    indices = {c.job_id: c.job_index for c in changes.jobs}
    return {"task": task_id, "jobs": ids, "indices": [indices[i] for i in ids]}


def submission_key(owner: str, key: str | None, route: str, body: BaseModel
                   ) -> SubmissionKey | None:
    """The request's idempotency key, scoped to its owner, with the request's fingerprint
    (the body as validated, without the ``owner`` a client may send: it is ignored)."""
    if key is None:
        return None
    return SubmissionKey(owner, key, fingerprint(
        route, body.model_dump(mode="json", exclude={"owner"})))


async def replayed(s: Server, response: Response, key: SubmissionKey | None) -> dict | None:
    """What the key's first request made, the answer marked a replay (200,
    ``Idempotent-Replayed: true``); None without a key or for a key not seen."""
    if key is None:
        return None
    prior = await s.db(s.store.submission, key)
    if prior is not None:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return prior


@router.post("/tasks/{task}/lease")
async def renew_lease(request: Request, task: TaskRef, who: Who) -> dict:
    """The client of an open task is alive: its lease runs ``lease_s`` seconds from now.
    409 when the task is closed already (the detail says why)."""
    s = _server(request)
    task_id = await task_of(s, who, task)
    return await s.db(s.store.renew_lease, task_id, s.config.task_lease)


@router.post("/tasks/{task}/close")
async def close(request: Request, task: TaskRef, who: Who) -> dict:
    s = _server(request)
    task_id = await task_of(s, who, task)
    s.publish(await s.db(s.store.close_task, task_id))
    return await s.db(s.store.get_task, task_id)


@router.get("/tasks")
async def list_tasks(request: Request, who: Who, limit: int = Query(100, ge=1, le=10_000),
                     state: TaskState | None = None,
                     user: Annotated[str | None, Query(max_length=128, pattern=NO_NUL)] = None
                     ) -> list[dict]:
    """The newest tasks: one's own; an admin's or a monitor's: everyone's, or ``user``'s."""
    s = _server(request)
    return await s.db(s.store.list_tasks, limit, state, who.owner(user))


@router.get("/tasks/{task}")
async def get_task(request: Request, task: TaskRef, who: Who) -> dict:
    s = _server(request)
    return await s.db(s.store.get_task, await task_of(s, who, task))


@router.get("/tasks/{task}/jobs")
async def task_jobs(request: Request, task: TaskRef, who: Who, all_attempts: bool = False,
                    state: JobState | None = None) -> list[dict]:
    s = _server(request)
    return await s.db(s.store.list_jobs, await task_of(s, who, task), all_attempts, state)


@router.get("/tasks/{task}/results")
async def task_results(request: Request, task: TaskRef, who: Who,
                       indices: IntList = None) -> list:
    """The results of a task's logical jobs (of ``indices``, logical job indices)."""
    s = _server(request)
    wanted = int_list(indices, "indices", 0)
    rows = await s.db(s.store.results, await task_of(s, who, task), wanted)
    return [{"index": r["index"], "job_id": r["job_id"],
             "data": base64.b64encode(r["data"]).decode()} for r in rows]


@router.get("/tasks/{task}/failures")
async def task_failures(request: Request, task: TaskRef, who: Who) -> list[dict]:
    s = _server(request)
    return await s.db(s.store.failures, await task_of(s, who, task))


@router.get("/tasks/{task}/wait")
async def wait_task(request: Request, task: TaskRef, who: Who,
                    timeout: float = Query(30.0, ge=0, le=300)) -> dict:
    """Long poll: answer when the task reaches a final state or ``timeout`` passes.  Each
    wake-up reads the task's state alone; the whole task (its jobs counted) is read once,
    for the answer."""
    s = _server(request)
    task_id = await task_of(s, who, task)
    deadline = time.monotonic() + timeout
    while True:
        ev = s.task_event(task_id)
        progress = await s.db(s.store.task_progress, task_id)
        left = deadline - time.monotonic()
        if progress is None or TaskState(progress["state"]) in TASK_FINAL or left <= 0 \
                or s.stopping:  # a stopping server answers now (Server.begin_stop)
            return await s.db(s.store.get_task, task_id)
        try:
            await asyncio.wait_for(ev.wait(), left)
        except TimeoutError:
            pass


@router.post("/tasks/{task}/kill")
async def kill_task(request: Request, task: TaskRef, who: Who) -> dict:
    s = _server(request)
    task_id = await task_of(s, who, task)
    changes = await s.db(s.store.kill_task, task_id)
    s.publish(changes)
    return {"task": task_id, "cancelled": [c.job_id for c in changes.jobs]}


@router.post("/tasks/{task}/retry")
async def retry_task(request: Request, task: TaskRef, who: Who) -> dict:
    s = _server(request)
    task_id = await task_of(s, who, task)
    ids, changes = await s.db(s.store.retry_task, task_id)
    s.publish(changes)
    return {"task": task_id, "jobs": ids}


@router.post("/tasks/{task}/acknowledge")
async def acknowledge_task(request: Request, task: TaskRef, who: Who) -> dict:
    """A person saw the task's failed jobs: they no longer count in ``GET /api/counts``
    until an attempt fails again."""
    s = _server(request)
    task_id = await task_of(s, who, task)
    t = await s.db(s.store.acknowledge_task, task_id)
    return {"task": task_id, "time": t}


@router.get("/counts")
async def counts(request: Request, who: Who,
                 user: Annotated[str | None, Query(max_length=128, pattern=NO_NUL)] = None
                 ) -> dict:
    """Jobs over all sites, as the status bar shows them: ``{"running", "prefetched",
    "waiting", "failed", "failed_tasks"}`` (panda_lab/store/rows/counts.py says what each
    counts), of one's own tasks; an admin's or a monitor's: everyone's, or ``user``'s."""
    s = _server(request)
    return await s.db(s.store.job_counts, who.owner(user))


@router.post("/tasks/{task}/cancel")
async def cancel_jobs(request: Request, task: TaskRef, who: Who, body: JobIndices) -> dict:
    """Cancel logical jobs that no pilot ever got (``Future.cancel``): those listed in
    ``cancelled`` will never run; the others were already dispatched and go on."""
    s = _server(request)
    task_id = await task_of(s, who, task)
    cancelled, changes = await s.db(s.store.cancel_waiting, task_id, body.indices)
    s.publish(changes)
    return {"task": task_id, "cancelled": cancelled}


@router.post("/jobs/kill")
async def kill_jobs(request: Request, body: JobIds, who: Who) -> dict:
    """Kill job attempts by id: all or none (404 naming those that are not one's own)."""
    s = _server(request)
    if not who.sees_all:
        theirs = await s.db(s.store.jobs_not_owned, list(body.ids), who.name)
        if theirs:
            raise TaskNotFound(f"no job with id {theirs[0]}"
                               + (f" (nor {theirs[1:]})" if len(theirs) > 1 else ""))
    changes = await s.db(s.store.kill_jobs, body.ids)
    s.publish(changes)
    return {"cancelled": [c.job_id for c in changes.jobs if c.state == JobState.CANCELLED]}


@router.get("/jobs/{job_id}")
async def get_job(request: Request, job_id: IdPath, who: Who) -> dict:
    s = _server(request)
    await job_of(s, who, job_id)
    return await s.db(s.store.get_job, job_id)


@router.get("/jobs/{job_id}/output")
async def job_output(request: Request, job_id: IdPath, who: Who,
                     stream: Literal["stdout", "stderr"] = "stdout") -> PlainTextResponse:
    """All that is kept of an attempt's stdout or stderr, as UTF-8 text: its full output
    when the pilot kept it (the tail did not hold it all), else its tail, which then
    holds it all (or, while the job runs, what it printed last)."""
    s = _server(request)
    await job_of(s, who, job_id)
    return PlainTextResponse(await s.db(s.store.job_output, job_id, stream))


@router.get("/events")
async def events(request: Request, who: Who, tasks: IntList = None, results: bool = False,
                 ping: float = Query(15.0, ge=0.05, le=300)) -> StreamingResponse:
    """Server-Sent Events: one ``data:`` line of JSON per batch of changes.

    ``tasks`` limits the stream to some task ids (404 for one not visible);
    ``results=true`` carries small results inline so a client needs no extra request per
    finished job.  A user's stream carries their own tasks' events only.
    """
    s = _server(request)
    ids = int_list(tasks, "tasks", 1)
    for task_id in ids or ():
        await task_of(s, who, task_id)
    wanted = frozenset(ids) if ids is not None else None
    sub = s.bus.subscribe(wanted, results, owner=None if who.sees_all else who.name)

    async def stream():
        try:
            yield b": connected\n\n"
            yield b"data: " + orjson.dumps({"hello": True, "time": time.time()}) + b"\n\n"
            if s.stopping:  # opened after the stop began: its shutdown was published
                yield b"data: " + encode({"time": time.time(), "shutdown": {}}) + b"\n\n"
                return
            while True:
                try:
                    msg = await asyncio.wait_for(sub.queue.get(), ping)
                except TimeoutError:
                    yield b": ping\n\n"
                    continue
                yield b"data: " + encode(msg) + b"\n\n"
                if msg.get("overflow") or "shutdown" in msg:
                    return
        finally:
            s.bus.unsubscribe(sub)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
