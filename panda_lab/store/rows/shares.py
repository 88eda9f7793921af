"""Share-link rows: read-only links to one task's monitor page, made by its owner.

As GitHub's and Google Drive's "anyone with the link" shares: the link carries a random
token (256 bits, :mod:`secrets`), which the store keeps only as its SHA-256
(:func:`panda_lab.store.rows.users.token_hash`, for the reasons given there), bound to
one task, with an expiry and a revocation time.  Functions take a ``Connection`` and
open no transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, insert, select, update

from panda_lab.store.rows.users import token_hash
from panda_lab.store.schema import shares


@dataclass(frozen=True)
class ShareRow:
    """One share link as stored (its token is not here, only kept hashed); times in
    seconds since the epoch."""

    id: int
    task_id: int
    created_by: str
    created_at: float
    expires_at: float
    revoked_at: float | None

    def refusal(self, t: float) -> str | None:
        """Why the link opens nothing at time ``t`` (expired or revoked), or None."""
        if self.revoked_at is not None:
            return f"this share link of task {self.task_id} was revoked"
        if t >= self.expires_at:
            return f"this share link of task {self.task_id} expired"
        return None


_COLUMNS = (shares.c.id, shares.c.task_id, shares.c.created_by, shares.c.created_at,
            shares.c.expires_at, shares.c.revoked_at)


def insert_share(conn: Connection, task_id: int, by: str, token: str, t: float,
                 expires_at: float) -> int:
    """A new link to ``task_id`` holding ``token`` (stored hashed); returns its id."""
    res = conn.execute(insert(shares).values(token_hash=token_hash(token), task_id=task_id,
                                             created_by=by, created_at=t,
                                             expires_at=expires_at))
    return int(res.inserted_primary_key[0])


def by_token(conn: Connection, token: str) -> ShareRow | None:
    """The link holding ``token`` (expired and revoked ones too: they are refused with
    their reason), or None when no link has it."""
    r = conn.execute(select(*_COLUMNS).where(shares.c.token_hash == token_hash(token))).first()
    return ShareRow(*r) if r is not None else None


def of_task(conn: Connection, task_id: int) -> list[ShareRow]:
    """Every link of a task, revoked and expired ones too, oldest first."""
    return [ShareRow(*r) for r in conn.execute(
        select(*_COLUMNS).where(shares.c.task_id == task_id).order_by(shares.c.id))]


def revoke(conn: Connection, task_id: int, share_id: int | None, t: float) -> list[int]:
    """Revoke link ``share_id`` of ``task_id`` (None: all not revoked yet) from time
    ``t``; returns the ids revoked (empty: none was live)."""
    where = [shares.c.task_id == task_id, shares.c.revoked_at.is_(None)]
    if share_id is not None:
        where.append(shares.c.id == share_id)
    ids = [r[0] for r in conn.execute(select(shares.c.id).where(*where))]
    if ids:
        conn.execute(update(shares).where(shares.c.id.in_(ids)).values(revoked_at=t))
    return ids
