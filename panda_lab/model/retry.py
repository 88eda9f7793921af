"""Error categories and retry rules, as data.

PanDA classifies every failure and lets rules, not code paths, decide what happens
next.  A rule matches on the error category and an optional regular expression on
the message; the first matching rule wins.  ``attempts`` bounds how many attempts
a logical job may have in total under that rule.

:func:`next_attempt` is the whole of what the store decides when an attempt ends
without a result (PanDA/JEDI's retry module): whether a new attempt is made, its
number and attempt limit, the sites it may go to and the site it should avoid.  It
takes plain values and returns a decision; the store reads the values and writes the
decision, in one transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
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


class Cause(StrEnum):
    """Why a logical job gets another attempt."""

    FAILED = "failed"          #: its attempt failed (a pilot's report, the watchdog)
    USER_RETRY = "user retry"  #: the user's ``retry`` of the task (pbook's verb)
    REBROKER = "rebroker"      #: its site went offline before a pilot took it
    #: it never ran: its answer lost, handed back unstarted, or held past
    #: ``sent_timeout`` by a pilot that still beats
    LOST = "lost"
    #: its start never reported by a pilot that ended or went silent: it may have run
    #: in the pilot's last moments (a job that kills its pilot at once is one)
    UNSEEN = "unseen"


#: The most attempts a logical job may reach through attempts whose start went unreported
#: before their pilot ended or went silent (:attr:`Cause.UNSEEN`), which do not count
#: against its limit until then: a job held ahead by a pilot that dies is not charged
#: for it, and a job that kills its pilot at once ends after this many (not after
#: :data:`LOST_ATTEMPTS`, 20 pilots killed).
UNSEEN_ATTEMPTS = 3

#: The most attempts a logical job may reach through answers lost on their way to the
#: pilot (:attr:`Cause.LOST`), which do not count against its limit until then: a burst
#: of lost answers must not end a job that never ran, and a fault that loses answers for
#: ever must not retry it for ever.
LOST_ATTEMPTS = 20


#: The causes whose next attempt is not charged: the bound on attempts, and the reason.
_FREE = {Cause.LOST: (LOST_ATTEMPTS, "handed back: its pilot never got it"),
         Cause.UNSEEN: (UNSEEN_ATTEMPTS, "its pilot ended before reporting its start")}


@dataclass(frozen=True)
class Previous:
    """What the next attempt is decided from: the last attempt of a logical job.

    ``sites`` the sites the job accepts (kept with its brokerage decision, else the
    task's), ``near`` the storage endpoints of its input, ``site`` where it went."""

    attempt: int
    max_attempts: int
    site: str | None
    sites: tuple[str, ...]
    near: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class NextAttempt:
    """A new attempt to broker: its number (``attempt``, 1-based), its limit, the sites it
    accepts, the sites brokerage should avoid if it can, and why it is made."""

    attempt: int
    max_attempts: int
    sites: tuple[str, ...]
    avoid: frozenset[str]
    near: frozenset[str]
    reason: str


def accepted_sites(kept: list[str] | tuple[str, ...] | None,
                   task_sites: tuple[str, ...]) -> tuple[str, ...]:
    """The sites a new attempt may go to: those kept with the job's last brokerage
    decision (a job may name its own), else the task's."""
    return tuple(kept or task_sites)


def next_attempt(
    prev: Previous,
    cause: Cause,
    *,
    category: str | None = None,
    message: str | None = None,
    task_aborted: bool = False,
    rules: tuple[RetryRule, ...] = DEFAULT_RULES,
) -> NextAttempt | None:
    """The next attempt of a logical job, or ``None`` when there is none.

    - ``FAILED``: :func:`decide` on the error (``category`` None counts as ``system``);
      a retry avoids the failed site when its rule says so; none for an aborted task.
    - ``USER_RETRY``: always one more, anywhere it accepts; the limit grows to let it be.
    - ``REBROKER``: always, away from the offline site; the limit grows by one, since
      losing the site was not the job's fault.
    - ``LOST``: the attempt never reached its pilot (PanDA reassigns a job its pilot
      never picked up): one more, at the same sites, the limit grown by one, up to
      :data:`LOST_ATTEMPTS` attempts; past that, as ``FAILED`` with ``category``.
    - ``UNSEEN``: as ``LOST`` (it may not have run), up to :data:`UNSEEN_ATTEMPTS`
      attempts (it may have: a job that kills its pilot is not retried 20 times).
    """
    number = prev.attempt + 1
    if cause in _FREE:  # not charged, up to a bound; past it, a failure
        if task_aborted:
            return None
        bound, reason = _FREE[cause]
        if number <= bound:
            return NextAttempt(number, prev.max_attempts + 1, prev.sites, frozenset(),
                               prev.near, reason)
        cause = Cause.FAILED
    if cause is Cause.FAILED:
        if task_aborted:
            return None
        d = decide(category or ErrorCategory.SYSTEM, message or "", prev.attempt,
                   prev.max_attempts, rules)
        if d.action is not Action.RETRY:
            return None
        avoid = frozenset({prev.site}) if d.other_site and prev.site else frozenset()
        return NextAttempt(number, prev.max_attempts, prev.sites, avoid, prev.near, d.reason)
    if cause is Cause.USER_RETRY:
        return NextAttempt(number, max(prev.max_attempts, number), prev.sites, frozenset(),
                           prev.near, "retried by user")
    avoid = frozenset({prev.site}) if prev.site else frozenset()
    return NextAttempt(number, prev.max_attempts + 1, prev.sites, avoid, prev.near,
                       "site offline: handed back to brokerage")
