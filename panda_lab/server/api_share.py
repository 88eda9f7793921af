"""Share links: a task's owner (or an admin) makes a read-only, expiring link to the
task's monitor page, lists its links and revokes them (``panda-lab share``).

The link is ``/monitor/tasks/ID#share=TOKEN``: the token rides in the URL's fragment,
which a browser never sends to a server (nor writes in its logs or a ``Referer``); the
page hands it to the server as a bearer token, which :func:`~panda_lab.server.auth.
monitor_auth` lets read that one task's page and JSON only, until it expires or is
revoked (then a 401 that says which).  As GitHub's and Google Drive's "anyone with the
link" shares; the token is kept hashed (:mod:`panda_lab.store.rows.shares`).
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import Field

from panda_lab.server.app import Server
from panda_lab.server.auth import Who, task_of
from panda_lab.server.schemas import Id, Strict, TaskRef
from panda_lab.store import TaskNotFound
from panda_lab.store.rows.shares import ShareRow

#: The longest a link may live: a year.
MAX_EXPIRES_S = 366 * 86400
#: A link's life when none is asked: a week.
DEFAULT_EXPIRES_S = 7 * 86400

router = APIRouter()


class ShareMake(Strict):
    """``expires_s``: seconds the link opens the page for (above 0, at most a year)."""

    expires_s: Annotated[float, Field(gt=0, le=MAX_EXPIRES_S, allow_inf_nan=False)] = \
        DEFAULT_EXPIRES_S


class ShareRevoke(Strict):
    """``id``: the link to revoke (see ``GET .../shares``); absent: every one not revoked yet."""

    id: Id | None = None


def _server(request: Request) -> Server:
    return request.app.state.server


def link_path(task_id: int, token: str) -> str:
    """The link's path and fragment on the server: ``/monitor/tasks/ID#share=TOKEN``."""
    return f"/monitor/tasks/{task_id}#share={token}"


def as_dict(row: ShareRow, t: float) -> dict:
    """A link as the API shows it: ``{"id", "task", "created_by", "created_at",
    "expires_at", "revoked_at", "state"}`` (``live``, ``expired`` or ``revoked``)."""
    refused = row.refusal(t)
    state = "live" if refused is None else "revoked" if row.revoked_at is not None \
        else "expired"
    return {"id": row.id, "task": row.task_id, "created_by": row.created_by,
            "created_at": row.created_at, "expires_at": row.expires_at,
            "revoked_at": row.revoked_at, "state": state}


@router.post("/tasks/{task}/shares", status_code=201)
async def make_share(request: Request, task: TaskRef, who: Who,
                     body: ShareMake | None = None) -> dict:
    """A new link to the task: its record (:func:`as_dict`) with ``token`` (shown only
    now) and ``path`` (:func:`link_path`; the client adds the server's address)."""
    s = _server(request)
    task_id = await task_of(s, who, task)
    row, token = await s.db(s.store.share_task, task_id, who.name,
                            (body or ShareMake()).expires_s)
    return {**as_dict(row, time.time()), "token": token, "path": link_path(task_id, token)}


@router.get("/tasks/{task}/shares")
async def list_shares(request: Request, task: TaskRef, who: Who) -> list[dict]:
    """The task's links, oldest first, revoked and expired ones too (no tokens)."""
    s = _server(request)
    task_id = await task_of(s, who, task)
    t = time.time()
    return [as_dict(r, t) for r in await s.db(s.store.shares_of, task_id)]


@router.post("/tasks/{task}/shares/revoke")
async def revoke_shares(request: Request, task: TaskRef, who: Who,
                        body: ShareRevoke | None = None) -> dict:
    """Revoke one link of the task (``id``) or all not revoked yet: ``{"task", "revoked":
    [ids]}``; a 404 when the link named is not an unrevoked link of this task."""
    s = _server(request)
    task_id = await task_of(s, who, task)
    share_id = body.id if body is not None else None
    ids = await s.db(s.store.revoke_shares, task_id, share_id)
    if share_id is not None and not ids:
        raise TaskNotFound(f"no unrevoked share link {share_id} of task {task_id}")
    return {"task": task_id, "revoked": ids}
