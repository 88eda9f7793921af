"""Engine set-up and the pieces every part of the store shares.

The server calls the store from one thread, so SQLite sees a single writer and
never reports "database is locked"; on PostgreSQL the dispatch uses row locks
(``FOR UPDATE SKIP LOCKED``) so several server processes would stay correct too.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection, create_engine, event, insert, inspect, select, text
from sqlalchemy.engine import Engine

from panda_lab.model import JobState
from panda_lab.payload import INLINE_LIMIT  # noqa: F401 - the store's rule too
from panda_lab.server.brokerage import Choice, Request, SiteLoad
from panda_lab.store.schema import SCHEMA_VERSION, job_status, meta, metadata


def now() -> float:
    return time.time()


def dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)


def loads(text: str | None) -> dict:
    return json.loads(text) if text else {}


@dataclass
class JobChange:
    """A change of state the server announces on the event stream."""

    job_id: int
    task_id: int
    job_index: int
    attempt: int
    site: str | None
    state: str
    error_category: str | None = None
    error_message: str | None = None
    result: bytes | None = None

    def as_event(self, with_result: bool = False) -> dict:
        ev = {"id": self.job_id, "task": self.task_id, "index": self.job_index,
              "attempt": self.attempt, "site": self.site, "state": self.state}
        if self.error_category:
            ev["error_category"] = self.error_category
            ev["error"] = self.error_message
        return ev


@dataclass
class Changes:
    """What one store operation changed: job changes and task state changes."""

    jobs: list[JobChange] = field(default_factory=list)
    tasks: list[tuple[int, str]] = field(default_factory=list)
    #: Sites that got newly activated jobs (dispatch wakes their pilots).
    activated_sites: set[str] = field(default_factory=set)

    def extend(self, other: Changes) -> None:
        self.jobs.extend(other.jobs)
        self.tasks.extend(other.tasks)
        self.activated_sites |= other.activated_sites


class Broker:
    """What the store needs from brokerage: place requests given the site loads."""

    def choose(self, requests: list[Request], loads: list[SiteLoad]) -> list[Choice]:
        from panda_lab.server.brokerage import choose

        return choose(requests, loads)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def add_missing_columns(engine: Engine) -> list[str]:
    """Add to a database made by an older version the nullable columns it lacks.

    ``create_all`` makes missing tables, not missing columns.  A new column that may be
    NULL needs no back-filling, so adding it is the whole upgrade.  Returns the columns
    added, as ``table.column``; raises ``RuntimeError`` for a missing column that may not
    be NULL (that needs a real migration, not this).
    """
    have = inspect(engine)
    added = []
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            if not have.has_table(table.name):
                continue
            present = {c["name"] for c in have.get_columns(table.name)}
            for col in table.columns:
                if col.name in present:
                    continue
                if not col.nullable:
                    raise RuntimeError(f"the database lacks column {table.name}.{col.name}, "
                                       "which may not be NULL: it needs a migration")
                kind = col.type.compile(dialect=engine.dialect)
                # PostgreSQL: another server starting at the same time may add it first
                guard = "IF NOT EXISTS " if engine.dialect.name == "postgresql" else ""
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN {guard}'
                                  f'"{col.name}" {kind}'))
                added.append(f"{table.name}.{col.name}")
    return added


class StoreBase:
    def __init__(self, url: str, result_dir: str | Path, broker: Broker | None = None) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.result_dir = Path(result_dir)
        self.result_dir.mkdir(parents=True, exist_ok=True)
        self.broker = broker or Broker()
        metadata.create_all(self.engine)
        add_missing_columns(self.engine)
        with self.tx() as conn:
            self._meta_default(conn, "schema_version", str(SCHEMA_VERSION))

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()

    # -- meta ---------------------------------------------------------------------
    def _meta_default(self, conn: Connection, key: str, value: str) -> str:
        row = conn.execute(select(meta.c.value).where(meta.c.key == key)).first()
        if row is not None:
            return row[0]
        conn.execute(insert(meta).values(key=key, value=value))
        return value

    def tokens(self) -> tuple[str, str]:
        """The user and pilot tokens, made once and kept with the data they protect."""
        with self.tx() as conn:
            user = self._meta_default(conn, "user_token", secrets.token_urlsafe(24))
            pilot = self._meta_default(conn, "pilot_token", secrets.token_urlsafe(24))
        return user, pilot

    # -- history ------------------------------------------------------------------
    @staticmethod
    def _history(
        conn: Connection, rows: Iterable[tuple[int, Iterable[JobState | str], float, str]]
    ) -> None:
        batch = [
            {"job_id": jid, "state": str(st), "time": t, "info": info}
            for jid, states, t, info in rows
            for st in states
        ]
        if batch:
            conn.execute(insert(job_status), batch)
