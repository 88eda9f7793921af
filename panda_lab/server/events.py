"""The event stream: state changes pushed to monitors and clients as Server-Sent Events.

Events are batched: one message carries every job change of one store operation, so
10,000 finished jobs cost a few hundred messages, not 10,000.  A subscriber that falls
too far behind is dropped with an ``overflow`` message and re-syncs through the REST
API: a slow monitor never holds the server back.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
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
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(maxsize=10_000))
    dropped: bool = False


class EventBus:
    def __init__(self) -> None:
        self._subs: set[Subscriber] = set()
        self._seq = itertools.count(1)

    def subscribe(self, tasks: frozenset[int] | None = None, results: bool = False) -> Subscriber:
        sub = Subscriber(tasks, results)
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
        for sub in list(self._subs):
            jobs = [c for c in changes.jobs if sub.tasks is None or c.task_id in sub.tasks]
            task_changes = [(i, s) for i, s in changes.tasks if sub.tasks is None or i in sub.tasks]
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
        for sub in list(self._subs):
            if task is not None and sub.tasks is not None and task not in sub.tasks:
                continue
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
