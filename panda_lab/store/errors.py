"""What the store raises for a request it cannot serve; the server maps each to an
HTTP status (``create_app``: 404, 409, 422, 507 or 400)."""

from __future__ import annotations


class TaskNotFound(LookupError):
    """No task (or job) with that id or name."""


class TaskStateError(ValueError):
    """The task's state does not allow the command (kill a done task, add jobs to a
    closed one, retry an aborted one, renew a lapsed lease)."""


class UnknownPilot(LookupError):
    """No pilot with that id."""


class UnknownSite(LookupError):
    """No site with that name."""


class DatasetExists(ValueError):
    """A dataset of that name is registered and ``replace`` was not given."""


class DatasetNotFound(LookupError):
    """No dataset of that name."""


class IdempotencyKeyReused(ValueError):
    """An idempotency key recorded before for a different request (another body, another
    route): the IETF draft's 422."""


class ResultStoreFull(OSError):
    """The file system of the result directory has no room (``ENOSPC``, ``EDQUOT``): a
    result or output could not be kept, and nothing of it was left behind (507
    Insufficient Storage, RFC 4918)."""
