"""Identity rows: the users and per-site pilot tokens an admin issues and revokes.

A token is stored as the SHA-256 of its text.  No slow, salted hash (bcrypt, argon2) is
needed: those protect *passwords*, few enough to guess; a token here is 32 random bytes
from :mod:`secrets` (256 bits), which no hash speed brings within reach of guessing, and
an unsalted hash can be looked up by its index in one query per request.
Functions take a ``Connection`` and open no transaction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from panda_lab.store.schema import users

#: The roles an identity may have; ``pilot`` identities carry a site.
ROLES = ("admin", "user", "read-only", "pilot")


class UserExists(ValueError):
    """An identity of that name exists already (revoked ones too: names are not reused,
    so that the work a revoked user owned never passes to a newcomer)."""


class UnknownUser(LookupError):
    """No identity of that name, or it is revoked already."""


@dataclass(frozen=True)
class UserRow:
    """One identity as stored: its token is not here, only kept hashed."""

    name: str
    role: str
    site: str | None
    created_at: float
    revoked_at: float | None


def token_hash(token: str) -> str:
    """The stored form of a token: SHA-256 of its UTF-8 text, 64 hex digits."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def insert_user(conn: Connection, name: str, role: str, site: str | None, token: str,
                t: float) -> None:
    """A new identity holding ``token`` (stored hashed).  Raises :class:`UserExists`
    for a name taken (revoked or not) and ``ValueError`` for an unknown role."""
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {list(ROLES)}")
    if conn.execute(select(users.c.name).where(users.c.name == name)).first() is not None:
        raise UserExists(f"an identity named {name!r} exists already")
    try:
        conn.execute(insert(users).values(name=name, role=role, site=site,
                                          token_hash=token_hash(token), created_at=t))
    except IntegrityError as exc:  # pragma: no cover - two random tokens never collide
        raise UserExists(f"an identity named {name!r} exists already") from exc


def by_hash(conn: Connection, digest: str) -> UserRow | None:
    """The live (not revoked) identity whose token has this hash, or None."""
    r = conn.execute(select(users.c.name, users.c.role, users.c.site, users.c.created_at,
                            users.c.revoked_at)
                     .where(users.c.token_hash == digest, users.c.revoked_at.is_(None))).first()
    return UserRow(*r) if r is not None else None


def listing(conn: Connection) -> list[UserRow]:
    """Every identity, revoked ones too, by name."""
    return [UserRow(*r) for r in conn.execute(
        select(users.c.name, users.c.role, users.c.site, users.c.created_at,
               users.c.revoked_at).order_by(users.c.name))]


def revoke(conn: Connection, name: str, t: float) -> None:
    """Revoke the identity ``name`` from time ``t``.  Raises :class:`UnknownUser` when
    there is none, or it was revoked already."""
    res = conn.execute(update(users).where(users.c.name == name, users.c.revoked_at.is_(None))
                       .values(revoked_at=t))
    if not res.rowcount:
        raise UnknownUser(f"no live identity named {name!r}")
