"""Futures of panda-lab jobs, and the exceptions a failed job turns into.

A future is a real ``concurrent.futures.Future``: ``wait``, ``as_completed`` and Dask
work with it unchanged.  A remote exception is re-raised with its own type (see
:mod:`panda_lab.remote_errors` for how it travels: constructor arguments, attributes,
chain, notes and group members), with the remote traceback attached as the
``__cause__`` of the last exception of its ``__cause__`` chain (as
``ProcessPoolExecutor`` attaches it to the exception itself), so a notebook shows where
the error happened.  A type that cannot be rebuilt here becomes a :class:`RemoteError`
that names it and says why.
"""

from __future__ import annotations

import base64
from concurrent.futures import Future
from concurrent.futures._base import CANCELLED
from typing import TYPE_CHECKING

from panda_lab.model import ErrorCategory, JobState
from panda_lab.remote_errors import loads_exception

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
    (lost pilot, walltime, crashed worker...), or whose exception cannot be rebuilt
    here (then a :class:`RemoteError`)."""

    def __init__(self, message: str, category: str = "system", job_id: int | None = None,
                 traceback: str | None = None) -> None:
        super().__init__(message)
        self.category = category
        self.job_id = job_id
        self.remote_traceback = traceback


class JobKilled(JobFailed):
    """The job was killed (``panda-lab kill``, the panel, or another client)."""


class RemoteError(JobFailed):
    """An exception of the user's code on a pilot whose type cannot be rebuilt here:
    its class is not importable in this Python (defined in a module only the pilot
    has), cannot be pickled, or refuses to be created without its constructor.

    The message names the remote type (``module.qualname``) and why; ``remote_type``
    and ``reason`` hold them, ``remote_traceback`` the traceback on the pilot."""

    def __init__(self, remote_type: str, message: str, reason: str,
                 category: str = "user", job_id: int | None = None,
                 traceback: str | None = None) -> None:
        super().__init__(f"{remote_type}: {message} (raised on the pilot; not rebuilt "
                         f"here: {reason})", category, job_id, traceback)
        self.remote_type = remote_type
        self.reason = reason


def exception_from_job(job: dict) -> BaseException:
    """Rebuild the exception of a failed or cancelled attempt from its record.

    Returns the user's exception with its own type where it can be rebuilt (a part
    that could not travel is named in a note on it), a :class:`RemoteError` where its
    type cannot, :class:`JobKilled` for a killed job and :class:`JobFailed` for a
    failure that is no exception of the user's code."""
    category = job.get("error_category") or "system"
    message = job.get("error_message") or f"job ended {job.get('state')}"
    tb = job.get("error_traceback")
    if job.get("state") == JobState.CANCELLED or category == ErrorCategory.KILLED:
        return JobKilled(message, "killed", job.get("id"))
    exc: BaseException | None = None
    if job.get("error_exception"):

        def substitute(remote_type: str, text: str, reason: str) -> BaseException:
            return RemoteError(remote_type, text, reason, category, job.get("id"), tb)

        try:
            exc = loads_exception(base64.b64decode(job["error_exception"]), substitute)
        except Exception as err:
            exc = RemoteError("the job's exception", message,
                              f"its record cannot be read ({type(err).__name__}: {err})",
                              category, job.get("id"), tb)
    if exc is None:
        exc = JobFailed(f"[{category}] {message}", category, job.get("id"), tb)
    if tb:
        _last_cause(exc).__cause__ = RemoteTraceback(tb)
    return exc


def _last_cause(exc: BaseException) -> BaseException:
    """The end of ``exc``'s ``__cause__`` chain: where the remote traceback goes
    without hiding a cause the user's code set (``raise A from B``)."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


def cancel_now(fut: Future) -> bool:
    """Cancel ``fut`` here and tell its waiters at once, as an executor does when it drops
    a work item: ``wait`` and ``as_completed`` count a cancelled future as done only once
    ``set_running_or_notify_cancel`` was called.  Returns whether ``fut`` is cancelled."""
    if not Future.cancel(fut):
        return False
    with fut._condition:
        if fut._state == CANCELLED:  # not notified yet (a second call must not repeat it)
            fut.set_running_or_notify_cancel()
    return True


class PandaFuture(Future):
    """A future for one job.

    ``cancel()`` keeps ``concurrent.futures``' promise: it returns True only when the
    call will never run, because it had not left this client yet, or because the
    server cancelled its job before any pilot got it.  A job a pilot holds cannot be
    cancelled (``ProcessPoolExecutor`` likewise cannot cancel a call already in its
    call queue): the future then stays pending or running and gets its outcome."""

    def __init__(self, executor: PandaExecutor) -> None:
        super().__init__()
        self._executor = executor
        self.job_id: int | None = None
        self.index: int | None = None
        self.site: str | None = None
        #: Where the call stands, changed under the executor's lock: "outbox" (not sent),
        #: "posting" (in the request on its way), "posted" (a job on the server),
        #: "dropped" (cancelled before it was sent) or "failed" (the request failed).
        self._stage = "outbox"
        #: A cancel request for this job is on its way; a "cancelled" event that comes
        #: meanwhile waits in ``_deferred`` for the reply to say whose it was.
        self._cancelling = False
        self._deferred: dict | None = None

    def cancel(self) -> bool:
        """``concurrent.futures.Future.cancel``: ``True`` when the call will never run
        (it was still waiting: dropped before it was sent, or cancelled on the server
        before a pilot took it), ``False`` once it runs or is done.  A failed cancel
        request counts as not cancelled (logged, not raised)."""
        return self in self._executor._cancel_many([self])

    def result(self, timeout: float | None = None) -> object:
        """``concurrent.futures.Future.result``; a job's exception is raised from here,
        without the frames of ``concurrent.futures`` that only hand it over, so that a
        notebook's traceback is the user's cell, then the job's own traceback (its
        ``RemoteTraceback`` cause)."""
        __tracebackhide__ = True  # IPython: folded where it is not the last frame
        try:
            return super().result(timeout)
        except BaseException as exc:
            if exc is not self._exception:  # a timeout, a cancel, an interrupt: as they are
                raise
            raise exc.with_traceback(None)  # noqa: B904 - the same exception, its chain kept

    def __repr__(self) -> str:
        base = super().__repr__()
        return base[:-1] + f" job={self.job_id} site={self.site}>"
