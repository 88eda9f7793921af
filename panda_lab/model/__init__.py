"""States, transitions and retry rules: the rules of the system, kept as data."""

from panda_lab.model.retry import Action, ErrorCategory, RetryRule, decide
from panda_lab.model.states import (
    JOB_FINAL,
    JOB_ON_PILOT,
    JOB_TRANSITIONS,
    JOB_WAITING,
    TASK_FINAL,
    TASK_TRANSITIONS,
    JobState,
    TaskState,
    TransitionError,
    can_job,
    can_task,
    job_path,
)

__all__ = [
    "JOB_FINAL",
    "JOB_ON_PILOT",
    "JOB_TRANSITIONS",
    "JOB_WAITING",
    "TASK_FINAL",
    "TASK_TRANSITIONS",
    "Action",
    "ErrorCategory",
    "JobState",
    "RetryRule",
    "TaskState",
    "TransitionError",
    "can_job",
    "can_task",
    "decide",
    "job_path",
]
