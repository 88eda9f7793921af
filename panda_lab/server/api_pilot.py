"""The pilot API: register, acquire jobs in bulk, report in bulk, heartbeat.

Acquire is a long poll: a pilot with nothing to do waits on the server, and is woken
the moment jobs are activated at its site, so a warm site starts a job within
milliseconds of its activation without polling.

An acquisition names the tasks whose common payload part the pilot holds, and its answer
carries the common part of the others among the jobs it hands out (up to 1 MiB each): a
pilot's first job of a task starts without a request of its own to fetch it (three
requests fewer per run of the embedded default, one per pilot).

An acquisition may carry the pilot's reports (``updates``, as ``/update`` takes them):
they are applied first, then jobs are handed out, in one round trip.  A pilot asks for its
next job when the one before has ended (or is about to), which is when it has that job's
report to send (the embedded default's analysis of 32 jobs sent its reports in 18
requests of their own per run, 7 since; 71 requests per run in all, 60 since).  Stale
reports or jobs to drop in the answer end the long poll at once.

A pilot token of one site (``panda-lab users add-pilot SITE``) speaks only for pilots of
that site and their jobs (:mod:`panda_lab.server.auth`): 403 otherwise.  The server's own
pilot token, which the embedded local sites use, speaks for any site.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Literal

from fastapi import APIRouter, HTTPException, Request, Response

from panda_lab.server.app import Server
from panda_lab.server.auth import PilotWho, pilot_job, pilot_of
from panda_lab.server.schemas import (
    IdPath,
    JobUpdate,
    PilotAcquire,
    PilotEnd,
    PilotHeartbeat,
    PilotRegister,
    PilotUpdate,
    PilotUsage,
)

router = APIRouter()
log = logging.getLogger("panda_lab.server")


def _server(request: Request) -> Server:
    return request.app.state.server


@router.post("/register")
async def register(request: Request, body: PilotRegister, who: PilotWho) -> dict:
    s = _server(request)
    who.check_site(body.site)
    pilot_id = await s.db(s.store.register_pilot, body.site, body.host, body.pid, body.slots,
                          body.info)
    s.remember_pilot(pilot_id, body.site)
    site = next((x for x in s.config.sites if x.name == body.site), None)
    reply = {"pilot": pilot_id, "heartbeat_interval": s.config.heartbeat_interval,
             "heartbeat_timeout": s.config.heartbeat_timeout,
             "endpoint": site.endpoint if site is not None else "",
             # acquisitions may name the common parts they hold (PilotAcquire.commons)
             "carries_commons": True}
    if site is not None and site.cache_bytes:
        # the site's stage-in cache: where its pilots keep it, and its bound in bytes
        reply["cache"] = {"dir": site.cache_dir or str(s.config.home / "site-cache" / site.name),
                          "bytes": site.cache_bytes}
    return reply


@router.post("/acquire")
async def acquire(request: Request, body: PilotAcquire, who: PilotWho) -> dict:
    s = _server(request)
    who.check_site(body.site)
    site = await pilot_of(s, who, body.pilot)
    if site != body.site:
        raise HTTPException(409, f"pilot {body.pilot} belongs to site {site!r}, "
                                 f"not {body.site!r}")
    reply: dict = {}
    if body.updates or body.usage is not None:
        reply = await _report(s, body.pilot, body.updates, body.held, body.usage)
    if body.lost_check:
        await _fail_not_held(s, body.pilot, body.held)
    # what the reports' answer tells the pilot (stale reports, jobs to drop) is not held
    # back for a long poll: one look for jobs, then the answer
    wait = 0.0 if reply.get("ignored") or reply.get("drop") else body.wait
    deadline = time.monotonic() + wait
    # A pass at least three times per heartbeat timeout: a pilot waiting here is alive.
    period = min(5.0, s.config.heartbeat_timeout / 3)
    while True:
        # The pilot and the jobs it holds live, on every pass of a long poll: written
        # with the coalesced heartbeats (at most a second later, and always before the
        # watchdog judges silence).
        s.heartbeats.add(body.pilot, body.held or [])
        ev = s.site_event(body.site)  # taken before looking, so no wake-up is missed
        jobs, changes = await s.db(s.store.acquire, body.pilot, body.site, body.n, body.held,
                                   touch=False, extra=body.extra,
                                   commons_held=None if body.commons is None
                                   else frozenset(body.commons))
        s.publish(changes)
        left = deadline - time.monotonic()
        if jobs or left <= 0 or s.stopping or await request.is_disconnected():
            break
        try:
            await asyncio.wait_for(ev.wait(), min(left, period))
        except TimeoutError:
            pass
    s.metrics.on_dispatch(body.site, len(jobs))
    commons = {}
    for j in jobs:
        j["payload"] = base64.b64encode(j["payload"]).decode()
        if "common_payload" in j:
            commons[str(j["task"])] = base64.b64encode(j.pop("common_payload")).decode()
    if commons:
        reply["commons"] = commons
    return {"jobs": jobs, **reply}


LOST_ON_THE_WAY = ("its pilot never got it: the answer that handed it out was lost "
                   "(a transport failure between server and pilot)")
NO_LONGER_HELD = "its pilot no longer holds it (after a transport failure)"


async def _fail_not_held(s: Server, pilot: int, held: list[int]) -> None:
    """Fail and retry the jobs on ``pilot`` it does not hold.  A pilot's requests go one
    after another, so a job still ``sent`` was handed out in an answer the pilot never
    read (the server answered, the connection broke, the pilot asked again and got other
    jobs): it never ran, and its retry does not count against its attempts
    (``Cause.LOST``).  Without this, they wait for the heartbeat timeout."""
    lost, changes = await s.db(s.store.not_held, pilot, held, LOST_ON_THE_WAY,
                               NO_LONGER_HELD)
    if lost:
        log.warning("pilot %d does not hold job(s) %s: failed and retried", pilot, lost)
        s.publish(changes)


@router.post("/update")
async def update(request: Request, body: PilotUpdate, who: PilotWho) -> dict:
    """Bulk state reports.  Stale ones (old attempt, another pilot's job, a final job)
    are ignored and listed back with the reason; the rest are applied in one transaction.
    A pilot of another site than the token's is a 403: its jobs are its site's only."""
    s = _server(request)
    await pilot_of(s, who, body.pilot)
    return await _report(s, body.pilot, body.updates, body.held, body.usage)


async def _report(s: Server, pilot: int, reports: list[JobUpdate], held: list[int],
                  usage_in: PilotUsage | None) -> dict:
    """Apply a pilot's reports (``/update``'s, or those an acquisition carries) in one
    transaction: ``{"ignored": [...], "drop": [...]}``, the stale reports with the
    reason and the jobs of ``held`` the server has ended.  Raises :class:`HTTPException`
    422 for a ``result_ref`` never uploaded (nothing applied)."""
    updates = []
    for u in reports:
        d = u.model_dump(exclude_none=True)
        if u.result is not None:
            d["result"] = base64.b64decode(u.result)
        if u.error is not None and u.error.exception is not None:
            d["error"]["exception"] = base64.b64decode(u.error.exception)
        if u.result_ref is not None and not await s.db(s.store.result_ref_ok, u.result_ref):
            raise HTTPException(422, f"result_ref {u.result_ref!r} was never uploaded")
        updates.append(d)
    usage = usage_in.model_dump() if usage_in is not None else None
    # applied, and what of ``held`` to drop read, in one transaction
    changes, ignored, drop = await s.db(s.store.apply_report, pilot, updates, held, usage)
    s.publish(changes)
    s.metrics.on_reports([u["state"] for u in updates], len(ignored))
    if held:  # the report's transaction touched them; a lost pilot runs again
        s.heartbeats.add(pilot, held, usage)
    return {"ignored": ignored, "drop": drop}


@router.post("/heartbeat")
async def heartbeat(request: Request, body: PilotHeartbeat, who: PilotWho) -> dict:
    s = _server(request)
    await pilot_of(s, who, body.pilot)
    usage = body.usage.model_dump() if body.usage is not None else None
    # written with the others within a second (heartbeats.py); what to kill, read now
    s.heartbeats.add(body.pilot, body.held, usage)
    return {"drop": await s.db(s.store.held_to_drop, body.pilot, body.held)
            if body.held else []}


@router.put("/results/{task_id}/{job_id}")
async def upload_result(request: Request, task_id: IdPath, job_id: IdPath,
                        who: PilotWho) -> dict:
    """A result too large for a report goes to the result store first; the report then
    names it with ``result_ref``."""
    s = _server(request)
    await pilot_job(s, who, task_id, job_id)
    data = await request.body()
    ref = await s.db(s.store.write_result, task_id, job_id, data)
    return {"ref": ref, "size": len(data)}


@router.put("/output/{task_id}/{job_id}")
async def upload_output(request: Request, task_id: IdPath, job_id: IdPath, who: PilotWho,
                        stream: Literal["stdout", "stderr"] = "stdout") -> dict:
    """A job's full stdout or stderr, as UTF-8 text, when its tail does not hold it all;
    clients read it from ``GET /api/jobs/{job_id}/output``.  Text that is not UTF-8 is
    refused (422): the pilot writes it by the rule of :mod:`panda_lab.text`."""
    s = _server(request)
    await pilot_job(s, who, task_id, job_id)
    data = await request.body()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(422, f"the {stream} of job {job_id} is not UTF-8 text "
                                 f"(byte {exc.start})") from None
    size = await s.db(s.store.write_output, task_id, job_id, stream, data)
    return {"job": job_id, "stream": stream, "size": size}


@router.get("/tasks/{task_id}/common")
async def common(request: Request, task_id: IdPath, who: PilotWho) -> Response:
    s = _server(request)
    if who.site is not None and not await s.db(s.store.task_at_site, task_id, who.site):
        raise HTTPException(403, f"task {task_id} has no job at site {who.site!r}")
    data = await s.db(s.store.task_common, task_id)
    if data is None:
        raise HTTPException(404, f"task {task_id} has no common payload")
    return Response(data, media_type="application/octet-stream")


@router.post("/end")
async def end(request: Request, body: PilotEnd, who: PilotWho) -> dict:
    s = _server(request)
    await pilot_of(s, who, body.pilot)
    await s.db(s.store.end_pilot, body.pilot, body.state)
    return {"pilot": body.pilot, "state": body.state}
