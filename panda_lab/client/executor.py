"""``PandaExecutor``: a ``concurrent.futures.Executor`` whose calls run as PanDA jobs.

Every executor owns one task, opened on the first call and closed by ``shutdown``;
each ``submit`` is a job of it (``map`` packs ``chunksize`` calls per job).  Futures
are resolved from the server's event stream, not by polling each job: one listener
thread per executor reads the stream, with small results inline.

Submissions are sent by a sender thread that takes everything queued since its last
request: one call costs one request, 10,000 calls cost a handful.

Each ``submit`` pickles its call whole, then and there: the job runs with what the
function reads (globals, closure cells, defaults, a bound method's instance...) as it
was at submit time, never with a copy taken at an earlier submit.

The ``concurrent.futures`` contract, kept exactly: ``cancel()`` returns True only when
the call will never run (still in the outbox, or its job cancelled by the server in one
compare-and-set before any pilot got it); ``shutdown(wait=True)`` returns once every
future is resolved, and a server that stays unreachable for ``server_lost_timeout``
seconds fails the futures it owes rather than leaving them pending forever.

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

from panda_lab.client.futures import PandaFuture, cancel_now, exception_from_job
from panda_lab.http import ApiClient, ApiError, ServerUnreachable, idempotent
from panda_lab.model import JOB_ACTIVE, JOB_UNSUCCESSFUL, JobState, PilotState
from panda_lab.model.lease import renew_every
from panda_lab.payload import dumps_call, dumps_fn, environment, workdir

if TYPE_CHECKING:  # pragma: no cover
    from panda_lab.client.session import Lab

log = logging.getLogger("panda_lab.executor")

#: Jobs sent in one request at most.
SEND_BATCH = 5000
#: Job states in which a pilot has taken the job but not yet sent its output back: the
#: site's pilots' environment is compared with the client's (once per site) then.
_ENV_CHECKED = JOB_ACTIVE - {JobState.TRANSFERRING}
#: Job states in which the job's code has started: its future becomes running
#: (``concurrent.futures``: ``set_running_or_notify_cancel``).
_STARTED = JOB_ACTIVE - {JobState.SENT}


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
    ``server_lost_timeout`` (seconds): when the server stays unreachable that long, the
    futures still waiting for it fail with :class:`panda_lab.http.ServerUnreachable`.
    """

    def __init__(self, lab: Lab, *, site: str | list[str] = "ANY", cores: int = 1,
                 memory: int = 0, walltime: float = 0.0, retries: int = 2, priority: int = 0,
                 name: str | None = None, max_workers: int | None = None,
                 server_lost_timeout: float = 60.0) -> None:
        self._lab = lab
        self._api = ApiClient(lab.url, lab.api.token, find=getattr(lab.api, "find", None),
                              fix=getattr(lab.api, "fix", ""))
        self.site = site
        self._check_sites(site)
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
        #: Notified when a batch's request has ended (its futures are posted or failed).
        self._posted = threading.Condition(self._lock)
        self.server_lost_timeout = server_lost_timeout
        self._shutdown = False
        self.task_id: int | None = None
        self._futures: dict[int, PandaFuture] = {}
        self._early: dict[int, dict] = {}
        self._outbox: list[tuple[PandaFuture, bytes]] = []
        # the batch being posted: in neither _outbox nor _futures until the reply comes
        self._inflight: list[PandaFuture] = []
        self._checked_sites: set[str] = set()
        self.environment_warnings: list[str] = []
        self._listener: threading.Thread | None = None
        self._sender: threading.Thread | None = None
        self._closer: threading.Thread | None = None
        self._in_shutdown = threading.local()
        self._listening = threading.Event()
        self._stream_error: BaseException | None = None
        self._closed = threading.Event()
        self._lease: threading.Thread | None = None
        #: Why the task's lease could not be renewed (it was closed meanwhile), if so.
        self.lease_error: str | None = None

    def _check_sites(self, site: str | list[str]) -> None:
        """Refuse at once a site the server does not know (``ValueError`` naming it and
        the known ones), rather than at the first ``result()`` with an empty task left
        behind.  Skipped when the server cannot be asked now (it says so at submit)."""
        wanted = [site] if isinstance(site, str) else list(site)
        wanted = [s for s in wanted if s != "ANY"]
        if not wanted:
            return
        try:
            known = sorted(s["name"] for s in self._api.get("/api/sites"))
        except (ApiError, ServerUnreachable):
            return
        unknown = [s for s in wanted if s not in known]
        if unknown:
            raise ValueError(f"unknown site {', '.join(map(repr, unknown))}; known sites: "
                             f"{', '.join(known)}")

    def _capacity(self) -> int:
        try:
            return sum(p["slots"] for p in self._lab.pilots() if p["state"] == PilotState.RUNNING)
        except Exception:
            return 1

    def __repr__(self) -> str:
        return (f"<PandaExecutor task={self.task_id} name={self.name!r} site={self.site!r} "
                f"pending={sum(not f.done() for f in self._futures.values())}>")

    # ---- the Executor contract ------------------------------------------------------
    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> PandaFuture:
        """Schedule ``fn(*args, **kwargs)`` as one job; return its :class:`PandaFuture`.

        As ``concurrent.futures.Executor.submit``: raises :class:`RuntimeError` after
        :meth:`shutdown`.  Raises :class:`panda_lab.payload.PayloadError` (a
        ``TypeError``) at once when the call cannot be pickled; its message names what.
        """
        # The whole call, pickled now: what it reads is captured as it is at this submit.
        return self._enqueue(dumps_call(fn, args, kwargs))  # PayloadError here, at once

    def _enqueue(self, payload: bytes) -> PandaFuture:
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
        """Like the standard ``map``: results in order, lazily; ``chunksize`` calls per job.

        The function is captured once, when ``map`` is called (every job of it gets a
        copy of those bytes, unpickled afresh on the pilot); each job's arguments are
        pickled with it.  As the standard one, it cancels the calls not yet run when its
        iterator is closed or a result raises (``TimeoutError`` included), here in one
        request for all.

        ``timeout`` is in seconds from this call.  Raises :class:`ValueError` when
        ``chunksize`` < 1, :class:`panda_lab.payload.PayloadError` when ``fn`` cannot be
        pickled, :class:`RuntimeError` after :meth:`shutdown`; the iterator raises
        :class:`TimeoutError` and each call's own exception as the standard one does."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end = None if timeout is None else time.monotonic() + timeout
        call = dumps_fn(partial(_process_chunk, fn))  # PayloadError here, at once
        fs = [self._enqueue(dumps_call(call, (chunk,)))
              for chunk in _chunks(iterables, chunksize)]

        def results() -> Iterator:
            try:
                fs.reverse()
                while fs:
                    fut = fs.pop()
                    try:
                        yield fut.result(None if end is None else end - time.monotonic())
                    except BaseException:
                        fs.append(fut)
                        raise
            finally:
                self._cancel_many(fs)

        return itertools.chain.from_iterable(results())

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """``Executor.shutdown``: no new calls; with ``cancel_futures``, every call that
        no pilot got yet is cancelled (one request); with ``wait``, return once every
        future is resolved.  Any number of calls, from any thread: from a done-callback
        run by this executor's own threads (which resolve the futures) it cannot wait,
        and returns at once as with ``wait=False``."""
        with self._lock:
            self._shutdown = True
            self._wake.notify_all()
            everything = [f for f, _ in self._outbox] + self._inflight
            everything += self._futures.values()
            if self._closer is None:
                self._closer = threading.Thread(target=self._finish, daemon=True,
                                                name="panda-close")
                self._closer.start()
            closer = self._closer
        # A done-callback that calls shutdown again from inside this call (cancelling
        # runs callbacks) must not wait for futures this call has yet to cancel.
        nested = getattr(self._in_shutdown, "active", False)
        self._in_shutdown.active = True
        try:
            if cancel_futures:
                self._cancel_many(everything)
            own = threading.current_thread() in (self._listener, self._sender, closer)
            if wait and not own and not nested:
                closer.join()
        finally:
            self._in_shutdown.active = nested

    def _finish(self) -> None:
        """Wait for every future, then close the task so it can end (the closer thread)."""
        while True:
            with self._lock:
                outstanding = [f for f, _ in self._outbox] + self._inflight
                outstanding += self._futures.values()
                outstanding = [f for f in outstanding if not f.done()]
            if not outstanding:
                break
            # ``wait`` counts a cancelled future only once notified: look again now and then.
            wait_futures(outstanding, timeout=1.0)
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
        # Every future is resolved: the listener has nothing left to do.  It sees the flag
        # at its next message (a ping within a second) and ends; waiting for that here
        # only made shutdown take up to a second longer.
        self._closed.set()
        self._api.close()

    # ---- starting: a task, a listener, a sender ----------------------------------------
    def _ensure_started(self) -> None:
        """Open the task and start listening before the first job exists (called with
        the lock held), so no event of ours can be missed."""
        if self.task_id is not None:
            return
        reply = self._api.post("/api/tasks", {
            "name": self.name, "site": self.site, "jobs": [], "open": True,
            "options": {**self._options, "workdir": workdir()}},
            headers=idempotent(), retry_for=self.server_lost_timeout)
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

    # ---- sender ---------------------------------------------------------------------------
    def _send(self) -> None:
        while True:
            with self._lock:
                while not self._outbox and not self._shutdown:
                    self._wake.wait()
                if not self._outbox:
                    return
                batch, self._outbox = self._outbox[:SEND_BATCH], self._outbox[SEND_BATCH:]
                batch = [(f, p) for f, p in batch if f._stage == "outbox"]  # not cancelled
                for f, _ in batch:
                    f._stage = "posting"
                self._inflight = [f for f, _ in batch]
            if not batch:
                continue
            jobs = [{"payload": base64.b64encode(p).decode()} for _, p in batch]
            try:
                # one key per batch and its retries: a lost answer adds no job twice
                reply = self._api.post(f"/api/tasks/{self.task_id}/jobs", {"jobs": jobs},
                                       headers=idempotent(),
                                       retry_for=self.server_lost_timeout)
                placed = list(zip(reply["jobs"], reply["indices"], strict=True))
                if len(placed) != len(batch):
                    raise ApiError(500, f"{len(placed)} jobs made of {len(batch)} sent",
                                   "POST", f"/api/tasks/{self.task_id}/jobs")
            except Exception as exc:  # nothing of this batch will run: say so to each
                for f, _ in batch:
                    self._set_exception(f, exc)
                with self._lock:
                    for f, _ in batch:
                        f._stage = "failed"
                    self._inflight = []
                    self._posted.notify_all()
                continue
            early = []
            with self._lock:
                for (f, _), (job_id, index) in zip(batch, placed, strict=True):
                    f.job_id, f.index, f._stage = job_id, index, "posted"
                    self._futures[index] = f
                    ev = self._early.pop(index, None)
                    if ev is not None:
                        early.append((f, ev))
                self._inflight = []
                self._posted.notify_all()
            for f, ev in early:  # outside the lock: resolving runs the done-callbacks
                self._apply(f, ev)

    # ---- listener -------------------------------------------------------------------------
    def _listen(self) -> None:
        delay = 0.1
        first = True
        lost_since: float | None = None
        while True:
            try:
                # a silent stream (pings stopped: a frozen server) counts as lost, too
                for msg in self._api.events(tasks=[self.task_id], results=True, ping=1.0,
                                            read_timeout=30.0):
                    if self._closed.is_set():
                        return
                    if msg.get("hello"):
                        if not first:
                            self._resync()
                        first = False
                        lost_since = None
                        self._listening.set()
                        delay = 0.1
                    elif "jobs" in msg:
                        self._on_jobs(msg["jobs"])
                    if msg.get("overflow") or "shutdown" in msg:
                        break
            except Exception as exc:
                self._stream_error = exc
                self._api.relocate()  # a server restarted elsewhere: listen there
            if self._closed.is_set():
                return
            lost_since = time.monotonic() if lost_since is None else lost_since
            if time.monotonic() - lost_since >= self.server_lost_timeout:
                self._fail_unresolved(ServerUnreachable(
                    f"panda-lab server at {self._api.url} unreachable for "
                    f"{self.server_lost_timeout:g} s (last error: {self._stream_error}); "
                    "this call's outcome is unknown" + (f".\nTo go on: {self._api.fix}"
                                                        if self._api.fix else "")))
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _fail_unresolved(self, exc: BaseException) -> None:
        """The server is gone: fail every future that waits on it, so nothing hangs."""
        with self._lock:
            owed = [f for f in self._futures.values() if not f.done()]
        if owed:
            log.warning("failing %d future(s): %s", len(owed), exc)
        for f in owed:
            self._set_exception(f, exc)

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
        if state in _ENV_CHECKED and fut.site:
            self._check_environment(fut.site)
        if state in _STARTED and _pending(fut):
            fut.set_running_or_notify_cancel()
        elif state == JobState.FINISHED:
            if "result" in ev:
                self._set_result(fut, base64.b64decode(ev["result"]))
            else:
                self._fetch_results([fut])
        elif state in JOB_UNSUCCESSFUL:
            if state == JobState.CANCELLED:
                with self._lock:
                    if fut._cancelling:  # our own cancel request's, or a kill: its reply tells
                        fut._deferred = ev
                        return
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
    def _cancel_many(self, futures: Iterable[PandaFuture]) -> set[PandaFuture]:
        """Cancel what can be, as ``Future.cancel`` on each; returns the futures that are
        now cancelled, which will never run.

        A call still in the outbox is dropped here; one in the request on its way is
        waited for (except by the sender thread itself, which is making that request);
        one on the server is cancelled by one compare-and-set request for all, which
        fails for jobs a pilot already holds.  Running and finished futures are left."""
        futures = list(futures)
        me = threading.current_thread()
        won: set[PandaFuture] = set()
        drop: list[PandaFuture] = []
        ask: list[PandaFuture] = []
        with self._lock:
            while me is not self._sender and any(f._stage == "posting" for f in futures):
                self._posted.wait()
            for f in futures:
                if f.done() or f.running():
                    if f.cancelled():
                        won.add(f)
                elif f._stage == "outbox":
                    f._stage = "dropped"
                    drop.append(f)
                elif f._stage == "dropped":  # another thread is dropping it right now
                    won.add(f)
                elif f._stage == "posted" and not f._cancelling:
                    f._cancelling = True
                    ask.append(f)
        if ask:  # every decision is made before any done-callback runs
            won |= self._cancel_on_server(ask)
        for f in drop:
            cancel_now(f)
            won.add(f)
        return won

    def _cancel_on_server(self, futures: list[PandaFuture]) -> set[PandaFuture]:
        by_index = {f.index: f for f in futures}
        try:
            reply = self._api.post(f"/api/tasks/{self.task_id}/cancel",
                                   {"indices": sorted(by_index)})
            won = {by_index[i] for i in reply["cancelled"] if i in by_index}
        except Exception as exc:  # unknown outcome: not cancelled, as far as we can tell
            log.warning("could not cancel jobs of task %s: %s", self.task_id, exc)
            won = set()
        for f in won:
            cancel_now(f)  # before the flag goes: the "cancelled" event must not fail it
        deferred = []
        with self._lock:
            for f in futures:
                if f not in won and f._deferred is not None:
                    deferred.append((f, f._deferred))  # cancelled by someone else: a kill
                f._cancelling, f._deferred = False, None
        for f, ev in deferred:
            self._apply(f, ev)
        return won

    def _check_environment(self, site: str) -> None:
        if site in self._checked_sites:
            return
        self._checked_sites.add(site)
        mine = self._options["client"]
        try:
            pilots = self._api.get("/api/pilots", site=site, state=PilotState.RUNNING)
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

