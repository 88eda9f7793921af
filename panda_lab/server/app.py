"""The server process: the ASGI app, its authentication, and the state it shares.

Store calls run on the event loop itself, one at a time: the database work is
serialised (SQLite's one writer) and a request pays no thread hand-offs, which measured
3 ms of a 10 ms round trip.  The price: a very large request (a 100,000-job submission)
holds the loop for its duration; pilots and streams resume right after.

The store enforces it: it is bound to the thread that made the server, then to the
event loop's thread at startup, and refuses a transaction from any other thread (which
calls it through ``Server.db_from_thread``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import OperationalError

from panda_lab import __version__
from panda_lab.model.brokerage import BrokerageError
from panda_lab.server.auth import client_auth, pilot_auth, scrape_auth
from panda_lab.server.config import ConfigError, ServerConfig, SiteConfig
from panda_lab.server.events import EventBus
from panda_lab.server.heartbeats import Heartbeats
from panda_lab.server.loop_lag import LoopLag
from panda_lab.server.metrics import ServerMetrics
from panda_lab.store import (
    Changes,
    DatasetExists,
    DatasetNotFound,
    IdempotencyKeyReused,
    ResultStoreFull,
    Store,
    TaskNotFound,
    TaskStateError,
    UnknownPilot,
    UnknownSite,
)
from panda_lab.store.base import DefaultBroker
from panda_lab.text import clean, clean_obj

log = logging.getLogger("panda_lab.server")



class ORJSONResponse(JSONResponse):
    """JSON written by orjson. The handlers return plain dicts and lists (no response
    models), which FastAPI's own JSON response would encode with the slower ``json``;
    FastAPI's class of this name is deprecated in favour of response models, hence ours.

    A text orjson refuses (a lone surrogate) is written by the rule of panda_lab.text
    rather than failing the response."""

    def render(self, content: Any) -> bytes:
        option = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
        try:
            return orjson.dumps(content, option=option)
        except TypeError:
            return orjson.dumps(clean_obj(content), option=option, default=str)


#: Request bodies above this are refused (413): before they are read when they say their
#: length, as soon as they pass it when they do not (chunked).
MAX_BODY = 1 << 30


class Server:
    """Shared state of one server process: store, event bus, wake-ups for long polls."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        config.home.mkdir(parents=True, exist_ok=True)
        self.store = Store(config.database_url, config.result_dir,
                           broker=DefaultBroker(config.broker_seed))
        # owned by this thread until the event loop takes it over (create_app's lifespan)
        self.store.bind_to_current_thread()
        self.store.upsert_sites([s.as_dict() for s in config.sites])
        self.store.declare_links([link.as_dict() for link in config.links])
        self.store.network = config.network
        self.store.link_window = config.link_window
        self.store.grace_after_restart()
        self.store.regrant_leases(config.task_lease)
        user, pilot = self.store.tokens()
        self.user_token = config.user_token or user
        self.pilot_token = config.pilot_token or pilot
        #: The token each configured site's pilots are given (a provisioner hands it to
        #: them): the site's ``pilot_token_file``'s, else one the server made for the
        #: site.  Either serves that site only (panda_lab.server.auth).
        self.site_tokens, self.made_site_tokens = site_pilot_tokens(self.store, config.sites)
        #: The name of the identity holding ``user_token``: an admin, the owner of the
        #: work submitted with it (panda_lab.server.auth).
        self.owner_name = self.store.server_owner()
        #: Accepted at ``/metrics`` only (with the user token), as Prometheus sends it.
        self.scrape_token = config.scrape_token
        #: Asked about tokens the server does not know, when it runs as a JupyterHub service.
        self.hub = None
        if config.hub_api_url and config.hub_api_token:
            from panda_lab.server.hub import HubIdentities

            self.hub = HubIdentities(config.hub_api_url, config.hub_api_token,
                                     config.hub_cache_s)
        self._task_owners: dict[int, str | None] = {}
        #: Each pilot's site, by pilot id, as read once (auth.pilot_of).
        self.pilot_sites: dict[int, str] = {}
        self.bus = EventBus(self.task_owner)
        self._site_wake: dict[str, asyncio.Event] = {}
        #: The sites whose pilots share this machine's cores (``shared_cores``): a pilot
        #: of one also takes the others' waiting jobs (store/rows/jobs.py, ``dispatch``),
        #: so work activated at one wakes the long polls of all.
        shared = sorted(s.name for s in config.sites if s.as_dict().get("shared_cores"))
        self.core_siblings = {name: [o for o in shared if o != name]
                              for name in shared} if len(shared) > 1 else {}
        self._task_wake: dict[int, asyncio.Event] = {}
        self.background: list[Callable[[Server], Any]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Set once the server was told to stop (:meth:`begin_stop`): long polls answer
        #: and event streams end at once, rather than hold the stop back.
        self.stopping = False
        from panda_lab.server.analysis import AnalysisService

        self.analysis = AnalysisService(self)
        self.analysis.load_known_tasks()
        self.metrics = ServerMetrics(self)
        #: Heartbeats heard, written together about once a second (heartbeats.py).
        self.heartbeats = Heartbeats(self)
        #: How far behind the event loop ran lately: the watchdog's grace (loop_lag.py).
        self.lag = LoopLag(window=config.heartbeat_timeout, cap=config.heartbeat_timeout)

    async def db(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Run a store call.  Awaitable, so that moving the store off the loop again (e.g.
        for a remote database with slow round trips) changes nothing for callers."""
        return fn(*args, **kwargs)

    def db_from_thread(self, fn: Callable, *args: Any, timeout: float | None = None,
                       **kwargs: Any) -> Any:
        """Run a store call from another thread (the merger's, a provisioner's): the call
        is handed to the event loop, which owns the store, and this thread waits for it.
        Returns what ``fn`` returns and raises what it raises; raises ``RuntimeError``
        when the loop is not running (the server is stopping), ``TimeoutError`` after
        ``timeout`` seconds.  Never call it on the loop's own thread: it would wait for
        itself."""
        loop = self.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            raise RuntimeError("the server's event loop is not running")
        return asyncio.run_coroutine_threadsafe(self.db(fn, *args, **kwargs),
                                                loop).result(timeout)

    def task_owner(self, task_id: int) -> str | None:
        """The owner of a task (None: no such task), from a cache: an owner never
        changes.  Called on the loop (the event bus filters each user's stream by it)."""
        if task_id in self._task_owners:
            return self._task_owners[task_id]
        owner = self.store.task_owner(task_id)
        if owner is not None:
            if len(self._task_owners) >= 100_000:
                self._task_owners.clear()
            self._task_owners[task_id] = owner
        return owner

    def remember_pilot(self, pilot_id: int, site: str) -> None:
        """Keep a pilot's site (it never changes), for :func:`auth.pilot_of`; at most
        100,000 pilots, then it starts afresh."""
        if len(self.pilot_sites) >= 100_000:
            self.pilot_sites.clear()
        self.pilot_sites[pilot_id] = site

    # -- wake-ups -------------------------------------------------------------------
    def site_event(self, site: str) -> asyncio.Event:
        ev = self._site_wake.get(site)
        if ev is None:
            ev = self._site_wake[site] = asyncio.Event()
        return ev

    def task_event(self, task_id: int) -> asyncio.Event:
        ev = self._task_wake.get(task_id)
        if ev is None:
            ev = self._task_wake[task_id] = asyncio.Event()
        return ev

    def begin_stop(self) -> None:
        """The server was told to stop (SIGTERM, SIGINT): every request held open
        answers now.  A long poll (a client's ``wait``, a pilot's ``acquire``) answers
        with what it has, an event stream sends ``shutdown`` and ends.  uvicorn waits
        for open requests before it stops, for ``timeout_graceful_shutdown`` seconds,
        then cancels them: a client waiting on a task got an HTTP 500 and a stream was
        cut without a word, 5 s into every stop.  Idempotent; runs on the loop."""
        if self.stopping:
            return
        self.stopping = True
        for ev in [*self._site_wake.values(), *self._task_wake.values()]:
            ev.set()
        self._site_wake.clear()
        self._task_wake.clear()
        self.bus.publish("shutdown", {})

    def publish(self, changes: Changes) -> None:
        """Announce what a store operation changed and wake whoever waits for it."""
        for activated in changes.activated_sites:
            for site in (activated, *self.core_siblings.get(activated, ())):
                ev = self._site_wake.pop(site, None)
                if ev is not None:
                    ev.set()
        for task_id, _state in changes.tasks:
            ev = self._task_wake.pop(task_id, None)
            if ev is not None:
                ev.set()
        self.analysis.on_changes(changes)
        self.bus.publish_changes(changes)

    def announce(self, kind: str, body: dict) -> None:
        """Publish on the event stream from any thread (the merger's, for instance)."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.bus.publish, kind, body)

    def close(self) -> None:
        self.store.close()


def site_pilot_tokens(store: Store, sites: list[SiteConfig]
                      ) -> tuple[dict[str, str], dict[str, str]]:
    """``({site: token}, {token: site})``: the token each site's pilots get, and of those
    the ones the server made (which :func:`panda_lab.server.auth.identify` knows without
    the users table).  A site's ``pilot_token_file`` must hold a live pilot token of that
    site, issued with ``panda-lab users add-pilot SITE``; anything else raises
    :class:`ConfigError` naming the site and the key."""
    made = store.site_pilot_tokens([s.name for s in sites if not s.pilot_token_file])
    tokens = dict(made)
    for site in sites:
        token = site.read_pilot_token()
        if token is None:
            continue
        row = store.identity_by_token(token)
        if row is None or row.role != "pilot" or row.site != site.name:
            held = ("no live token of this server (unknown or revoked)" if row is None
                    else f"the token of {row.name!r} ({row.role}"
                         f"{' of site ' + repr(row.site) if row.site else ''})")
            raise ConfigError(f"[sites.{site.name}] pilot_token_file = "
                              f"{site.pilot_token_file!r} holds {held}, not a pilot token of "
                              f"site {site.name!r}: issue one with `panda-lab users add-pilot "
                              f"{site.name}`")
        tokens[site.name] = token
    return tokens, {token: site for site, token in made.items()}


#: The client API's dependency under its older name.
user_auth = client_auth


def create_app(server: Server) -> FastAPI:
    from panda_lab.server import api_analysis, api_client, api_pilot, api_share
    from panda_lab.server.watchdog import watchdog_loop

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.loop = asyncio.get_running_loop()
        server.store.bind_to_current_thread()  # from now on, the loop owns the store
        tasks = [asyncio.create_task(watchdog_loop(server), name="watchdog"),
                 asyncio.create_task(server.lag.probe(), name="loop-lag"),
                 asyncio.create_task(server.heartbeats.run(
                     min(1.0, server.config.watchdog_interval)), name="heartbeats")]
        server.analysis.resume()
        tasks += [asyncio.create_task(fn(server), name=getattr(fn, "__name__", "bg"))
                  for fn in server.background]
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.analysis.close()  # the merger's last store calls need the loop
            server.begin_stop()  # said at the stop's start already, unless stopped otherwise

    app = FastAPI(
        title="panda-lab", version=__version__, lifespan=lifespan,
        default_response_class=ORJSONResponse,
        docs_url=None, redoc_url=None, openapi_url=None,
        # FastAPI's own limit counts the bytes as they come: a body announced too large
        # is refused before it is read, and a chunked one (no Content-Length) once it
        # passes the limit; the project's own check read Content-Length only, and a
        # chunked body of any size was read whole, before its token was checked
        max_body_size=MAX_BODY,
    )
    app.state.server = server

    for exc_type, status in ((TaskNotFound, 404), (UnknownPilot, 404), (TaskStateError, 409),
                             (DatasetNotFound, 404), (DatasetExists, 409),
                             (UnknownSite, 400), (BrokerageError, 400),
                             (IdempotencyKeyReused, 422), (ResultStoreFull, 507)):
        app.add_exception_handler(exc_type, _handler(status))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        return ORJSONResponse({"detail": validation_details(exc.errors())}, 422)

    @app.exception_handler(OperationalError)
    async def _database_unavailable(request: Request, exc: OperationalError):
        """The database cannot be used now (PostgreSQL restarting or unreachable, SQLite
        locked past its timeout): the transaction was rolled back, so the request may be
        sent again; 503 with ``Retry-After`` (RFC 9110 §10.2.3) says so, and clients
        retry it (panda_lab.http) rather than fail their work."""
        log.warning("database unavailable serving %s %s: %s", request.method,
                    request.url.path, str(exc.orig or exc).splitlines()[0])
        return ORJSONResponse({"detail": "the database cannot be reached now; retry"}, 503,
                              headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("error serving %s %s", request.method, request.url.path)
        return ORJSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, 500)

    @app.get("/api/openapi.json", dependencies=[Depends(client_auth)], include_in_schema=False)
    async def openapi() -> dict:
        return app.openapi()

    # The pilot API first: routes are matched in order, and a pilot's requests are most
    # of a running server's (no client path starts with /api/pilot/).  Last, each of
    # them was tried against the client's ~35 routes first (12 % of the server's CPU
    # in an analysis of 32 jobs).
    app.include_router(api_pilot.router, prefix="/api/pilot", dependencies=[Depends(pilot_auth)])
    app.include_router(api_client.router, prefix="/api", dependencies=[Depends(client_auth)])
    app.include_router(api_analysis.router, prefix="/api", dependencies=[Depends(client_auth)])
    app.include_router(api_share.router, prefix="/api", dependencies=[Depends(client_auth)])

    @app.get("/metrics", dependencies=[Depends(scrape_auth)], include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus' text format (:mod:`panda_lab.server.metrics`), with the scrape
        token, the server's user token or a read-only token.  Served on the loop: the
        collector reads the store."""
        return Response(generate_latest(server.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    from panda_lab.server import monitor

    monitor.install(app)
    return app


def validation_details(errors: Any) -> list[dict]:
    """A 422's details: where and what, and the offending value only when it is short.
    FastAPI's own answer echoes every input, which may be megabytes of a job's output,
    or bytes and surrogates that JSON cannot carry (its answer then failed with a 500).
    An integer beyond 64 bits, which JSON writers refuse, is given as its digits."""
    out = []
    for e in errors:
        item = {"loc": [x if isinstance(x, int) else clean(str(x)) for x in e.get("loc", ())],
                "msg": clean(str(e.get("msg", ""))), "type": str(e.get("type", ""))}
        value = e.get("input")
        if isinstance(value, int) and not -(2**63) <= value < 2**64:
            value = str(value)
        if isinstance(value, (int, float, bool)) or (isinstance(value, str) and len(value) < 200):
            item["input"] = clean(value) if isinstance(value, str) else value
        out.append(item)
    return out


def _handler(status: int):
    async def handle(_request: Request, exc: Exception):
        # the message whole: stripping quotes (a KeyError's repr) cut the closing quote
        # of "no task named 'foo'"
        detail = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        return ORJSONResponse({"detail": detail}, status)

    return handle
