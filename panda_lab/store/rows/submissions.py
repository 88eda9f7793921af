"""Idempotency-key rows: which task (and which of its jobs) a client's keyed request made.

The rule is the IETF HTTPAPI draft "The Idempotency-Key HTTP Header Field" (and Stripe's
API, which it describes): a client sends a unique key with a request that creates
something and repeats the request with the same key when it got no answer; the server
does the work once and answers every repeat with what the first made.  A key is the
client's, so it is scoped by owner; a key reused for a different request is refused
(422 in the draft).  Functions take a ``Connection`` and open no transaction: the key is
recorded in the transaction that makes the work, so the two are never apart.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson
from sqlalchemy import Connection, insert, select

from panda_lab.store.base import now
from panda_lab.store.errors import IdempotencyKeyReused
from panda_lab.store.schema import jobs, submissions


@dataclass(frozen=True)
class SubmissionKey:
    """A keyed request: its ``owner``, the client's ``key`` (at most 255 characters) and
    the ``fingerprint`` of the request (:func:`fingerprint`)."""

    owner: str
    key: str
    fingerprint: str


def fingerprint(route: str, body: object) -> str:
    """SHA-256 (64 hex digits) of ``route`` and ``body`` (JSON-able) in canonical form
    (keys sorted): equal for a repeat of a request, different for another."""
    digest = hashlib.sha256(route.encode())
    digest.update(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


def record(conn: Connection, key: SubmissionKey, task_id: int, first_index: int,
           n_jobs: int) -> None:
    """Remember that ``key`` made jobs ``first_index .. first_index + n_jobs - 1`` of
    ``task_id``.  A key recorded already raises the database's ``IntegrityError`` (two
    requests with one key at once: the later one is rolled back whole)."""
    conn.execute(insert(submissions).values(
        owner=key.owner, key=key.key, fingerprint=key.fingerprint, task_id=task_id,
        first_index=first_index, n_jobs=n_jobs, created_at=now()))


def replay(conn: Connection, key: SubmissionKey) -> dict | None:
    """What the first request with ``key`` made: ``{"task": id, "jobs": [first attempts'
    ids by job index], "indices": [job indices]}``, or ``None`` for a key never seen.
    Raises :class:`IdempotencyKeyReused` when the key was recorded for another request."""
    row = conn.execute(select(submissions).where(submissions.c.owner == key.owner,
                                                 submissions.c.key == key.key)).first()
    if row is None:
        return None
    if row.fingerprint != key.fingerprint:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {key.key!r} was used for a different request (task "
            f"{row.task_id}); send a new key for a new request")
    made = conn.execute(
        select(jobs.c.id, jobs.c.job_index)
        .where(jobs.c.task_id == row.task_id, jobs.c.attempt == 1,
               jobs.c.job_index >= row.first_index,
               jobs.c.job_index < row.first_index + row.n_jobs)
        .order_by(jobs.c.job_index)).all()
    return {"task": row.task_id, "jobs": [r.id for r in made],
            "indices": [r.job_index for r in made]}
