"""Futures of panda-lab jobs, and the exceptions a failed job turns into.

A future is a real ``concurrent.futures.Future``: ``wait``, ``as_completed`` and Dask
work with it unchanged.  A remote exception is re-raised with its own type where it
can be unpickled here, with the remote traceback attached as its ``__cause__`` (as
``ProcessPoolExecutor`` does), so a notebook shows where the error happened.
"""

from __future__ import annotations

import base64
import pickle
from concurrent.futures import Future
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from panda_lab.client.executor import PandaExecutor


class RemoteTraceback(Exception):
    """The traceback of an exception raised on a pilot, as text."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class JobFailed(RuntimeError):
    """A job failed for a reason that is not an exception of the user's code
    (lost pilot, walltime, crashed worker...), or whose exception cannot be rebuilt here."""

    def __init__(self, message: str, category: str = "system", job_id: int | None = None,
                 traceback: str | None = None) -> None:
        super().__init__(message)
        self.category = category
        self.job_id = job_id
        self.remote_traceback = traceback


class JobKilled(JobFailed):
    """The job was killed (``panda-lab kill``, the panel, or another client)."""


def exception_from_job(job: dict) -> BaseException:
    """Rebuild the exception of a failed or cancelled attempt from its record."""
    category = job.get("error_category") or "system"
    message = job.get("error_message") or f"job ended {job.get('state')}"
    tb = job.get("error_traceback")
    if job.get("state") == "cancelled" or category == "killed":
        return JobKilled(message, "killed", job.get("id"))
    exc: BaseException | None = None
    if job.get("error_exception"):
        try:
            exc = pickle.loads(base64.b64decode(job["error_exception"]))
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = JobFailed(f"[{category}] {message}", category, job.get("id"), tb)
    if tb:
        exc.__cause__ = RemoteTraceback(tb)
    return exc


class PandaFuture(Future):
    """A future for one job.  ``cancel()`` of a job that has not started kills it on the
    server; a running job cannot be cancelled, exactly as with the standard executors."""

    def __init__(self, executor: PandaExecutor) -> None:
        super().__init__()
        self._executor = executor
        self.job_id: int | None = None
        self.index: int | None = None
        self.site: str | None = None

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        self._executor._kill([self])
        return True

    def __repr__(self) -> str:
        base = super().__repr__()
        return base[:-1] + f" job={self.job_id} site={self.site}>"
