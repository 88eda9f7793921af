"""The payload worker: a child process of the pilot that runs jobs one at a time.

The pilot reuses a worker between jobs (imports and caches stay warm) and can kill it
at any moment (walltime, a kill from the server) without harming itself: payloads
never run in the pilot's own process.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

from panda_lab import reads
from panda_lab.output import Capture
from panda_lab.payload import Outcome, job_directory, run_call
from panda_lab.pilot import allocator
from panda_lab.pilot.usage import JobMeter
from panda_lab.resources import READ_CACHE_ENV, read_cache_limit

_CTX = mp.get_context("spawn")

#: The environment variable naming the storage endpoint near the pilot's site.
LOCAL_ENDPOINT = reads.LOCAL_ENDPOINT

#: Seconds between two sends of a running job's output to the pilot.
OUTPUT_INTERVAL = 0.5


@dataclass
class Output:
    """The output tails of a job still running: shown live, not an outcome (each may
    start with a marker line, see :mod:`panda_lab.output`)."""

    stdout: str
    stderr: str


class _OutputTicker(threading.Thread):
    """Sends the running job's output tails to the pilot when they changed, every
    ``OUTPUT_INTERVAL`` s.  One thread per worker, not per job: a no-op job must not
    pay for a thread start."""

    def __init__(self, conn: Connection, lock: threading.Lock) -> None:
        super().__init__(daemon=True, name="panda-output")
        self.conn, self.lock = conn, lock
        self.job: tuple[int, Capture, Capture] | None = None
        self.seen = 0

    def watch(self, job_id: int | None, out: Capture | None = None,
              err: Capture | None = None) -> None:
        with self.lock:
            self.job = (job_id, out, err) if job_id is not None else None  # type: ignore[assignment]
            self.seen = 0

    def run(self) -> None:
        stop = threading.Event()
        while not stop.wait(OUTPUT_INTERVAL):
            with self.lock:
                if self.job is None:
                    continue
                job_id, out, err = self.job
                writes = out.writes + err.writes
                if writes == self.seen:
                    continue
                self.seen = writes
                try:
                    self.conn.send(("out", job_id, out.tail(), err.tail()))
                except OSError:
                    return
                out.flush()  # the spooled output, for the pilot should this worker be killed
                err.flush()


def _captures(job_id: int, spool: tuple[str, str, int] | None) -> tuple[Capture, Capture]:
    """The job's stdout and stderr stand-ins, spooling to the pilot's files if asked."""
    if spool is None:
        return Capture(job_id), Capture(job_id)
    out, err, limit = spool
    return Capture(job_id, out, limit), Capture(job_id, err, limit)


#: Tasks whose common function a worker process keeps, the oldest sent dropped first.
#: The pilot's :class:`Worker` keeps the same account, so it sends a task's function
#: again once the process has dropped it (it did not, and a job of a task whose function
#: was dropped failed: "payload names no function and the task has none").
COMMONS_KEPT = 16


def worker_main(conn: Connection, ahead: bool = False) -> None:
    """The worker process's loop: serve the pilot's messages on ``conn`` until "exit" or
    the pipe closes.  ``ahead``: started before any job waits for it, so it takes the read
    cache's memory first (:func:`prepare_memory`); one started for a job waiting (after
    its process died) only sets its allocator, the job's walltime already running.
    "common" keeps a task's common function (:data:`COMMONS_KEPT` tasks at most, the
    oldest sent dropped first),
    "run" runs a job and sends back ``(job_id, Outcome)``, with ``("out", job_id,
    stdout tail, stderr tail)`` while it runs; "env" sets environment variables.
    Returns nothing; what a job raises is in its outcome, never raised here."""
    if ahead:  # in this thread, the one that runs the jobs; ended by a job that comes
        prepare_memory(stop=conn.poll)
    else:
        allocator.keep_freed_memory()
    commons: OrderedDict[int, object] = OrderedDict()
    own_dir = os.getcwd()  # where a job without a client directory here runs
    lock = threading.Lock()
    ticker = _OutputTicker(conn, lock)
    ticker.start()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        kind = msg[0]
        if kind == "common":
            _, task_id, data = msg
            try:
                commons[task_id] = pickle.loads(data)
            except Exception as exc:  # reported when a job needs it
                commons[task_id] = exc
            while len(commons) > COMMONS_KEPT:
                commons.popitem(last=False)
        elif kind == "run":
            _, job_id, task_id, payload = msg[:4]
            spool = msg[4] if len(msg) > 4 else None  # (stdout path, stderr path, limit)
            # the submitting client's directory, on its own machine (local sites)
            os.chdir(job_directory(msg[5] if len(msg) > 5 else None) or own_dir)
            # how the job reads its input, as brokerage chose (model/staging.py)
            access, read_from = msg[6:8] if len(msg) > 7 else (None, None)
            os.environ[reads.ACCESS] = access or ""
            os.environ[reads.READ_FROM] = read_from or ""
            common = commons.get(task_id)
            if isinstance(common, Exception):
                from panda_lab.payload import _error

                outcome = Outcome(False, None, _error(
                    "payload", common, "cannot unpickle the task's function on the pilot: "),
                    "", "", 0.0, 0.0)
            else:
                streams = _captures(job_id, spool)
                ticker.watch(job_id, *streams)
                reads.take()  # what an earlier job left is not this one's
                reads.take_events()
                reads.take_cache()
                meter = JobMeter()  # the payload's memory and CPU, this job's only
                try:
                    outcome = run_call(payload, common, streams)  # type: ignore[arg-type]
                finally:
                    ticker.watch(None)
                    for stream in streams:
                        stream.finish()
                used = meter.stop()
                outcome.peak_rss_mb, outcome.cpu_s = used.peak_rss_mb, used.cpu_s
                # What the job read, per endpoint: how the server learns the network.
                outcome.reads = reads.take()
                outcome.events = reads.take_events()
                outcome.cache = reads.take_cache()
            with lock:
                conn.send((job_id, outcome))
        elif kind == "env":  # what the pilot learnt at registration (its site's endpoint)
            os.environ.update(msg[1])
        elif kind == "exit":
            return


def prepare_memory(stop: Callable[[], bool] | None = None) -> int:
    """What a payload worker does with its memory at its start, in the thread that will
    run its jobs: a chunk's freed arrays are kept for the next
    (:func:`allocator.keep_freed_memory`), and the read cache's bytes
    (``$PANDA_LAB_READ_CACHE``) are faulted in now rather than during the first run over
    new data (:func:`allocator.reserve`).  Returns the bytes reserved: 0 with the C
    library's own allocator, the cache off, or a limit that is not a size (the pilot
    refuses that at its start).  ``stop``: as :func:`allocator.reserve`'s (the pilot's
    pipe: a job waiting ends the reservation).  Never raises."""
    if not allocator.keep_freed_memory():
        return 0
    try:
        nbytes = read_cache_limit(os.environ.get(READ_CACHE_ENV))
    except ValueError:
        return 0
    return allocator.reserve(nbytes, stop)


class Worker:
    """The pilot's handle on one worker process."""

    def __init__(self) -> None:
        self.proc: mp.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.job: dict | None = None
        #: The tasks whose common function the process holds, oldest sent first: the
        #: same account as the process's own (:data:`COMMONS_KEPT`).
        self.commons: OrderedDict[int, None] = OrderedDict()
        #: Tasks this worker process has run a job of; :attr:`cold`: the job running
        #: now is its task's first here (its imports and first opens are in its time).
        self.tasks_run: set[int] = set()
        self.cold = False
        self.started_at = 0.0
        self.last_exit: int | None = None
        #: Environment for the payloads, given to each worker process this handle starts.
        self.env: dict[str, str] = {}

    def ensure(self, ahead: bool = False) -> None:
        """Start the worker process (spawned, so it shares nothing with the pilot) if it
        is not running, and give it :attr:`env`; a no-op while it runs.  ``ahead``: no
        job waits for it, so it takes the read cache's memory first (``worker_main``)."""
        if self.proc is not None and self.proc.is_alive():
            return
        parent, child = _CTX.Pipe()
        self.proc = _CTX.Process(target=worker_main, args=(child, ahead), daemon=True,
                                 name="panda-lab-worker")
        self.proc.start()
        child.close()
        self.conn = parent
        self.commons = OrderedDict()
        self.tasks_run = set()
        if self.env:
            self.conn.send(("env", self.env))

    def set_env(self, env: dict[str, str]) -> None:
        """Environment for the payloads from now on (the worker may already run)."""
        self.env.update(env)
        if self.conn is not None and self.proc is not None and self.proc.is_alive():
            self.conn.send(("env", env))

    @property
    def busy(self) -> bool:
        """A job was started and its outcome not yet received."""
        return self.job is not None

    def run(self, job: dict, common: bytes | None, now: float,
            spool: tuple[str, str, int] | None = None) -> None:
        """Start ``job``; with ``spool``, ``(stdout path, stderr path, limit)``, its
        output is also kept in those files, up to ``limit`` characters each.

        ``job`` is the server's job dict (``id``, ``task``, ``payload`` as bytes);
        ``common`` the task's common function, pickled, sent once per worker process;
        ``now`` the start time (``time.monotonic()`` seconds).  Starts the worker first
        if needed; returns at once.  An ``OSError`` from a pipe to a worker that just
        died propagates."""
        self.ensure()
        assert self.conn is not None
        if common is not None and job["task"] not in self.commons:
            self.conn.send(("common", job["task"], common))
            self.commons[job["task"]] = None
            while len(self.commons) > COMMONS_KEPT:  # as the process drops them
                self.commons.popitem(last=False)
        self.conn.send(("run", job["id"], job["task"], job["payload"], spool,
                        job.get("workdir"), job.get("access"), job.get("read_from")))
        self.job = job
        self.started_at = now
        self.cold = job["task"] not in self.tasks_run
        self.tasks_run.add(job["task"])

    def receive(self) -> tuple[dict, Outcome | Output | None]:
        """The job and what the worker said of it: its outcome when it ended (``None``
        when the worker died under it: the worker is then killed and reaped, its exit
        code in :attr:`last_exit`), or its :class:`Output` so far while it runs.
        Blocks until the worker sends something: call it when the connection is
        ready (``multiprocessing.connection.wait``)."""
        assert self.conn is not None and self.job is not None
        job = self.job
        try:
            msg = self.conn.recv()
        except (EOFError, OSError):
            self.kill()
            return job, None
        if msg[0] == "out":
            return job, Output(msg[2], msg[3])
        self.job = None
        return job, msg[1]

    def kill(self) -> int | None:
        """Kill the worker process now (SIGKILL), wait up to 5 s for it, and forget the
        job it ran.  Returns its exit code (negative: the signal), ``None`` when there
        was no process or it had not exited yet; the next :meth:`run` starts a new one."""
        code = None
        if self.proc is not None:
            self.proc.kill()
            self.proc.join(5)
            code = self.proc.exitcode
        if self.conn is not None:
            self.conn.close()
        self.proc = self.conn = None
        self.job = None
        self.last_exit = code
        return code

    def close(self) -> None:
        """Ask the worker to exit (waiting up to 2 s), then :meth:`kill` what is left."""
        if self.proc is not None and self.proc.is_alive() and self.conn is not None:
            try:
                self.conn.send(("exit",))
                self.proc.join(2)
            except OSError:
                pass
        self.kill()
