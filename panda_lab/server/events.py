"""The event stream: state changes pushed to monitors and clients as Server-Sent Events.

Events are batched: one message carries every job change of one store operation, so
10,000 finished jobs cost a few hundred messages, not 10,000.  A subscriber that falls
too far behind is dropped with an ``overflow`` message and re-syncs through the REST
API: a slow monitor never holds the server back.

Isolation (:mod:`panda_lab.server.auth`): a subscriber with an ``owner`` gets only the
changes of that owner's tasks; one without (an admin's, a monitor's) gets every change.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from panda_lab.store import Changes
from panda_lab.text import clean_obj


def encode(msg: dict) -> bytes:
    """One event as JSON.  A text JSON cannot carry (a lone surrogate, from wherever it
    came) is written by the rule of :mod:`panda_lab.text`: one bad message must not end
    every subscriber's stream."""
    try:
        return orjson.dumps(msg)
    except TypeError:
        return orjson.dumps(clean_obj(msg), default=str)


@dataclass(eq=False)  # identity: each subscriber is one connection
class Subscriber:
    tasks: frozenset[int] | None
    results: bool
    #: Only this owner's tasks (None: everyone's).
    owner: str | None = None
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(maxsize=10_000))
    dropped: bool = False


class EventBus:
    """``owner_of(task_id)`` gives a task's owner (None: unknown), for subscribers that
    see one owner's tasks only; without it such subscribers get no task's events."""

    def __init__(self, owner_of: Callable[[int], str | None] | None = None) -> None:
        self._subs: set[Subscriber] = set()
        self._seq = itertools.count(1)
        self._owner_of = owner_of or (lambda _task_id: None)

    def subscribe(self, tasks: frozenset[int] | None = None, results: bool = False,
                  owner: str | None = None) -> Subscriber:
        sub = Subscriber(tasks, results, owner=owner)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def publish_changes(self, changes: Changes) -> None:
        if not self._subs or (not changes.jobs and not changes.tasks):
            return
        t = time.time()
        owners: dict[int, str | None] = {}

        def wanted(sub: Subscriber, task_id: int) -> bool:
            if sub.tasks is not None and task_id not in sub.tasks:
                return False
            if sub.owner is None:
                return True
            if task_id not in owners:
                owners[task_id] = self._owner_of(task_id)
            return owners[task_id] == sub.owner

        for sub in list(self._subs):
            jobs = [c for c in changes.jobs if wanted(sub, c.task_id)]
            task_changes = [(i, s) for i, s in changes.tasks if wanted(sub, i)]
            if not jobs and not task_changes:
                continue
            msg: dict = {"seq": next(self._seq), "time": t}
            if jobs:
                items = []
                for c in jobs:
                    ev = c.as_event()
                    if sub.results and c.result is not None:
                        ev["result"] = base64.b64encode(c.result).decode()
                    items.append(ev)
                msg["jobs"] = items
            if task_changes:
                msg["tasks"] = [{"id": i, "state": s} for i, s in task_changes]
            self._put(sub, msg)

    def publish(self, kind: str, body: dict) -> None:
        """A message of another kind (``partial``, ``shutdown``); one naming a ``task``
        goes only to subscribers of that task."""
        task = body.get("task")
        owner = self._owner_of(task) if task is not None and any(
            s.owner is not None for s in self._subs) else None
        for sub in list(self._subs):
            if task is not None and sub.tasks is not None and task not in sub.tasks:
                continue
            if sub.owner is not None and ((task is None and kind != "shutdown")
                                          or (task is not None and owner != sub.owner)):
                continue  # another's task, or news of no task: only for those who see all
            self._put(sub, {"seq": next(self._seq), "time": time.time(), kind: body})

    def _put(self, sub: Subscriber, msg: dict) -> None:
        if sub.dropped:
            return
        try:
            sub.queue.put_nowait(msg)
        except asyncio.QueueFull:
            sub.dropped = True
            self._subs.discard(sub)
            # Make room for the last word so the reader learns why the stream ends.
            try:
                sub.queue.get_nowait()
            except asyncio.QueueEmpty:  # pragma: no cover - the queue was just full
                pass
            sub.queue.put_nowait({"seq": next(self._seq), "overflow": True})
