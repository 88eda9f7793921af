"""The database layer: SQLAlchemy Core on SQLite (default) or PostgreSQL.

Layers, bottom to top: :mod:`~panda_lab.store.schema` (the tables),
:mod:`~panda_lab.store.rows` (row-level repositories: functions over a connection,
no transaction), then the verbs, each one transaction: :mod:`~panda_lab.store.reads`,
:mod:`~panda_lab.store.admin` and :mod:`~panda_lab.store.workflow` (a job's path).
The policies they apply are the model's (brokerage, retry rules, states, leases).
"""

from panda_lab.store.base import INLINE_LIMIT, Changes, JobChange, StoreThreadError
from panda_lab.store.errors import (
    DatasetExists,
    DatasetNotFound,
    IdempotencyKeyReused,
    ResultStoreFull,
    TaskNotFound,
    TaskStateError,
    UnknownPilot,
    UnknownSite,
)
from panda_lab.store.identities import Identities
from panda_lab.store.monitor import MonitorReads
from panda_lab.store.rows.jobs import CANCELLED_BY_CLIENT
from panda_lab.store.rows.submissions import SubmissionKey
from panda_lab.store.rows.users import UnknownUser, UserExists, UserRow
from panda_lab.store.workflow import Workflow


class Store(Workflow, MonitorReads, Identities):
    """All of the store over one engine: ``Store(url, result_dir, broker=None)``.

    Owned by one thread once bound (``bind_to_current_thread``; the server binds it on
    its event loop): see :mod:`panda_lab.store.base` for the thread rule."""


__all__ = [
    "CANCELLED_BY_CLIENT",
    "INLINE_LIMIT",
    "Changes",
    "DatasetExists",
    "DatasetNotFound",
    "IdempotencyKeyReused",
    "JobChange",
    "ResultStoreFull",
    "Store",
    "StoreThreadError",
    "SubmissionKey",
    "TaskNotFound",
    "TaskStateError",
    "UnknownPilot",
    "UnknownSite",
    "UnknownUser",
    "UserExists",
    "UserRow",
]
