"""The payload worker: a child process of the pilot that runs jobs one at a time.

The pilot reuses a worker between jobs (imports and caches stay warm) and can kill it
at any moment (walltime, a kill from the server) without harming itself: payloads
never run in the pilot's own process.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
from collections import OrderedDict
from multiprocessing.connection import Connection

from panda_lab.payload import Outcome, run_call

_CTX = mp.get_context("spawn")


def worker_main(conn: Connection) -> None:
    commons: OrderedDict[int, object] = OrderedDict()
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
            while len(commons) > 16:
                commons.popitem(last=False)
        elif kind == "run":
            _, job_id, task_id, payload = msg
            common = commons.get(task_id)
            if isinstance(common, Exception):
                from panda_lab.payload import _error

                outcome = Outcome(False, None, _error(
                    "payload", common, "cannot unpickle the task's function on the pilot: "),
                    "", "", 0.0, 0.0)
            else:
                outcome = run_call(payload, common)  # type: ignore[arg-type]
            conn.send((job_id, outcome))
        elif kind == "exit":
            return


class Worker:
    """The pilot's handle on one worker process."""

    def __init__(self) -> None:
        self.proc: mp.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.job: dict | None = None
        self.commons: set[int] = set()
        self.started_at = 0.0
        self.last_exit: int | None = None

    def ensure(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            return
        parent, child = _CTX.Pipe()
        self.proc = _CTX.Process(target=worker_main, args=(child,), daemon=True,
                                 name="panda-lab-worker")
        self.proc.start()
        child.close()
        self.conn = parent
        self.commons = set()

    @property
    def busy(self) -> bool:
        return self.job is not None

    def run(self, job: dict, common: bytes | None, now: float) -> None:
        self.ensure()
        assert self.conn is not None
        if common is not None and job["task"] not in self.commons:
            self.conn.send(("common", job["task"], common))
            self.commons.add(job["task"])
        self.conn.send(("run", job["id"], job["task"], job["payload"]))
        self.job = job
        self.started_at = now

    def receive(self) -> tuple[dict, Outcome | None]:
        """The finished job and its outcome; ``None`` when the worker died under it."""
        assert self.conn is not None and self.job is not None
        job = self.job
        self.job = None
        try:
            _job_id, outcome = self.conn.recv()
            return job, outcome
        except (EOFError, OSError):
            self.kill()
            return job, None

    def kill(self) -> int | None:
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
        if self.proc is not None and self.proc.is_alive() and self.conn is not None:
            try:
                self.conn.send(("exit",))
                self.proc.join(2)
            except OSError:
                pass
        self.kill()
