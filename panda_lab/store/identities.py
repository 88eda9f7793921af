"""The store's identity verbs: issue, list and revoke tokens, find who holds a token, and
the owners of tasks and jobs that the server's isolation rule compares against.

The rule itself (who may see and act on what) is the server's
(:mod:`panda_lab.server.auth`); here are only the rows it needs, each read in SQL.
"""

from __future__ import annotations

import getpass
import hashlib
import secrets

from sqlalchemy import select

from panda_lab.store.base import Database, now
from panda_lab.store.errors import TaskNotFound
from panda_lab.store.rows import meta
from panda_lab.store.rows import shares as share_rows
from panda_lab.store.rows import users as user_rows
from panda_lab.store.rows.shares import ShareRow
from panda_lab.store.rows.users import UserRow
from panda_lab.store.schema import jobs, tasks


class Identities(Database):
    """Tokens per identity (admin, user, read-only, per-site pilot), kept hashed."""

    def server_owner(self) -> str:
        """The name of the identity that holds the server's own user token (the one in
        the connection file): the OS user who first ran the server, kept with the data so
        that the name never changes and no added user may take it."""
        with self.tx() as conn:
            return meta.get_or_set(conn, "server_owner", _os_user())

    def add_user(self, name: str, role: str, site: str | None = None) -> str:
        """Issue a token to a new identity ``name`` of ``role`` (``site`` for a pilot);
        returns the token, the only time it is seen (the store keeps its hash).  Raises
        :class:`~panda_lab.store.rows.users.UserExists` for a name taken, the server
        owner's name included, and ``ValueError`` for a bad role or site."""
        if (role == "pilot") != (site is not None):
            raise ValueError("a pilot identity needs a site, and only a pilot has one")
        token = secrets.token_urlsafe(32)
        with self.tx() as conn:
            if name == meta.get_or_set(conn, "server_owner", _os_user()):
                raise user_rows.UserExists(f"{name!r} is the server owner's name (it holds "
                                           "the token of the connection file)")
            user_rows.insert_user(conn, name, role, site, token, now())
        return token

    def site_pilot_tokens(self, sites: list[str]) -> dict[str, str]:
        """``{site: token}``: the pilot token the server made for each of ``sites``, made
        on first asking and kept with the data, as the server's own tokens are (its
        provisioners hand it to the site's pilots, so the server needs its text; pilots
        left running by an earlier server process keep holding a valid one)."""
        with self.tx() as conn:
            return {site: meta.get_or_set(conn, _site_token_key(site), secrets.token_urlsafe(32))
                    for site in sites}

    def list_users(self) -> list[UserRow]:
        """Every identity (revoked ones with ``revoked_at``), by name; no token."""
        with self.tx() as conn:
            return user_rows.listing(conn)

    def revoke_user(self, name: str) -> None:
        """Revoke ``name``'s token: a server refuses it from its next request on.
        Raises :class:`~panda_lab.store.rows.users.UnknownUser`."""
        with self.tx() as conn:
            user_rows.revoke(conn, name, now())

    def identity_by_token(self, token: str) -> UserRow | None:
        """The live identity holding ``token``, or None (unknown or revoked)."""
        with self.tx() as conn:
            return user_rows.by_hash(conn, user_rows.token_hash(token))

    def task_owner(self, task_id: int) -> str | None:
        """The owner of a task, or None when there is no such task."""
        with self.tx() as conn:
            return conn.execute(select(tasks.c.owner).where(tasks.c.id == task_id)).scalar()

    def job_owner(self, job_id: int) -> tuple[int, str, str | None] | None:
        """``(task id, task owner, site)`` of a job attempt, or None for no such job."""
        with self.tx() as conn:
            row = conn.execute(select(jobs.c.task_id, tasks.c.owner, jobs.c.site)
                               .join(tasks, tasks.c.id == jobs.c.task_id)
                               .where(jobs.c.id == job_id)).first()
        return tuple(row) if row is not None else None  # type: ignore[return-value]

    def jobs_not_owned(self, job_ids: list[int], owner: str) -> list[int]:
        """Those of ``job_ids`` that are not attempts of ``owner``'s tasks (unknown ones
        too), sorted."""
        with self.tx() as conn:
            mine = {r[0] for r in conn.execute(
                select(jobs.c.id).join(tasks, tasks.c.id == jobs.c.task_id)
                .where(jobs.c.id.in_(job_ids), tasks.c.owner == owner))}
        return sorted(set(job_ids) - mine)

    def task_at_site(self, task_id: int, site: str) -> bool:
        """Whether any attempt of the task went to ``site`` (a pilot there may read the
        task's common payload)."""
        with self.tx() as conn:
            return conn.execute(select(jobs.c.id).where(
                jobs.c.task_id == task_id, jobs.c.site == site).limit(1)).first() is not None

    # ---- share links ---------------------------------------------------------------------
    def share_task(self, task_id: int, by: str, expires_s: float) -> tuple[ShareRow, str]:
        """A new read-only link to task ``task_id``, made by ``by``, expiring
        ``expires_s`` seconds from now: ``(its row, its token)``; the token (``share-``
        and 43 URL-safe characters) is seen only now, the store keeps its hash.  Raises
        :class:`TaskNotFound` and ``ValueError`` for an expiry not above 0."""
        if not expires_s > 0:
            raise ValueError(f"expires_s: must be above 0, not {expires_s!r}")
        token = SHARE_PREFIX + secrets.token_urlsafe(32)
        t = now()
        with self.tx() as conn:
            if conn.execute(select(tasks.c.id).where(tasks.c.id == task_id)).first() is None:
                raise TaskNotFound(f"no task with id {task_id}")
            share_id = share_rows.insert_share(conn, task_id, by, token, t, t + expires_s)
        return ShareRow(share_id, task_id, by, t, t + expires_s, None), token

    def share_by_token(self, token: str) -> ShareRow | None:
        """The share link holding ``token``, expired or revoked ones too (the caller
        refuses those with :meth:`ShareRow.refusal`), or None."""
        with self.tx() as conn:
            return share_rows.by_token(conn, token)

    def shares_of(self, task_id: int) -> list[ShareRow]:
        """Every share link of a task, oldest first (no tokens)."""
        with self.tx() as conn:
            return share_rows.of_task(conn, task_id)

    def revoke_shares(self, task_id: int, share_id: int | None = None) -> list[int]:
        """Revoke link ``share_id`` of the task, or all not revoked yet (None); returns
        the ids revoked: refused from the next request on."""
        with self.tx() as conn:
            return share_rows.revoke(conn, task_id, share_id, now())


#: How a share link's token begins: the server looks such a token up among the links only.
SHARE_PREFIX = "share-"


def _site_token_key(site: str) -> str:
    """The ``meta`` key of a site's pilot token: fixed length, whatever the site's name."""
    return "site_pilot_token:" + hashlib.sha256(site.encode("utf-8", "surrogatepass")
                                                 ).hexdigest()[:40]


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # pragma: no cover - a uid with no passwd entry
        return "owner"
