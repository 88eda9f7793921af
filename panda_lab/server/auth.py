"""Who is asking, and what they may see and do: the server's one authentication and
isolation rule.

Every request carries a bearer token (RFC 6750).  :func:`identify` maps it to an
:class:`Identity`: the server's own user token (the connection file's) is the server
owner, an admin; the server's pilot token (the connection file's) is a pilot of any
site, for pilots started by hand; the token the server made for a site is a pilot of that
site only (its provisioner hands it to the site's pilots); an optional scrape token opens
``/metrics`` only; every other token is looked up, hashed, in the store's ``users``
table on each request, so a revoked token is refused from the next request on, without a
restart; then, on a server run as a JupyterHub service, asked of the hub
(:mod:`panda_lab.server.hub`).

The rule, as dask-gateway and GitHub apply it to private resources:

- a ``user`` sees and acts on their own tasks, jobs, results, datasets and events only;
  another's are answered 404 exactly as a missing one (a 403 would confirm that the id
  exists, and ids are sequential);
- an ``admin`` sees and acts on everyone's (lists filter by ``?user=``);
- a ``read-only`` identity (monitors) sees everyone's and acts on nothing: any method but
  GET/HEAD gets 403, whatever the route;
- a ``pilot`` identity of a site takes, reports and uploads only jobs of its site (403);
- a ``share`` identity (a share link's token, ``panda-lab share``) reads one task's
  monitor page and its JSON, until the link expires or is revoked, and nothing else.

How a route declares its rule: a router included with ``dependencies=[Depends(client_auth)]``
(every ``/api`` router is) gets authentication and the read-only rule for each of its
routes, new ones included; a handler that reads or acts on owned things also takes
``who: Who`` (the same dependency, resolved once per request) and asks
:func:`task_of`, :func:`job_of` or ``who.owner(...)`` for what it may touch.  Pilot
routes take ``who: PilotWho`` and check sites with :func:`pilot_of` / ``who.check_site``.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from panda_lab.server.schemas import task_ref
from panda_lab.store import TaskNotFound
from panda_lab.store.identities import SHARE_PREFIX

if TYPE_CHECKING:
    from panda_lab.server.app import Server

#: Methods a read-only identity may use.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Identity:
    """Who a request comes from: ``name``, ``role`` ("admin", "user", "read-only",
    "pilot", "scrape" or "share"), for a pilot of one site ``site`` (None: any site),
    for a share link the one ``task`` it opens."""

    name: str
    role: str
    site: str | None = None
    task: int | None = None

    @property
    def sees_all(self) -> bool:
        """Whether this identity sees everyone's work (admins and read-only monitors)."""
        return self.role in ("admin", "read-only")

    def owner(self, user: str | None = None) -> str | None:
        """The owner to filter a list by, in SQL: one's own name for a user; for an
        identity that sees all, ``user`` (None: everyone's).  Raises a 403 when a user
        asks for another user's list."""
        if self.sees_all:
            return user
        if user is not None and user != self.name:
            raise HTTPException(403, "user: only an admin may list another user's work")
        return self.name

    def may_see(self, owner: str | None) -> bool:
        """Whether work owned by ``owner`` is visible to this identity."""
        return self.sees_all or owner == self.name

    def check_site(self, site: str) -> None:
        """403 unless this pilot identity serves ``site``."""
        if self.site is not None and site != self.site:
            raise HTTPException(403, f"this pilot token is for site {self.site!r}, "
                                     f"not {site!r}")


_bearer = HTTPBearer(auto_error=False)


async def identify(server: Server, token: str) -> Identity | None:
    """The identity holding ``token``, or None for an unknown or revoked one (an expired
    or revoked share link raises a 401 saying so: its holder was sent it).  The
    server's own tokens are compared in constant time, each of them whichever matches;
    any other is looked up by its hash (no timing to learn from: the lookup is an index
    seek on a hash of 256 random bits)."""
    own = ((server.user_token, Identity(server.owner_name, "admin")),
           (server.pilot_token, Identity("pilot", "pilot")),
           (server.scrape_token, Identity("scrape", "scrape")))
    found = None
    for known, who in own:
        if known is not None and secrets.compare_digest(token.encode(), known.encode()):
            found = who
    for known, site in server.made_site_tokens.items():  # one site's provisioned pilots
        if secrets.compare_digest(token.encode(), known.encode()):
            found = Identity(f"pilot@{site}", "pilot", site)
    if found is not None:
        return found
    if token.startswith(SHARE_PREFIX):
        share = await server.db(server.store.share_by_token, token)
        if share is not None:
            refusal = share.refusal(time.time())
            if refusal is not None:
                raise HTTPException(401, refusal, headers={"WWW-Authenticate": "Bearer"})
            return Identity(f"share:{share.id}", "share", task=share.task_id)
    row = await server.db(server.store.identity_by_token, token)
    if row is not None:
        return Identity(row.name, row.role, row.site)
    if server.hub is not None:  # a JupyterHub service: the hub knows its users' tokens
        found_hub = await server.hub.who(token)
        if found_hub is not None:
            return Identity(*found_hub)
    return None


async def _identity(request: Request, creds: HTTPAuthorizationCredentials | None,
                    roles: tuple[str, ...], what: str) -> Identity:
    """The request's identity when its role is one of ``roles``: 401 without a bearer
    token or with an unknown one, 403 for a token of another role."""
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    who = await identify(request.app.state.server, creds.credentials)
    if who is None:
        raise HTTPException(401, "wrong token", headers={"WWW-Authenticate": "Bearer"})
    if who.role not in roles:
        raise HTTPException(403, f"this token is not allowed on the {what}")
    return who


# ``async``: a plain ``def`` dependency would run on a thread pool, a thread hop per request.
async def client_auth(request: Request,
                      creds: HTTPAuthorizationCredentials | None = Depends(_bearer)
                      ) -> Identity:
    """The client API's rule: an admin, user or read-only identity; read-only ones may
    only read (403 for any other method)."""
    who = await _identity(request, creds, ("admin", "user", "read-only"), "user API")
    if who.role == "read-only" and request.method not in READ_METHODS:
        raise HTTPException(403, f"{who.name!r} is read-only: {request.method} is not allowed")
    return who


async def pilot_auth(request: Request,
                     creds: HTTPAuthorizationCredentials | None = Depends(_bearer)
                     ) -> Identity:
    """The pilot API's rule: a pilot identity (of one site, or the server's own of any)."""
    return await _identity(request, creds, ("pilot",), "pilot API")


async def scrape_auth(request: Request,
                      creds: HTTPAuthorizationCredentials | None = Depends(_bearer)
                      ) -> Identity:
    """``/metrics``: the scrape token, or an identity that sees all (its counts are
    everyone's): an admin (the server's user token) or a read-only monitor."""
    return await _identity(request, creds, ("scrape", "admin", "read-only"), "metrics")


#: The monitor paths a share link opens: its task's page, that page's JSON (``task``: the
#: task's id, compared with the link's), the page's assets.
#: Matched at the path's end: a server behind a prefix (a JupyterHub service) sees it too.
SHARE_PATHS = re.compile(r"/monitor/(?:api/)?tasks/(?P<task>[^/]+)$|/monitor/static/[^/]+$")


async def monitor_auth(request: Request,
                       creds: HTTPAuthorizationCredentials | None = Depends(_bearer)
                       ) -> Identity:
    """The web monitor's rule (``/monitor``): the client API's, whose views then filter
    by the identity as the API does (a user's own work only, 404 for another's); and a
    share link's token, which opens :data:`SHARE_PATHS` for its one task only (another
    task: 404 as a missing one; any other view: 403)."""
    who = await _identity(request, creds, ("admin", "user", "read-only", "share"),
                          "web monitor")
    if who.role == "share":
        opened = SHARE_PATHS.search(request.scope["path"])
        if opened is None:
            raise HTTPException(403, "a share link opens its task's page only")
        task = opened.group("task")
        if task is not None and task != str(who.task):
            raise TaskNotFound(f"no task with id {task}")
    elif who.role == "read-only" and request.method not in READ_METHODS:
        raise HTTPException(403, f"{who.name!r} is read-only: {request.method} is not allowed")
    return who


#: A handler's parameter for the client identity: ``who: Who``.
Who = Annotated[Identity, Depends(client_auth)]
#: A monitor view's parameter: ``who: MonitorWho``.
MonitorWho = Annotated[Identity, Depends(monitor_auth)]
#: A pilot handler's parameter: ``who: PilotWho``.
PilotWho = Annotated[Identity, Depends(pilot_auth)]


async def task_of(server: Server, who: Identity, task: int | str) -> int:
    """The id of a task ``who`` may see, from an id or a name (names are looked up among
    one's own tasks).  Raises :class:`TaskNotFound` (404) for a missing task and for
    another user's, with the same words."""
    if who.role == "share":  # its one task, by id (monitor_auth checked the path too)
        if (task_ref(task) if isinstance(task, str) else task) != who.task:
            raise TaskNotFound(f"no task with id {task}")
        return who.task
    if isinstance(task, str):
        ref = task_ref(task)
        if not isinstance(ref, int):
            return await server.db(server.store.resolve_task, ref, who.owner())
        task = ref
    if who.sees_all:
        return task  # every store call checks that the task exists
    if server.task_owner(task) != who.name:  # cached: an owner never changes
        raise TaskNotFound(f"no task with id {task}")
    return task


def known(server: Server, task_id: int) -> None:
    """Raises :class:`TaskNotFound` (404) unless task ``task_id`` exists, from the
    server's cache of task owners (a task is never deleted): for a route whose store
    call would answer an unknown task with an empty result, not a 404.  It used to read
    the whole task (``get_task``: eight grouped queries) on every ``partial()``."""
    if server.task_owner(task_id) is None:
        raise TaskNotFound(f"no task with id {task_id}")


async def job_of(server: Server, who: Identity, job_id: int) -> None:
    """404 (:class:`TaskNotFound`) unless ``who`` may see job attempt ``job_id``."""
    if who.sees_all:
        return
    if who.role == "share":
        raise TaskNotFound(f"no job with id {job_id}")
    found = await server.db(server.store.job_owner, job_id)
    if found is None or found[1] != who.name:
        raise TaskNotFound(f"no job with id {job_id}")


async def pilot_of(server: Server, who: Identity, pilot_id: int) -> str:
    """The site of pilot ``pilot_id`` when ``who`` may speak for it: 404 for an unknown
    pilot, 403 for a pilot of another site than ``who``'s.  A pilot's site never changes
    and a pilot row is never deleted, so the site is read once (``Server.pilot_sites``),
    not on each of the pilot's requests: that read was a transaction of its own on every
    acquire, report and heartbeat."""
    site = server.pilot_sites.get(pilot_id)
    if site is None:
        site = (await server.db(server.store.pilot, pilot_id))["site"]
        server.remember_pilot(pilot_id, site)
    who.check_site(site)
    return site


async def pilot_job(server: Server, who: Identity, task_id: int, job_id: int) -> None:
    """403 unless job attempt ``job_id`` of ``task_id`` went to ``who``'s site (a pilot
    of any site passes; the store checks the rest)."""
    if who.site is None:
        return
    found = await server.db(server.store.job_owner, job_id)
    if found is None or found[0] != task_id or found[2] != who.site:
        raise HTTPException(403, f"job {job_id} of task {task_id} is not at site "
                                 f"{who.site!r}")
