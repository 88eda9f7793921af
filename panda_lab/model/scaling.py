"""How many pilots a site wants: one small pure policy for every provisioner.

In the spirit of Parsl's strategy (``parsl.jobs.strategy``: blocks needed = ceil(tasks /
slots per block), clipped to ``[min_blocks, max_blocks]``, released only after an idle
timeout) and of distributed's adaptive core (``AdaptiveCore``: a target from the work
outstanding, scale up at once, scale down only after the same answer has held for a
while).  The policy reads a :class:`Snapshot` and returns a :class:`Decision`; it keeps no
state and does no I/O, so each rule is tested without a cluster.

The rule, per :class:`Mode` (``need = ceil(demand / slots)``, ``demand`` = jobs queued at
the site or held by its pilots):

- ``FIXED``      target = ``max_pilots`` (local processes: the site keeps its pilots).
- ``PER_WORKER`` target = ``workers`` (a Dask cluster: one pilot on each worker; the
  cluster's owner, or its own adaptive scaling, decides how many workers there are).
- ``QUEUE``      without ``idle_timeout`` (Slurm): target = clamp(need, min, max); pilots
  above it are not stopped, they leave by themselves when idle (``idle_exit``).
  With ``idle_timeout`` (dask-gateway workers): while jobs wait, target =
  clamp(max(current, need), min, max), up at once and never down under running work;
  once nothing has been queued or running for ``idle_timeout`` seconds, target = min;
  in between, target = max(current, min).  Without a known demand, target = max.

``start`` is what to add to ``current`` to reach the target; ``stop`` what to take away,
which only the idle-timeout rule does (the others let idle pilots leave on their own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class Mode(StrEnum):
    FIXED = "fixed"
    QUEUE = "queue"
    PER_WORKER = "per_worker"


@dataclass(frozen=True)
class Snapshot:
    """What the policy looks at.  Counts are non-negative integers; times in seconds of
    one monotonic clock."""

    #: Jobs queued at the site or held by its pilots; ``None`` when unknown.
    demand: int | None = None
    #: Pilots (or workers) alive or pending now, or last asked for.
    current: int = 0
    #: Jobs one pilot runs at once.
    slots: int = 1
    #: Workers of the site's Dask cluster (``PER_WORKER``).
    workers: int = 0
    #: Now, and since when the site has had no demand (``None``: it has some).
    now: float = 0.0
    idle_since: float | None = None


@dataclass(frozen=True)
class Decision:
    """The policy's answer: the target count, how many to start and stop to reach it
    (one of them 0), why, and the ``idle_since`` to pass in the next snapshot."""

    target: int
    start: int
    stop: int
    reason: str
    idle_since: float | None = None


@dataclass(frozen=True)
class ScalingPolicy:
    """A site's scaling rule (see the module docstring).  ``max_pilots >= min_pilots >= 0``;
    ``idle_timeout`` in seconds, ``None`` for "never scale down"."""

    mode: Mode
    min_pilots: int = 0
    max_pilots: int = 1
    idle_timeout: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.min_pilots <= self.max_pilots:
            raise ValueError(f"need 0 <= min_pilots ({self.min_pilots}) <= max_pilots "
                             f"({self.max_pilots})")

    def decide(self, snap: Snapshot) -> Decision:
        """The decision for ``snap``; pure.  Raises nothing for valid snapshots."""
        idle_since = snap.idle_since
        if self.mode is Mode.FIXED:
            target, reason = self.max_pilots, f"fixed at {self.max_pilots}"
        elif self.mode is Mode.PER_WORKER:
            target, reason = snap.workers, f"one per worker ({snap.workers})"
        elif snap.demand is None:
            target, reason = self.max_pilots, "queue unknown: the most"
        else:
            need = math.ceil(snap.demand / max(snap.slots, 1))
            if self.idle_timeout is None:
                target = self._clamp(need)
                reason = f"{snap.demand} job(s) need {need}, kept in [{self.min_pilots}, " \
                         f"{self.max_pilots}]"
            elif snap.demand > 0:
                idle_since = None
                target = self._clamp(max(snap.current, need))
                reason = f"{snap.demand} job(s) need {need}; none taken away under work"
            else:
                idle_since = snap.now if idle_since is None else idle_since
                if snap.now - idle_since >= self.idle_timeout:
                    target = self.min_pilots
                    reason = f"idle for {self.idle_timeout:g} s: down to the minimum"
                else:
                    target = self._clamp(snap.current)
                    reason = "idle, not yet for long"
        start = max(0, target - snap.current)
        stop = (max(0, snap.current - target)
                if self.mode is Mode.QUEUE and self.idle_timeout is not None else 0)
        return Decision(target, start, stop, reason, idle_since)

    def _clamp(self, n: int) -> int:
        return min(self.max_pilots, max(self.min_pilots, n))
