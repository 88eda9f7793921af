"""The pilot: pulls jobs from the server (late binding), runs them, heartbeats, reports.

One loop, in this order: acquire jobs in bulk, start them on idle workers, wait for
one to finish, report in bulk.  The control plane's cost per job is what limits
throughput, so acquisitions grow with how short jobs are, and reports are batched
(but sent at once when nothing else is waiting, so a lone job is never held back).
Reports due when the pilot asks for jobs go in that acquisition (:meth:`Pilot._acquire`,
applied by the server before it hands jobs out): a pilot asks for a job when a slot
frees, which is when it has a report to send, and one request does for both.

How far ahead a pilot acquires (:func:`jobs_wanted`): PanDA's late binding says a job is
bound to a pilot only when the pilot can run it, and every job held in a queue behind a
running one is a job another, idle, pilot cannot take at the end of a task.  Waiting for
a slot to be free before asking, though, leaves the slot idle for a round trip per job
(a tenth of a 0.1 s analysis job).  So a slot asks for its next job just in time: once
its job has run for its expected duration (the mean of the pilot's last jobs) less twice
the measured acquisition round trip, the acquisition goes out while the job still runs.
Only jobs shorter than ``fill_seconds`` are queued deeper, ``fill_seconds`` of work per
slot, which bounds what a pilot holds back at a task's end.

Jobs shorter than :data:`AHEAD_S` pay a visible share of their time for the acquisition
itself (an HTTP request and a transaction each).  For them a pilot also asks for as many
``extra`` jobs to hold ahead, which the server gives only while the site keeps enough
activated jobs for its other pilots (``panda_lab.store.rows.jobs.spare``): half the
acquisitions in the bulk of a task, one job at a time at its end.

Expected durations are means of measured jobs, so a pilot asks ahead (just in time,
to fill a queue, or extra) only behind jobs of tasks a job of which it has run, and
asks nothing for a slot whose job overran (:data:`OVERRUN_FACTOR`): such a job may run
for any time, and a job asked for behind it would wait for it while another pilot could
run it (a 20-s first job held a short job behind it when the first job was guessed at
1 s; pilots coming from 0.02-s jobs filled their queues with a new task's 2-s jobs).
An idle pilot asks for one job a slot.  What was asked for before an overrun still
waits for it.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_any
from pathlib import Path

from panda_lab import reads
from panda_lab.http import ApiClient, ApiError, ServerUnreachable
from panda_lab.model import JobState
from panda_lab.output import OUTPUT_LIMIT, Capture, split_tail
from panda_lab.payload import INLINE_LIMIT, environment
from panda_lab.pilot.cores import POLL_S, CoreSlots
from panda_lab.pilot.usage import PilotMeter
from panda_lab.pilot.worker import LOCAL_ENDPOINT, Output, Worker
from panda_lab.text import MESSAGE_LIMIT, clean_error, clean_obj, clip

log = logging.getLogger("panda_lab.pilot")

#: Seconds between two readings of the pilot's memory and CPU.
USAGE_INTERVAL = 1.0
#: Seconds a stopping pilot (SIGTERM, SIGINT) keeps retrying a server that does not
#: answer, its last reports included.
STOP_RETRY_S = 5.0
#: Jobs shorter than this (seconds, the pilot's measured mean) are asked for with as
#: many extra to hold ahead (see the module's docstring).
AHEAD_S = 1.0
#: Tasks a pilot keeps something of: their common functions (:attr:`Pilot.commons`) and
#: whether a job of theirs ended here (:attr:`Pilot.measured`), the least recently used
#: dropped first (:func:`_keep`).
COMMONS_FETCHED = 64
#: A busy slot whose job has run this many times the pilot's mean job time, and at least
#: :data:`OVERRUN_S` seconds past it, is asked no job for (:meth:`Pilot._overran`).
OVERRUN_FACTOR = 2.0
OVERRUN_S = 1.0


@dataclass
class PilotOptions:
    """How a pilot runs: the ``server`` URL, the ``site`` it serves, its pilot ``token``,
    and ``slots`` jobs at a time (one worker process each).  Durations are seconds."""

    server: str
    site: str
    token: str
    slots: int = 1
    #: Exit after this many jobs (0: no limit); a batch allocation's ``jobs_per_pilot``.
    max_jobs: int = 0
    #: Exit after this long without work (0: never).
    idle_exit: float = 0.0
    #: Seconds this pilot's allocation lasts (0: unlimited).  It takes no job it could not
    #: finish before then (drain, not kill), judged by the jobs' measured duration.
    walltime: float = 0.0
    #: Give up when the server cannot be reached for this long.
    server_lost_timeout: float = 300.0
    #: Seconds of work to hold per slot when jobs are shorter than that, from the
    #: measured job duration; longer jobs are acquired one at a time, just in time.
    fill_seconds: float = 0.1
    #: Most jobs per acquisition, and most job updates per report.
    max_batch: int = 200
    #: Longest wait before finished jobs are reported while others still run; a task's
    #: first job to end on this pilot is reported at once (its first partial result).
    flush_interval: float = 0.5
    #: Seconds an idle pilot's acquisition waits at the server for work (capped by the
    #: heartbeat interval, so the wait also keeps the pilot alive).
    long_poll: float = 5.0
    #: Payloads that run at once on this machine, over every pilot given the same
    #: ``cores_dir`` (0: no limit); see :mod:`panda_lab.pilot.cores`.
    shared_cores: int = 0
    cores_dir: str = ""


class Pilot:
    """A pilot in PanDA's sense: it registers with the server for one site, then pulls
    jobs (late binding: a job is bound to a pilot only when the pilot asks), runs each
    in a worker process, heartbeats, and reports the jobs' updates in bulk.  Requests
    are retried for ``server_lost_timeout`` seconds while the server is unreachable."""

    def __init__(self, opts: PilotOptions) -> None:
        self.opts = opts
        self.api = ApiClient(opts.server, opts.token, retry_for=opts.server_lost_timeout)
        self.workers = [Worker() for _ in range(opts.slots)]
        self.queue: deque[dict] = deque()
        self.pending: dict[int, dict] = {}   # job id -> latest update not yet reported
        self.pending_since = 0.0
        #: Each recent task's common function as an acquisition carried it or as
        #: fetched (None: it has none), the least recently used dropped past
        #: :data:`COMMONS_FETCHED` (fetched again if needed): a pilot lives through
        #: many tasks.
        self.commons: OrderedDict[int, bytes | None] = OrderedDict()
        #: Tasks a job of which ended here (measured), the most recent last, as many as
        #: :data:`COMMONS_FETCHED`: only behind their jobs does the pilot ask ahead.
        self.measured: OrderedDict[int, None] = OrderedDict()
        #: The last tasks a job of which ended here (see ``flush_interval``).
        self.tasks_ended: deque[int] = deque(maxlen=64)
        self.stopping = False
        self.done = 0
        #: Whether acquisitions name the common parts the pilot holds, so that their
        #: answers carry the others (the server says so at registration).
        self.says_commons = False
        self.mean_duration = 1.0
        #: Seconds an acquisition that does not wait takes, measured (mean of the last).
        self.round_trip = 0.01
        #: Ids of running jobs for whose slot a just-in-time acquisition found nothing:
        #: not asked again, so an empty queue is not polled in a loop.
        self.asked_ahead: set[int] = set()
        self.pilot_id = 0
        self.heartbeat_interval = 5.0
        self.last_contact = 0.0
        self.idle_since = time.monotonic()
        self.started = time.monotonic()
        #: The pilot's and its workers' memory and CPU, sent with reports and heartbeats.
        self.meter = PilotMeter()
        self.usage_at = float("-inf")
        self.usage: dict[str, float] | None = None
        self.draining = False
        #: Where the workers spool each job's output (see :mod:`panda_lab.output`).
        self.spool = Path(tempfile.mkdtemp(prefix="panda-lab-pilot-"))
        #: The machine's cores shared with other local pilots, when it is limited.
        self.cores = (CoreSlots(opts.cores_dir, opts.shared_cores)
                      if opts.shared_cores else None)
        #: A job waits in the queue for a core another pilot holds.
        self.core_blocked = False
        #: The client's transport failures before the last acquisition was sent.
        self.errors_seen = 0

    # ---- life cycle -------------------------------------------------------------------
    def register(self) -> None:
        """Register with the server (site, host, pid, slots, the environment's versions
        and the batch allocation's ``SLURM_JOB_ID``); keeps the pilot id and heartbeat
        interval (seconds) the server gives, and the site's storage endpoint for the
        workers.  Raises :class:`~panda_lab.http.ApiError` when the server refuses (400
        for a site the server does not have, 401 for a wrong token, 403 for a token
        that is not a pilot's) and
        :class:`~panda_lab.http.ServerUnreachable` after ``server_lost_timeout``."""
        reply = self.api.post("/api/pilot/register", {
            "site": self.opts.site, "host": socket.gethostname(), "pid": os.getpid(),
            "slots": self.opts.slots, "info": {
                "environment": environment(),
                # The batch system's id of the allocation this pilot runs in, if any.
                "batch_id": os.environ.get("SLURM_JOB_ID"),
            }})
        self.pilot_id = reply["pilot"]
        self.heartbeat_interval = float(reply["heartbeat_interval"])
        if reply.get("endpoint"):
            # An analysis job reads the replicas at this site's own endpoint first.
            for w in self.workers:
                w.set_env({LOCAL_ENDPOINT: reply["endpoint"]})
        if reply.get("cache"):
            # The site's stage-in cache, for the jobs told to stage their input in.
            for w in self.workers:
                w.set_env({reads.CACHE_DIR: str(reply["cache"]["dir"]),
                           reads.CACHE_BYTES: str(int(reply["cache"]["bytes"]))})
        # a server that carries common parts in its answers says so; an older one would
        # refuse an acquisition naming them (its requests are strict)
        self.says_commons = bool(reply.get("carries_commons"))
        self.last_contact = time.monotonic()
        log.info("pilot %d registered at site %s", self.pilot_id, self.opts.site)

    def run(self) -> int:
        """Run until stopped; returns the process exit code.

        Stops on SIGTERM or SIGINT (drain: the jobs it holds are finished and reported),
        after ``max_jobs`` jobs, after ``idle_exit`` seconds without work, or when its
        ``walltime`` leaves no room for another job.  Returns 0 after a clean stop, 2
        when the server refused a request (:class:`~panda_lab.http.ApiError`: an
        unknown site, a wrong token...), 3 when the server stayed unreachable for
        ``server_lost_timeout`` seconds; the ``panda-lab`` CLI's ``EXIT_USAGE`` and
        ``EXIT_NO_SERVER``.  Installs SIGTERM/SIGINT handlers, so it runs in the main
        thread; the workers and the spool directory are gone when it returns."""
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        for w in self.workers:
            w.ensure(ahead=True)  # before the first job: its latency matters
        try:
            self.register()
            while not self.stopping:
                self._acquire()
                self._start_jobs()
                self._collect()
                self._maybe_flush()
                self._maybe_heartbeat()
                if self._should_exit():
                    break
            self._drain()
            return 0
        except ServerUnreachable as exc:
            log.error("%s; giving up", exc)
            return 3
        except ApiError as exc:
            log.error("server refused: %s", exc)
            return 2
        finally:
            for w in self.workers:
                w.close()
            if self.cores is not None:
                self.cores.close()
            shutil.rmtree(self.spool, ignore_errors=True)

    def _on_term(self, signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        self.stopping = True
        # a request retrying for a server that does not answer gives up within
        # STOP_RETRY_S, and so does the drain's last report: without, a stop waited out
        # server_lost_timeout (5 minutes by default)
        self.api.retry_until = time.monotonic() + STOP_RETRY_S

    def _should_exit(self) -> bool:
        if self.opts.max_jobs and self.done >= self.opts.max_jobs:
            return True
        busy = self.queue or any(w.busy for w in self.workers)
        if self.draining and not busy:
            log.info("walltime nearly spent: drained, exiting after %d job(s)", self.done)
            return True
        if busy:
            self.idle_since = time.monotonic()
            return False
        idle_for = time.monotonic() - self.idle_since
        return bool(self.opts.idle_exit) and idle_for > self.opts.idle_exit

    def _drain(self) -> None:
        """Hand back what this pilot holds, so it is retried at once rather than after a
        heartbeat timeout, then say goodbye."""
        for w in self.workers:
            if w.busy:
                job = w.job
                w.kill()
                self._report_failed(job, "system", "pilot stopped while the job ran",
                                    output=True)
        while self.queue:
            self._report_failed(self.queue.popleft(), "system", "pilot stopped before the job ran",
                                unstarted=True)
        try:
            self._flush(retry_for=min(5.0, self.opts.server_lost_timeout))
            if self.pilot_id:
                self.api.post("/api/pilot/end", {"pilot": self.pilot_id}, retry_for=2.0)
        except (ServerUnreachable, ApiError) as exc:
            log.warning("could not report on exit: %s", exc)

    # ---- the loop ------------------------------------------------------------------------
    def _left(self) -> float:
        return self.opts.walltime - (time.monotonic() - self.started)

    def _capacity(self) -> int:
        if self.opts.walltime and self._left() < 1.5 * self.mean_duration + 1.0:
            self.draining = True  # a new job would likely not finish in time
            return 0
        idle = sum(not w.busy for w in self.workers)
        if self.stopping or (self.opts.max_jobs and self.done + len(self.queue) + self._running()
                             >= self.opts.max_jobs):
            return 0
        soon = len(self._ending_soon())
        # a slot whose job overran, or of a task not measured here, is no slot to fill:
        # its job may run for any time yet
        unknown = {id(w) for w in self._overran() + self._unmeasured()}
        slots = self.opts.slots - len(unknown)
        # a queue is filled ahead only by the time of jobs running now, of tasks measured
        # here: an idle pilot's next jobs may be of any task, of any length
        mean = (self.mean_duration if self._running() > len(unknown)
                else max(self.mean_duration, self.opts.fill_seconds))
        want = jobs_wanted(slots, idle, soon, len(self.queue), mean,
                           self.opts.fill_seconds, self.opts.max_batch)
        if self.opts.max_jobs:
            want = min(want, self.opts.max_jobs - self.done - len(self.queue) - self._running())
        return max(0, min(want, self.opts.max_batch))

    def _running(self) -> int:
        return sum(w.busy for w in self.workers)

    def _lead(self) -> float:
        """Seconds before a job's expected end that its slot's next job is asked for."""
        return max(0.02, 2 * self.round_trip)

    def _ending_soon(self) -> list[Worker]:
        """Busy workers whose job is expected to end within :meth:`_lead` seconds and for
        whose slot no acquisition has come back empty yet; none whose task the pilot has
        not measured (:meth:`_unmeasured`) or whose job overran (:meth:`_overran`): such a
        job may run for any time, and what was asked for behind it would wait."""
        due = time.time() + self._lead() - self.mean_duration
        unknown = self._overran() + self._unmeasured()
        return [w for w in self.workers if w.busy and w.started_at <= due
                and w.job["id"] not in self.asked_ahead and w not in unknown]

    def _unmeasured(self) -> list[Worker]:
        """Busy workers whose job is of a task no job of which ended here yet: its time
        is not guessed from other tasks' (a 20-s job after 0.02-s ones)."""
        return [w for w in self.workers if w.busy and w.job["task"] not in self.measured]

    def _overran(self) -> list[Worker]:
        """Busy workers whose job has run :data:`OVERRUN_FACTOR` times the mean job time
        and :data:`OVERRUN_S` past it: a job asked for behind one of them would wait for
        a job of unknown length (a long one after short ones filled the queue behind it,
        ``fill_seconds`` over a mean of 0.02 s: four jobs), so none is."""
        late = time.time() - max(OVERRUN_FACTOR * self.mean_duration,
                                 self.mean_duration + OVERRUN_S)
        return [w for w in self.workers if w.busy and w.started_at < late]

    def _acquire(self) -> None:
        if self.queue:
            return
        n = self._capacity()
        if n <= 0:
            return
        idle = not any(w.busy for w in self.workers)
        # A long poll shorter than the heartbeat interval keeps an idle pilot alive.
        wait = min(self.opts.long_poll, self.heartbeat_interval) if idle else 0.0
        ahead = [w.job["id"] for w in self._ending_soon()]
        t0 = time.monotonic()
        # the reports waiting to go ride with the acquisition (applied first): the job
        # that freed the slot is reported in the request that fills it
        reports = list(self.pending.values()) if self._flush_due() else []
        body = {"pilot": self.pilot_id, "site": self.opts.site, "n": n, "wait": wait,
                "held": self._held(reporting=bool(reports))}
        if self.says_commons:  # the parts it holds; the answer carries the others
            body["commons"] = [t for t, c in self.commons.items() if c is not None]
        if reports:
            body["updates"] = reports
            body["usage"] = self._usage()
        extra = self._extra(n)
        if extra:
            body["extra"] = extra
        if self.api.transport_errors != self.errors_seen:
            body["lost_check"] = True  # an answer may have been lost: see PilotAcquire
        errors = self.api.transport_errors
        try:
            reply = self.api.post("/api/pilot/acquire", body, timeout=wait + 30)
        except ApiError:
            if not reports:
                raise
            self._flush()  # the reports alone, as /update takes and refuses them
            return  # and the acquisition again, without them, at the next pass
        self.errors_seen = errors  # those met during this call: checked at the next one
        self.last_contact = time.monotonic()
        if not wait:
            self.round_trip = 0.8 * self.round_trip + 0.2 * (self.last_contact - t0)
        if reports:
            self._reported(reply, [r["id"] for r in reports])
        if not reply["jobs"]:
            self.asked_ahead.update(ahead)
        for task_id, common in reply.get("commons", {}).items():
            _keep(self.commons, int(task_id), base64.b64decode(common))
        for job in reply["jobs"]:
            job["payload"] = base64.b64decode(job["payload"])
            self.queue.append(job)

    def _extra(self, n: int) -> int:
        """Jobs to ask for beyond ``n``, to hold ahead: as many as ``n`` when the pilot's
        jobs are shorter than :data:`AHEAD_S` and every job running is of a task measured
        here (so never for an idle pilot, nor behind a task's first job here),
        within ``max_batch``, ``max_jobs`` and a walltime that leaves room to run them."""
        busy = [w for w in self.workers if w.busy]
        if (not busy or self._unmeasured() or self.mean_duration >= AHEAD_S or self.stopping
                or self.draining):
            return 0  # only behind jobs of tasks measured here
        extra = min(n, self.opts.max_batch - n)
        if self.opts.max_jobs:
            extra = min(extra, self.opts.max_jobs - self.done - len(self.queue)
                        - self._running() - n)
        if self.opts.walltime and self._left() < 1.5 * self.mean_duration * (
                self._running() + n + extra) + 1.0:
            return 0
        return max(0, extra)

    def _common(self, task_id: int) -> bytes | None:
        if task_id in self.commons:
            self.commons.move_to_end(task_id)
            return self.commons[task_id]
        try:
            common = self.api.request("GET", f"/api/pilot/tasks/{task_id}/common", raw=True)
        except ApiError:
            common = None
        _keep(self.commons, task_id, common)
        return common

    def _start_jobs(self) -> None:
        if self.draining:
            while self.queue:  # they would not finish in time: back to the server
                self._report_failed(self.queue.popleft(), "system",
                                    "handed back: the pilot's walltime is nearly spent",
                                    unstarted=True)
        self._give_back_cores()
        self.core_blocked = False
        spare = self.cores.held - self._running() if self.cores is not None else 0
        for w in self.workers:
            if w.busy or not self.queue:
                continue
            if spare > 0:
                spare -= 1  # a core kept from the job before, for its turn
            elif self.cores is not None and not self.cores.take():
                self.core_blocked = True  # queued for a core: rung, or looks in POLL_S
                break
            job = self.queue.popleft()
            common = self._common(job["task"]) if job.get("common") else None
            w.run(job, common, time.time(), self._spool_files(job))
            self._set_pending(job, JobState.RUNNING, started_at=w.started_at)

    def _give_back_cores(self) -> None:
        """A core whose job ended is kept for the next queued job until its turn is over
        and another pilot waits; then, or with nothing queued, it goes back, to be taken
        again at once unless another pilot has waited longer (turns, see
        :mod:`panda_lab.pilot.cores`).  No queued job, no place in the queue."""
        if self.cores is None:
            return
        spare = self.cores.held - self._running()
        keep = min(spare, len(self.queue))
        if keep and self.cores.turn_over():
            keep = 0
        for _ in range(spare - keep):
            self.cores.give()
        if not self.queue:
            self.cores.leave()
            if not self._running():
                self.cores.forget()  # nothing left to run: its next work starts even

    def _collect(self) -> None:
        busy = [w for w in self.workers if w.busy]
        bell = [self.cores.bell] if self.core_blocked and self.cores is not None else []
        if not busy:
            if bell and wait_any(bell, timeout=POLL_S):
                self.cores.hear()
            return
        now = time.time()
        timeout = self.heartbeat_interval
        if self.pending:
            timeout = min(timeout, max(0.0, self.pending_since + self.opts.flush_interval
                                       - time.monotonic()))
        if self.queue and any(not w.busy for w in self.workers):
            timeout = min(timeout, POLL_S) if self.core_blocked else 0.0
        for w in busy:
            wt = w.job.get("walltime_s") or 0.0
            if wt:
                timeout = min(timeout, max(0.0, w.started_at + wt - now))
            if not self.queue and w.job["id"] not in self.asked_ahead:
                # Wake when its next job is due to be asked for (see jobs_wanted).
                due = w.started_at + self.mean_duration - self._lead() - now
                if due > 0:
                    timeout = min(timeout, due)
        ready = wait_any([w.conn for w in busy] + bell, timeout=timeout)
        if bell and bell[0] in ready:
            self.cores.hear()  # a core was given back for this pilot: take it next
        for w in busy:
            if w.conn in ready:
                job, outcome = w.receive()
                if isinstance(outcome, Output):  # still running: its output so far
                    self._set_pending(job, JobState.RUNNING, stdout=outcome.stdout or None,
                                      stderr=outcome.stderr or None)
                else:
                    self._finish(job, outcome, w)
                    self._first_of_task(job)
            elif w.job.get("walltime_s") and time.time() - w.started_at > w.job["walltime_s"]:
                job = w.job
                w.kill()
                self._report_failed(job, "timeout",
                                    f"ran past its walltime of {job['walltime_s']:g} s",
                                    output=True)
        self._give_back_cores()  # before this loop's reports and acquisitions go out

    def _first_of_task(self, job: dict) -> None:
        """The first job of its task to end here is reported at once, not after
        ``flush_interval``: the first partial result is what a user waits for."""
        if job["task"] not in self.tasks_ended:
            self.tasks_ended.append(job["task"])
            self.pending_since = float("-inf")

    def _finish(self, job: dict, outcome, worker: Worker) -> None:
        self.done += 1
        self.asked_ahead.discard(job["id"])
        if outcome is None:
            self._report_failed(job, "system",
                                f"worker process died (exit code {worker.last_exit})",
                                output=True)
            return
        dur = max(outcome.ended_at - outcome.started_at, 1e-5)
        self.mean_duration = 0.8 * self.mean_duration + 0.2 * dur if self.done > 1 else dur
        _keep(self.measured, job["task"], None)
        extra: dict[str, object] = dict(
            self._keep_output(job, {"stdout": outcome.stdout, "stderr": outcome.stderr}))
        if outcome.reads:  # bytes, seconds and requests per endpoint: the links measured
            extra["reads"] = outcome.reads
        if outcome.cache:  # what it staged into, read from and evicted of the site's cache
            extra["cache"] = outcome.cache
        if outcome.events:  # with the payload's seconds: the site's compute rate
            extra["events"] = outcome.events
        extra["seconds"] = round(dur, 6)
        extra["ended_at"] = outcome.ended_at  # its end, not its report's (sent later)
        if worker.cold:  # its speed is not the site's: the server weighs it apart
            extra["cold"] = True
        # the payload's own peak memory and CPU time, measured in its worker process
        extra["peak_rss_mb"] = outcome.peak_rss_mb
        extra["cpu_s"] = outcome.cpu_s
        if outcome.ok:
            data = outcome.result
            if len(data) > INLINE_LIMIT:
                try:
                    ref = self.api.request(
                        "PUT", f"/api/pilot/results/{job['task']}/{job['id']}",
                        content=data)["ref"]
                except ApiError as exc:  # refused (its result store full): not finished
                    log.error("result of job %d not kept: %s", job["id"], exc.text)
                    self._set_pending(job, JobState.FAILED, error={
                        "category": "system", "message": f"result not kept: {exc.text}"},
                        **extra)
                    return
                self._set_pending(job, JobState.FINISHED, result_ref=ref, **extra)
            else:
                self._set_pending(job, JobState.FINISHED, result=base64.b64encode(data).decode(),
                                  **extra)
        else:
            err = clean_error(outcome.error)
            if "exception" in err:
                err["exception"] = base64.b64encode(err["exception"]).decode()
            self._set_pending(job, JobState.FAILED, error=err, **extra)

    def _report_failed(self, job: dict, category: str, message: str,
                       output: bool = False, unstarted: bool = False) -> None:
        """Report ``job`` failed; with ``output``, its worker was killed under it, and
        the output it spooled until then is reported and kept; ``unstarted``: handed back
        without having started (its next attempt does not count against its limit)."""
        extra: dict = self._keep_output(job, None, retry_for=5.0) if output else {}
        if unstarted:
            extra["unstarted"] = True
        else:  # killed, or its worker died: seen now
            extra["ended_at"] = time.time()
        self._set_pending(job, JobState.FAILED, error={"category": category, "message": message},
                          **extra)

    # ---- output ----------------------------------------------------------------------
    def _spool_files(self, job: dict) -> tuple[str, str, int]:
        """Where the worker keeps ``job``'s stdout and stderr, and up to how many
        characters of each (the task's ``output_limit``)."""
        limit = job.get("output_limit") or OUTPUT_LIMIT
        return (str(self.spool / f"{job['id']}.stdout"), str(self.spool / f"{job['id']}.stderr"),
                int(limit))

    def _keep_output(self, job: dict, tails: dict[str, str] | None,
                     retry_for: float | None = None) -> dict[str, str]:
        """The tails to report for a job that ended, after its full output went to the
        server when the tails do not hold it all.  ``tails`` is ``None`` when the worker
        was killed: then the spooled output is all there is, and gives the tails.

        A refused upload is logged and the job reported all the same: output is never
        worth a lost result."""
        out: dict[str, str] = {}
        for stream in ("stdout", "stderr"):
            path = self.spool / f"{job['id']}.{stream}"
            try:
                tail = (tails or {}).get(stream) or ""
                if tails is not None and not split_tail(tail)[1]:
                    if tail:
                        out[stream] = tail  # the tail holds it all
                    continue
                try:
                    full = path.read_text("utf-8", errors="replace")
                except OSError:
                    full = ""
                if tails is None and full:
                    capture = Capture(job["id"])
                    capture.write(full)
                    tail = capture.tail()
                if full and split_tail(tail)[1]:
                    try:
                        self.api.request("PUT", f"/api/pilot/output/{job['task']}/{job['id']}",
                                         params={"stream": stream}, content=full.encode(),
                                         retry_for=retry_for)
                    except ApiError as exc:
                        log.warning("full %s of job %d not kept: %s", stream, job["id"], exc)
                if tail:
                    out[stream] = tail
            finally:
                path.unlink(missing_ok=True)
        return out

    def _set_pending(self, job: dict, state: JobState, **fields) -> None:
        # A job's news is work: ``idle_exit`` counts from the last, not from the last
        # loop that saw a job (a loop held up by a server outage saw none for seconds,
        # and the pilot left with jobs waiting for it).
        self.idle_since = time.monotonic()
        if not self.pending:
            self.pending_since = time.monotonic()
        prev = self.pending.get(job["id"], {})
        upd = {"id": job["id"], "attempt": job["attempt"], "state": state}
        if "started_at" in prev:
            upd["started_at"] = prev["started_at"]
        # Every text a report carries is made valid UTF-8 without NUL here: one bad
        # character must never make a report unsendable (see panda_lab.text).
        upd.update({k: clean_obj(v) for k, v in fields.items() if v is not None})
        self.pending[job["id"]] = upd

    def _usage(self) -> dict[str, float] | None:
        """The pilot's usage (:class:`~panda_lab.pilot.usage.PilotMeter`), read at most
        once a second: reports may go out many times a second."""
        if time.monotonic() - self.usage_at >= USAGE_INTERVAL:
            self.usage = self.meter.read()
            self.usage_at = time.monotonic()
        return self.usage

    def _held(self, reporting: bool = False) -> list[int]:
        """The jobs this pilot holds: queued, running, and (unless ``reporting`` them in
        the same request) ended with their report not yet sent."""
        held = [j["id"] for j in self.queue] + [w.job["id"] for w in self.workers if w.busy]
        if not reporting:
            known = set(held)
            held += [i for i in self.pending if i not in known]
        return held

    def _flush_due(self) -> bool:
        """Whether the pending reports are to go now: nothing running and nothing the
        pilot may start (no job, or no core yet), the oldest waited ``flush_interval``
        (at once for a task's first job here), or a batch is full."""
        if not self.pending:
            return False
        idle = not any(w.busy for w in self.workers) and (not self.queue or self.core_blocked)
        old = time.monotonic() - self.pending_since >= self.opts.flush_interval
        return idle or old or len(self.pending) >= self.opts.max_batch

    def _maybe_flush(self) -> None:
        if not self._flush_due():
            return
        if (not self.queue and not self.stopping and self._capacity() > 0
                and time.monotonic() - self.last_contact < self.heartbeat_interval):
            return  # the acquisition of the loop's next pass carries them
        # (with a heartbeat due, they go first: its answer drops the jobs the server
        # ended, and a report it would drop would never be sent)
        self._flush()

    def _flush(self, retry_for: float | None = None) -> None:
        if not self.pending:
            return
        body = {"pilot": self.pilot_id, "updates": list(self.pending.values()),
                "held": self._held(reporting=True), "usage": self._usage()}
        try:
            reply = self.api.post("/api/pilot/update", body, retry_for=retry_for)
        except ApiError as exc:
            if exc.status == 503:  # still unavailable after retry_for: send them later
                log.warning("report not taken now, %d update(s) kept: %s",
                            len(self.pending), exc)
                return
            if exc.status in (413, 422) and self.pending:
                # Refused for what it carries: one bad update must not lose the others
                # (a batch of finished results dropped for one failure's too long
                # field, the jobs retried as if lost): each goes alone.
                log.warning("report of %d update(s) refused (%s): sent one by one",
                            len(self.pending), exc.text)
                self._report_apart()
                return
            # The server refused the pilot itself: keep running; the watchdog will
            # fail and retry those jobs, which is better than a pilot that dies.
            log.error("report refused, %d update(s) dropped: %s", len(self.pending), exc)
            self.pending.clear()
            return
        self.last_contact = time.monotonic()
        self._reported(reply, list(self.pending))

    def _report_apart(self) -> None:
        """Send the pending reports one at a time, after the server refused them
        together.  One it refuses again goes without what it may carry beyond its state
        (output, reads, cache actions, error details: :func:`_lean`); refused still, a
        final one is replaced by a failure saying why (the job is failed and retried as
        the rules allow, never left to the watchdog), a running one is dropped (its final
        report follows).  Stops, keeping the rest, when the server is unavailable."""
        for job_id, upd in list(self.pending.items()):
            why = ""
            for stage in range(3):  # as it is, lean, then the failure saying why
                attempt = (upd if stage == 0 else _lean(upd) if stage == 1
                           else _refused(upd, why))
                if attempt is None:
                    log.warning("running report of job %d refused, dropped: %s", job_id, why)
                    break
                try:
                    reply = self.api.post("/api/pilot/update", {
                        "pilot": self.pilot_id, "updates": [attempt],
                        "held": self._held(reporting=True)})
                except ApiError as exc:
                    if exc.status == 503:
                        return
                    why = exc.text
                    continue
                self.last_contact = time.monotonic()
                self._reported(reply, [job_id])
                break
            else:
                log.error("report of job %d refused, dropped: %s", job_id, why)
            self.pending.pop(job_id, None)

    def _reported(self, reply: dict, ids: list[int]) -> None:
        """The server took the reports of ``ids`` (``/update``'s reply, or an
        acquisition's that carried them): forget them, and drop what it ended."""
        for i in ids:
            self.pending.pop(i, None)
        ignored = reply.get("ignored") or []
        if ignored:
            log.info("server ignored %d update(s): %s", len(ignored), ignored[:3])
        self._drop(reply.get("drop") or [])

    def _maybe_heartbeat(self) -> None:
        if time.monotonic() - self.last_contact < self.heartbeat_interval:
            return
        reply = self.api.post("/api/pilot/heartbeat", {"pilot": self.pilot_id,
                                                       "held": self._held(),
                                                       "usage": self._usage()})
        self.last_contact = time.monotonic()
        self._drop(reply["drop"])

    def _drop(self, ids: list[int]) -> None:
        """Forget or kill jobs the server has ended (killed by the user, or given up on)."""
        if not ids:
            return
        gone = set(ids)
        self.queue = deque(j for j in self.queue if j["id"] not in gone)
        for w in self.workers:
            if w.busy and w.job["id"] in gone:
                log.info("killing job %d on request of the server", w.job["id"])
                w.kill()
        for i in gone:
            for stream in ("stdout", "stderr"):
                (self.spool / f"{i}.{stream}").unlink(missing_ok=True)
        for i in gone:
            self.pending.pop(i, None)


def _lean(update: dict) -> dict:
    """A report without what it may carry beyond the job's state and result: output
    tails, reads, cache actions, and of an error its category and message only."""
    lean = {k: v for k, v in update.items()
            if k not in ("stdout", "stderr", "reads", "cache", "error")}
    if "error" in update:
        err = update["error"]
        lean["error"] = {"category": err.get("category", "system"),
                         "message": str(err.get("message", ""))[:MESSAGE_LIMIT]}
    return lean


def _refused(update: dict, why: str) -> dict | None:
    """What to report of a job whose report the server refused even lean (``why``: its
    answer): for a final state, a system failure saying so (the job retried as the
    rules allow); None for a job still running (its final report is still to come)."""
    if str(update["state"]) not in (str(JobState.FINISHED), str(JobState.FAILED)):
        return None
    return {"id": update["id"], "attempt": update["attempt"], "state": JobState.FAILED,
            "error": {"category": "system", "message": clip(
                f"the server refused the pilot's report of this job: {why}", 2000)}}


def _keep(kept: OrderedDict, key: int, value: object) -> None:
    """``kept[key] = value`` as the most recently used, the least recently used dropped
    past :data:`COMMONS_FETCHED`."""
    kept[key] = value
    kept.move_to_end(key)
    while len(kept) > COMMONS_FETCHED:
        kept.popitem(last=False)


def jobs_wanted(slots: int, idle: int, ending_soon: int, queued: int, mean_duration: float,
                fill_seconds: float, max_batch: int) -> int:
    """How many jobs a pilot asks for now (at least 0, at most ``max_batch``).

    ``slots`` workers, ``idle`` of them free, ``ending_soon`` busy ones whose job is
    expected to end within the acquisition round trip (they count as free: their next job
    is asked for just in time), ``queued`` jobs already held but not started;
    ``mean_duration`` and ``fill_seconds`` in seconds.  A slot wants one job, plus, when
    jobs are shorter than ``fill_seconds``, as many queued as fill ``fill_seconds``: so a
    pilot holds back at most ``fill_seconds`` of work per slot that an idle pilot could
    have run (PanDA's late binding), and no more than one short job's worth of round trip
    is ever spent with a slot idle."""
    per_slot = max(1, min(max_batch, int(fill_seconds / max(mean_duration, 1e-4))))
    free = idle + ending_soon
    want = per_slot * slots - queued - (slots - free)
    return max(0, min(want, max_batch))
