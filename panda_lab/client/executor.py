"""``PandaExecutor``: a ``concurrent.futures.Executor`` whose calls run as PanDA jobs.

Every executor owns one task, opened on the first call and closed by ``shutdown``;
each ``submit`` is a job of it (``map`` packs ``chunksize`` calls per job).  Futures
are resolved from the server's event stream, not by polling each job: one listener
thread per executor reads the stream, with small results inline.

Submissions are sent by a sender thread that takes everything queued since its last
request: one call costs one request, 10,000 calls cost a handful.

While the executor lives, a third thread renews the task's lease (model/lease.py).  If
the process ends without ``shutdown`` (a kernel killed or restarted), the lease lapses
and the server closes the task: the jobs already submitted still run, and the task ends
``done`` (or ``finished``/``failed``) when they have, with "closed: client gone" in its
message; ``lab.task(name)`` finds it and its results from any new process.
"""

from __future__ import annotations

import base64
import itertools
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from concurrent.futures import wait as wait_futures
from functools import partial
from typing import TYPE_CHECKING, Any

from panda_lab.client.futures import PandaFuture, exception_from_job
from panda_lab.http import ApiClient, ApiError
from panda_lab.model.lease import renew_every
from panda_lab.payload import dumps_call, dumps_fn, environment

if TYPE_CHECKING:  # pragma: no cover
    from panda_lab.client.session import Lab

log = logging.getLogger("panda_lab.executor")

#: Jobs sent in one request at most.
SEND_BATCH = 5000


def _process_chunk(fn: Callable, chunk: list[tuple]) -> list:
    return [fn(*args) for args in chunk]


def _chunks(iterables: tuple[Iterable, ...], chunksize: int) -> Iterator[list[tuple]]:
    it = zip(*iterables, strict=False)
    while chunk := list(itertools.islice(it, chunksize)):
        yield chunk


def _pending(f: Future) -> bool:
    return not f.running() and not f.done()


class EnvironmentMismatch(UserWarning):
    """A site's pilots run other versions of Python or key packages than this client."""


class PandaExecutor(Executor):
    """Run calls as jobs on panda-lab sites.

    Parameters follow the job options: ``site`` (a name, a list, or ``"ANY"`` for
    brokerage to choose), ``cores``, ``memory`` (MB), ``walltime`` (seconds, 0 for none),
    ``retries`` (extra attempts after a system error; user errors are never retried),
    ``priority`` and ``name`` (the task's name, to find it again with ``lab.task``).
    """

    def __init__(self, lab: Lab, *, site: str | list[str] = "ANY", cores: int = 1,
                 memory: int = 0, walltime: float = 0.0, retries: int = 2, priority: int = 0,
                 name: str | None = None, max_workers: int | None = None) -> None:
        self._lab = lab
        self._api = ApiClient(lab.url, lab.api.token)
        self.site = site
        self.name = name or "executor"
        self._options = {"priority": priority, "cores": cores, "memory_mb": memory,
                         "walltime_s": float(walltime), "max_attempts": retries + 1,
                         "kind": "executor", "client": environment()}
        # Dask reads ``_max_workers`` to decide how many tasks to keep in flight.  Jobs in
        # flight cost the client nothing and let pilots take them in batches, so be
        # generous: a job's round trip, not the slots, is what limits a graph.
        self._max_workers = max_workers or max(128, 8 * self._capacity())
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._shutdown = False
        self.task_id: int | None = None
        self._futures: dict[int, PandaFuture] = {}
        self._early: dict[int, dict] = {}
        self._outbox: list[tuple[PandaFuture, bytes]] = []
        # the batch being posted: in neither _outbox nor _futures until the reply comes
        self._inflight: list[PandaFuture] = []
        self._fn_cache: dict[int, tuple[Callable, bytes]] = {}
        self._checked_sites: set[str] = set()
        self.environment_warnings: list[str] = []
        self._listener: threading.Thread | None = None
        self._sender: threading.Thread | None = None
        self._listening = threading.Event()
        self._stream_error: BaseException | None = None
        self._closed = threading.Event()
        self._lease: threading.Thread | None = None
        #: Why the task's lease could not be renewed (it was closed meanwhile), if so.
        self.lease_error: str | None = None

    def _capacity(self) -> int:
        try:
            return sum(p["slots"] for p in self._lab.pilots() if p["state"] == "running")
        except Exception:
            return 1

    def __repr__(self) -> str:
        return (f"<PandaExecutor task={self.task_id} name={self.name!r} site={self.site!r} "
                f"pending={sum(not f.done() for f in self._futures.values())}>")

    # ---- the Executor contract ------------------------------------------------------
    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> PandaFuture:
        payload = dumps_call(self._fn_bytes(fn), args, kwargs)  # PayloadError here, at once
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._ensure_started()
            fut = PandaFuture(self)
            self._outbox.append((fut, payload))
            self._wake.notify_all()
        return fut

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1) -> Iterator:
        """Like the standard ``map``: results in order, lazily; ``chunksize`` calls per job."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        results = super().map(partial(_process_chunk, fn), _chunks(iterables, chunksize),
                              timeout=timeout)
        return itertools.chain.from_iterable(results)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            pending = [f for f in self._futures.values() if not f.done()]
            pending += [f for f, _ in self._outbox] + self._inflight
            self._wake.notify_all()
        if cancel_futures:
            # Future.cancel, not ours: one kill request for all of them, below.
            cancelled = [f for f in pending if Future.cancel(f)]
            self._kill(cancelled)
        if wait:
            self._finish()
        else:
            threading.Thread(target=self._finish, daemon=True, name="panda-close").start()

    def _finish(self) -> None:
        """Wait for every future, then close the task so it can end."""
        while True:
            with self._lock:
                outstanding = [f for f in self._futures.values() if not f.done()]
                outstanding += [f for f, _ in self._outbox] + self._inflight
            if not outstanding:
                break
            wait_futures(outstanding)
        if self.task_id is not None:
            try:
                self._api.post(f"/api/tasks/{self.task_id}/close")
            except Exception as exc:  # the futures are resolved; closing is housekeeping
                log.warning("could not close task %s: %s", self.task_id, exc)
        self._stop_threads()

    def _stop_threads(self) -> None:
        with self._lock:
            self._wake.notify_all()
        if self._sender is not None and self._sender is not threading.current_thread():
            self._sender.join(10)
        self._closed.set()
        if self._listener is not None and self._listener is not threading.current_thread():
            self._listener.join(5)
        self._api.close()

    # ---- starting: a task, a listener, a sender ----------------------------------------
    def _ensure_started(self) -> None:
        """Open the task and start listening before the first job exists (called with
        the lock held), so no event of ours can be missed."""
        if self.task_id is not None:
            return
        reply = self._api.post("/api/tasks", {
            "name": self.name, "site": self.site, "jobs": [], "open": True,
            "options": self._options})
        self.task_id = reply["task"]
        self._start_lease(reply.get("lease_s"))
        self._listener = threading.Thread(target=self._listen, daemon=True,
                                          name=f"panda-events-{self.task_id}")
        self._listener.start()
        if not self._listening.wait(30):
            raise ConnectionError("the server's event stream did not answer within 30 s")
        self._sender = threading.Thread(target=self._send, daemon=True,
                                        name=f"panda-send-{self.task_id}")
        self._sender.start()

    def _fn_bytes(self, fn: Callable) -> bytes:
        hit = self._fn_cache.get(id(fn))
        if hit is not None and hit[0] is fn:
            return hit[1]
        data = dumps_fn(fn)
        self._fn_cache[id(fn)] = (fn, data)
        if len(self._fn_cache) > 64:
            self._fn_cache.pop(next(iter(self._fn_cache)))
        return data

    # ---- sender ---------------------------------------------------------------------------
    def _send(self) -> None:
        while True:
            with self._lock:
                while not self._outbox and not self._shutdown:
                    self._wake.wait()
                if not self._outbox:
                    return
                batch, self._outbox = self._outbox[:SEND_BATCH], self._outbox[SEND_BATCH:]
                batch = [(f, p) for f, p in batch if not f.cancelled()]
                self._inflight = [f for f, _ in batch]
            if not batch:
                continue
            jobs = [{"payload": base64.b64encode(p).decode()} for _, p in batch]
            try:
                reply = self._api.post(f"/api/tasks/{self.task_id}/jobs", {"jobs": jobs})
            except Exception as exc:
                for f, _ in batch:
                    if f.set_running_or_notify_cancel():
                        f.set_exception(exc)
                with self._lock:
                    self._inflight = []
                continue
            with self._lock:
                for (f, _), job_id, index in zip(batch, reply["jobs"], reply["indices"],
                                                 strict=True):
                    f.job_id, f.index = job_id, index
                    self._futures[index] = f
                    early = self._early.pop(index, None)
                    if early is not None:
                        self._apply(f, early)
                self._inflight = []
            # cancelled while in flight: they had no job id to kill then
            self._kill([f for f, _ in batch if f.cancelled()])

    # ---- listener -------------------------------------------------------------------------
    def _listen(self) -> None:
        delay = 0.1
        first = True
        while True:
            try:
                for msg in self._api.events(tasks=[self.task_id], results=True, ping=1.0):
                    if self._closed.is_set():
                        return
                    if msg.get("hello"):
                        if not first:
                            self._resync()
                        first = False
                        self._listening.set()
                        delay = 0.1
                    elif "jobs" in msg:
                        self._on_jobs(msg["jobs"])
                    if msg.get("overflow") or "shutdown" in msg:
                        break
            except Exception as exc:
                self._stream_error = exc
            if self._closed.is_set():
                return
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _on_jobs(self, events: list[dict]) -> None:
        last: dict[int, dict] = {}
        for ev in events:  # the last word on each logical job counts
            last[ev["index"]] = ev
        with self._lock:
            todo = []
            for index, ev in last.items():
                fut = self._futures.get(index)
                if fut is None:
                    self._early[index] = ev
                else:
                    todo.append((fut, ev))
        for fut, ev in todo:
            self._apply(fut, ev)

    def _apply(self, fut: PandaFuture, ev: dict) -> None:
        state = ev["state"]
        fut.site = ev.get("site") or fut.site
        if fut.done():
            return
        if state in ("sent", "starting", "running") and fut.site:
            self._check_environment(fut.site)
        if state in ("starting", "running", "transferring") and _pending(fut):
            fut.set_running_or_notify_cancel()
        elif state == "finished":
            if "result" in ev:
                self._set_result(fut, base64.b64decode(ev["result"]))
            else:
                self._fetch_results([fut])
        elif state in ("failed", "cancelled", "closed"):
            try:
                job = self._api.get(f"/api/jobs/{ev['id']}")
            except ApiError:
                job = {"state": state, "error_category": ev.get("error_category"),
                       "error_message": ev.get("error"), "id": ev["id"]}
            self._set_exception(fut, exception_from_job(job))

    def _set_result(self, fut: PandaFuture, data: bytes) -> None:
        import pickle

        try:
            value = pickle.loads(data)
        except Exception as exc:
            self._set_exception(fut, exc)
            return
        if _pending(fut) and not fut.set_running_or_notify_cancel():
            return
        if not fut.done():
            fut.set_result(value)

    def _set_exception(self, fut: PandaFuture, exc: BaseException) -> None:
        if _pending(fut) and not fut.set_running_or_notify_cancel():
            return
        if not fut.done():
            fut.set_exception(exc)

    def _fetch_results(self, futs: list[PandaFuture]) -> None:
        indices = ",".join(str(f.index) for f in futs)
        rows = self._api.get(f"/api/tasks/{self.task_id}/results", indices=indices)
        by_index = {r["index"]: r for r in rows}
        for f in futs:
            if f.index in by_index:
                self._set_result(f, base64.b64decode(by_index[f.index]["data"]))

    def _resync(self) -> None:
        """After a lost stream: ask the server where every pending job stands."""
        jobs = self._api.get(f"/api/tasks/{self.task_id}/jobs")
        with self._lock:
            pending = {i: f for i, f in self._futures.items() if not f.done()}
        for job in jobs:
            fut = pending.get(job["job_index"])
            if fut is not None:
                self._apply(fut, {"id": job["id"], "index": job["job_index"],
                                  "state": job["state"], "site": job["site"]})

    # ---- the task's lease ---------------------------------------------------------------
    def _start_lease(self, lease_s: float | None) -> None:
        """Renew the task's lease in the background until the executor is closed."""
        if not lease_s:  # a server that grants no leases
            return
        self._lease = threading.Thread(target=self._renew_lease, args=(float(lease_s),),
                                       daemon=True, name=f"panda-lease-{self.task_id}")
        self._lease.start()

    def _renew_lease(self, lease_s: float) -> None:
        """Renew every third of the lease; an unreachable server (restarting) is tried
        again at the next turn, a closed task ends the renewals."""
        while not self._closed.wait(renew_every(lease_s)):
            try:
                lease_s = float(self._api.post(f"/api/tasks/{self.task_id}/lease")["lease_s"])
            except ApiError as exc:
                if exc.status in (404, 409):
                    if not self._shutdown:  # not our own close: say so once
                        self.lease_error = str(exc.detail)
                        log.warning("%s; new calls to this executor will fail", exc.detail)
                    return
                log.warning("could not renew the lease of task %s: %s", self.task_id, exc)
            except Exception as exc:
                if self._closed.is_set():
                    return
                log.debug("could not renew the lease of task %s: %s", self.task_id, exc)

    # ---- cancel, environment ---------------------------------------------------------------
    def _kill(self, futures: list[PandaFuture]) -> None:
        ids = [f.job_id for f in futures if f.job_id is not None]
        if ids:
            try:
                self._api.post("/api/jobs/kill", {"ids": ids})
            except ApiError as exc:
                log.warning("could not kill jobs %s: %s", ids[:5], exc)

    def _check_environment(self, site: str) -> None:
        if site in self._checked_sites:
            return
        self._checked_sites.add(site)
        mine = self._options["client"]
        try:
            pilots = self._api.get("/api/pilots", site=site, state="running")
        except ApiError:
            return
        for p in pilots:
            theirs = p.get("info", {}).get("environment") or {}
            diff = {k: (mine.get(k), theirs.get(k)) for k in mine
                    if k in theirs and theirs.get(k) != mine.get(k)}
            if diff:
                text = ", ".join(f"{k} {a} here vs {b} at {site}" for k, (a, b) in diff.items())
                msg = (f"site {site} runs a different environment: {text}; payloads may "
                       "fail to unpickle or behave differently")
                self.environment_warnings.append(msg)
                warnings.warn(msg, EnvironmentMismatch, stacklevel=2)
                return

