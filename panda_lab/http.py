"""The one module that talks HTTP to a panda-lab server, for clients and pilots alike.

Requests can be retried with backoff for a while when the server is unreachable, which
is how a pilot rides out a server restart without losing its reports.  A client that
knows how to find its server again (``find``: the connection file of a local server,
which a restarted server rewrites with its new port and tokens) follows it there by
itself: a notebook's ``lab`` and its monitors outlive a server restart.

Requests go through urllib3's keep-alive pool: a pilot sends one or two per job, and
urllib3 spends about half of httpx's CPU on each (benchmarks/README.md, "Dataset
analysis"), CPU taken from the payloads on a small machine.  The event stream
(:meth:`ApiClient.events`) is read with httpx.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit
from urllib.request import getproxies, proxy_bypass

import httpx
import orjson
import urllib3
from urllib3.exceptions import HTTPError as TransportError
from urllib3.exceptions import NewConnectionError


def readable(detail: Any) -> str:
    """A server's error ``detail`` as one line: a FastAPI validation list (``[{"loc":
    ["query", "state"], "msg": "Input should be ...", ...}]``) becomes ``"state: Input
    should be ..."`` per entry, joined by ``"; "``; anything else its ``str``."""
    if isinstance(detail, list) and all(isinstance(d, dict) and "msg" in d for d in detail):
        parts = []
        for d in detail:
            loc = [str(x) for x in d.get("loc", ()) if x not in ("query", "body", "path")]
            parts.append(f"{'.'.join(loc)}: {d['msg']}" if loc else str(d["msg"]))
        return "; ".join(parts)
    return str(detail)


class ApiError(Exception):
    """The server answered with an error status; ``detail`` is its explanation (as the
    server sent it) and ``text`` the same in one readable line."""

    def __init__(self, status: int, detail: Any, method: str = "", path: str = "") -> None:
        self.status = status
        self.detail = detail
        self.text = readable(detail)
        super().__init__(f"{method} {path}: HTTP {status}: {self.text}")


class ServerUnreachable(ConnectionError):
    """No answer from the server (connection refused, DNS, timeout: any transport
    failure, urllib3's ``HTTPError``) for as long as the request was to be retried.  Its
    message says what happened and what to do, in a few lines; the transport's own
    exception is kept as ``cause``, not chained (its frames are urllib3's, not the
    user's)."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


def idempotent() -> dict[str, str]:
    """Headers that make one request safe to repeat: a new ``Idempotency-Key`` (a random
    UUID, the IETF HTTPAPI draft "The Idempotency-Key HTTP Header Field"), made once per
    request and sent with each of its retries; the server does the work once."""
    return {"Idempotency-Key": str(uuid.uuid4())}


#: Where a server is now: ``(url, token)``, or None when nothing says so.
Finder = Callable[[], "tuple[str, str] | None"]


class ApiClient:
    """A bearer-token client for one server.

    ``url`` is the server's base URL; ``timeout`` (seconds) bounds each request;
    ``retry_for`` (seconds, 0: no retry) is how long a request keeps trying, with backoff
    from 0.05 s doubling up to 2 s, while the server is unreachable.  ``find``, when
    given, says where the server is now (:func:`panda_lab.runtime.finder`): when the
    server does not answer, the client asks it and, if the server moved (a restart on a
    new port, new tokens), carries on there.  ``fix`` is the advice that ends the
    message of :class:`ServerUnreachable` (the one call that brings the server back)."""

    def __init__(self, url: str, token: str, timeout: float = 60.0,
                 retry_for: float = 0.0, find: Finder | None = None, fix: str = "") -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.retry_for = retry_for
        #: Transport failures met so far (each a request whose answer may have been lost
        #: after the server did the work).
        self.transport_errors = 0
        #: A ``time.monotonic()`` after which no request keeps retrying, whatever its
        #: ``retry_for`` (a pilot told to stop sets it: it must not wait out minutes for
        #: a server that is gone).  None: no such bound.
        self.retry_until: float | None = None
        self.find = find
        self.fix = fix
        self._timeout = timeout
        self._moving = threading.Lock()
        self._headers = {"Authorization": f"Bearer {token}"}
        self._http = _pool(self.url)

    def relocate(self) -> bool:
        """Ask ``find`` where the server is now and, if it moved, send every later request
        there (with its new token).  Returns whether it moved; False without ``find``.
        Safe from any thread; a request in flight to the old address just fails."""
        if self.find is None:
            return False
        found = self.find()
        if not found:
            return False
        url, token = found[0].rstrip("/"), found[1]
        with self._moving:
            if (url, token) == (self.url, self.token):
                return False
            old = self._http
            self.url, self.token = url, token
            self._headers = {"Authorization": f"Bearer {token}"}
            self._http = _pool(url)
        old.clear()
        return True

    def unreachable(self, exc: BaseException) -> ServerUnreachable:
        """The error for a server that does not answer: what happened (the address and
        the transport's error) and what fixes it (``fix``), in a few lines."""
        what = str(exc) or type(exc).__name__
        if isinstance(exc, NewConnectionError):  # "HTTPConnection(host=..): Failed to ..."
            what = what.split(": ", 1)[-1]
        message = f"the panda-lab server at {self.url} does not answer ({what})."
        if self.find is not None:
            message += ("\nIt is not running: it was stopped, or it crashed; a server "
                        "restarted for the same home is found by itself.")
        if self.fix:
            message += f"\nTo go on: {self.fix}"
        return ServerUnreachable(message, exc)

    def close(self) -> None:
        """Close the connection pool; the client is not to be used afterwards."""
        self._http.clear()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, json: Any = None, content: bytes | None = None,
                params: dict | None = None, timeout: float | None = None,
                retry_for: float | None = None, raw: bool = False,
                headers: dict[str, str] | None = None) -> Any:
        """Send one request and return the decoded JSON body (``None`` for an empty body),
        or the body's bytes with ``raw``.

        ``json`` is sent as an orjson-encoded body, else ``content`` as is; ``timeout``
        and ``retry_for`` (seconds) override the client's for this call; ``headers`` are
        added to it.  Only transport failures and a 503 with ``Retry-After`` (the server
        cannot serve now and did nothing) are retried; any other error status is an
        answer.  A transport failure may come after the server did the work (its answer
        was lost): a request that creates something is retried safely only with an
        ``Idempotency-Key`` header (:func:`idempotent`).  Raises
        :class:`ServerUnreachable` when no answer came within ``retry_for``, and
        :class:`ApiError` for a status of 400 or more, with the server's ``detail`` (the
        body's text when it is not JSON)."""
        retry_for = self.retry_for if retry_for is None else retry_for
        deadline = time.monotonic() + retry_for
        delay = 0.05
        extra = dict(headers or {})
        if json is not None:
            content = orjson.dumps(json)
            extra["Content-Type"] = "application/json"
        query = f"?{urlencode(_query(params))}" if params else ""
        wait = urllib3.Timeout(self._timeout if timeout is None else timeout)
        moved = False
        while True:
            try:
                resp = self._http.urlopen(method, f"{self.url}{path}{query}", body=content,
                                          headers={**self._headers, **extra}, timeout=wait,
                                          retries=False, redirect=False)
            except TransportError as exc:
                self.transport_errors += 1
                if not moved and self.relocate():  # a restarted server: go there, once
                    moved = True
                    continue
                end = deadline if self.retry_until is None else min(deadline, self.retry_until)
                if time.monotonic() + delay > end:
                    raise self.unreachable(exc) from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            # 503 with Retry-After: the server lives but cannot serve now (its database
            # restarts) and did nothing: asked again, as after a transport failure
            end = deadline if self.retry_until is None else min(deadline, self.retry_until)
            if (resp.status == 503 and "retry-after" in resp.headers
                    and time.monotonic() + delay <= end):
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            break
        data = resp.data
        if resp.status >= 400:
            text = data.decode("utf-8", errors="replace")
            try:
                body = orjson.loads(data)
                detail = body.get("detail", text) if isinstance(body, dict) else text
            except orjson.JSONDecodeError:
                detail = text
            raise ApiError(resp.status, detail, method, path)
        if raw:
            return data
        return orjson.loads(data) if data else None

    def get(self, path: str, **params: Any) -> Any:
        """``GET path`` with ``params`` as the query (``None`` values left out); returns
        and raises as :meth:`request`."""
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        """``POST path`` with ``body`` as JSON (``{}`` when ``None``); ``kw`` as
        :meth:`request` takes them, and returns and raises as it."""
        return self.request("POST", path, json=body if body is not None else {}, **kw)

    def events(self, tasks: list[int] | None = None, results: bool = False,
               timeout: float | None = None, ping: float | None = None,
               read_timeout: float | None = None) -> Iterator[dict]:
        """Server-Sent Events as dicts, until the stream ends or the server goes away.

        With ``ping``, the server sends a keep-alive that is yielded as ``{"ping": True}``
        at least that often, so a reader can notice it was asked to stop.  With
        ``read_timeout`` (seconds), a stream silent that long raises ``httpx.ReadTimeout``.
        ``tasks`` limits the stream to those task ids; ``results`` asks for job results in
        the events; ``timeout`` (seconds, default 60) bounds connecting and writing.

        Raises :class:`ApiError` when the server refuses the stream (status 400 or more);
        a transport failure is raised as httpx's own ``httpx.TransportError`` (this stream
        is not retried: a reader reconnects itself)."""
        params: dict = {"results": "true" if results else "false"}
        if ping is not None:
            params["ping"] = ping
        if tasks:
            params["tasks"] = ",".join(str(t) for t in tasks)
        with httpx.Client(base_url=self.url, headers=self._headers,
                          timeout=httpx.Timeout(timeout or 60.0, read=read_timeout)) as http, \
                http.stream("GET", "/api/events", params=params) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise ApiError(resp.status_code, resp.text, "GET", "/api/events")
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    yield orjson.loads(line[6:])
                elif line.startswith(": ping"):
                    yield {"ping": True}


def _pool(url: str) -> urllib3.PoolManager:
    """Keep-alive connections to the server at ``url``, a few (a notebook's monitors share
    a client), through the proxy the environment names for its scheme unless ``no_proxy``
    exempts its host (``HTTP_PROXY``, ``HTTPS_PROXY``, ``NO_PROXY``: what httpx and
    ``urllib.request`` read)."""
    parts = urlsplit(url)
    proxy = getproxies().get(parts.scheme)
    if proxy and not proxy_bypass(parts.hostname or ""):
        return urllib3.ProxyManager(proxy, maxsize=8)
    return urllib3.PoolManager(maxsize=8)


def _query(params: dict) -> list[tuple[str, str]]:
    """Query parameters as httpx writes them: ``True`` as ``true``, ``None`` left out,
    a list as the key repeated."""
    out = []
    for k, v in params.items():
        for x in v if isinstance(v, list | tuple) else [v]:
            if x is None:
                continue
            out.append((k, "true" if x is True else "false" if x is False else str(x)))
    return out
