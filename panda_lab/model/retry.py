"""Error categories and retry rules, as data.

PanDA classifies every failure and lets rules, not code paths, decide what happens
next.  A rule matches on the error category and an optional regular expression on
the message; the first matching rule wins.  ``attempts`` bounds how many attempts
a logical job may have in total under that rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class ErrorCategory(StrEnum):
    USER = "user"          # the payload raised: the physicist's code
    INPUT = "input"        # an input file is missing, corrupt or not what was said
    PAYLOAD = "payload"    # the payload could not be unpickled or its environment differs
    SYSTEM = "system"      # pilot lost, worker crashed, site trouble: not the user's fault
    TIMEOUT = "timeout"    # the job ran past its walltime
    KILLED = "killed"      # cancelled on request
    MERGE = "merge"        # results that cannot be merged: the processor disagrees with itself


class Action(StrEnum):
    RETRY = "retry"
    FAIL = "fail"


@dataclass(frozen=True)
class RetryRule:
    category: ErrorCategory
    action: Action
    pattern: str | None = None
    #: Total attempts allowed (the first one included); ``None`` means the task's limit.
    attempts: int | None = None
    #: Ask brokerage to prefer a site other than the one that failed.
    other_site: bool = True

    def matches(self, category: str, message: str) -> bool:
        if category != self.category:
            return False
        return self.pattern is None or re.search(self.pattern, message or "") is not None


#: The default rules.  A task's ``max_attempts`` applies where a rule has no own limit.
DEFAULT_RULES: tuple[RetryRule, ...] = (
    RetryRule(ErrorCategory.KILLED, Action.FAIL),
    RetryRule(ErrorCategory.USER, Action.FAIL),
    RetryRule(ErrorCategory.PAYLOAD, Action.FAIL),
    RetryRule(ErrorCategory.MERGE, Action.FAIL),
    RetryRule(ErrorCategory.TIMEOUT, Action.RETRY, attempts=2, other_site=False),
    # Another site may read another replica, or through another network path.
    RetryRule(ErrorCategory.INPUT, Action.RETRY, attempts=2),
    RetryRule(ErrorCategory.SYSTEM, Action.RETRY, pattern="lost heartbeat"),
    RetryRule(ErrorCategory.SYSTEM, Action.RETRY),
)


@dataclass(frozen=True)
class Decision:
    action: Action
    other_site: bool
    reason: str


def decide(
    category: str,
    message: str,
    attempt: int,
    max_attempts: int,
    rules: tuple[RetryRule, ...] = DEFAULT_RULES,
) -> Decision:
    """What to do with a failed attempt number ``attempt`` (1-based)."""
    for rule in rules:
        if rule.matches(category, message):
            if rule.action is Action.FAIL:
                return Decision(Action.FAIL, False, f"{category} errors are not retried")
            limit = rule.attempts if rule.attempts is not None else max_attempts
            limit = min(limit, max_attempts)
            if attempt >= limit:
                return Decision(Action.FAIL, False, f"attempt {attempt} of {limit}: no retry left")
            return Decision(Action.RETRY, rule.other_site, f"attempt {attempt} of {limit}: retry")
    return Decision(Action.FAIL, False, f"no retry rule for category {category!r}")
