"""The database layer: SQLAlchemy Core on SQLite (default) or PostgreSQL."""

from panda_lab.store.base import INLINE_LIMIT, Changes, JobChange
from panda_lab.store.datasets import DatasetExists, DatasetNotFound, DatasetStore, ReportStore
from panda_lab.store.jobs import JobStore
from panda_lab.store.leases import LeaseStore
from panda_lab.store.pilots import PilotStore, UnknownPilot, UnknownSite
from panda_lab.store.sites import SiteStore
from panda_lab.store.tasks import TaskNotFound, TaskStateError, TaskStore


class Store(TaskStore, LeaseStore, JobStore, PilotStore, SiteStore, DatasetStore, ReportStore):
    """All of the store: tasks, jobs, pilots, sites and datasets over one engine."""


__all__ = [
    "INLINE_LIMIT",
    "Changes",
    "DatasetExists",
    "DatasetNotFound",
    "JobChange",
    "Store",
    "TaskNotFound",
    "TaskStateError",
    "UnknownPilot",
    "UnknownSite",
]
