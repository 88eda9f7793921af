"""The ``meta`` table: settings kept with the data (schema version, tokens).

Functions take a ``Connection`` and open no transaction.
"""

from __future__ import annotations

from sqlalchemy import Connection, insert, select

from panda_lab.store.schema import meta


def get(conn: Connection, key: str) -> str | None:
    """The value of ``key``, or None."""
    return conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar()


def get_or_set(conn: Connection, key: str, value: str) -> str:
    """The value of ``key``; ``value`` is stored first when there is none."""
    row = conn.execute(select(meta.c.value).where(meta.c.key == key)).first()
    if row is not None:
        return row[0]
    conn.execute(insert(meta).values(key=key, value=value))
    return value
