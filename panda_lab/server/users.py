"""Issuing and revoking a server's tokens from outside it, as ``panda-lab users`` does:
each call opens the server's database (``ServerConfig.database_url``), does one thing and
closes it; a running server sees the change on its next request
(:mod:`panda_lab.server.auth`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from panda_lab.server.config import ServerConfig
from panda_lab.store import Store, UnknownUser, UserExists, UserRow

__all__ = ["UnknownUser", "UserExists", "UserRow", "add_user", "list_users", "revoke_user"]

T = TypeVar("T")


def _with_store(config: ServerConfig, fn: Callable[[Store], T]) -> T:
    store = Store(config.database_url, config.result_dir)
    try:
        return fn(store)
    finally:
        store.close()


def add_user(config: ServerConfig, name: str, role: str, site: str | None = None) -> str:
    """A new identity's token (shown once: only its hash is kept).  Raises
    :class:`UserExists` for a taken name, ``ValueError`` for a bad role or site."""
    return _with_store(config, lambda s: s.add_user(name, role, site))


def list_users(config: ServerConfig) -> list[UserRow]:
    """Every identity, revoked ones too, by name (no tokens)."""
    return _with_store(config, lambda s: s.list_users())


def revoke_user(config: ServerConfig, name: str) -> None:
    """Revoke ``name``'s token.  Raises :class:`UnknownUser` (none, or revoked already)."""
    _with_store(config, lambda s: s.revoke_user(name))
