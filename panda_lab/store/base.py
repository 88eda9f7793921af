"""The engine, the one transaction helper with its thread rule, and what every part of
the store shares (times, JSON, the changes an operation announces).

The thread rule.  A store bound to a thread (:meth:`Database.bind_to_current_thread`)
opens transactions on that thread only: the server binds its store on its event loop
at startup, so the database work is serialised (SQLite sees a single writer and never
reports "database is locked") and another thread (the analysis merger, a provisioner)
must hand its calls to the loop with ``Server.db_from_thread``.  A store nobody bound
(a script, a test, one of several processes sharing a PostgreSQL database) serves the
thread that calls it; on PostgreSQL dispatch uses row locks (``FOR UPDATE SKIP
LOCKED``), so several server processes stay correct too.
"""

from __future__ import annotations

import gc
import json
import logging
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
from sqlalchemy import BigInteger, Connection, create_engine, event, inspect, text
from sqlalchemy.engine import Engine

from panda_lab.model.brokerage import Choice, Request, SiteLoad, choose
from panda_lab.model.network import WINDOW_S
from panda_lab.payload import INLINE_LIMIT  # noqa: F401 - the store's rule too
from panda_lab.store.schema import SCHEMA_VERSION, metadata

log = logging.getLogger("panda_lab.store")


def now() -> float:
    """Seconds since the epoch: the store's clock (its times are float columns)."""
    return time.time()


#: numpy scalars and arrays as numbers (``json`` took numpy floats as floats, a subclass).
_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def dumps(obj: object) -> str:
    """Compact JSON for a text column (orjson: a job's brokerage record, about 1 KB, in
    2 µs where the standard library took 20, once per job of every submission).  Keys
    that are not strings become strings and anything else unknown ``str(x)``, as
    ``json.dumps(..., default=str)`` did; a NaN is written ``null`` (valid JSON).  What
    orjson refuses (an integer past 64 bits) is written by the standard library."""
    try:
        return orjson.dumps(obj, default=str, option=_OPTIONS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(obj, separators=(",", ":"), default=str)


@contextmanager
def collector_paused() -> Iterator[None]:
    """CPython's cyclic garbage collector off inside, then as it was (also on error).

    For the verbs that make many short-lived objects at once: placing a bulk of jobs
    makes a decision per job (a dict of some ten dicts: its candidates, weights,
    rejections), and the collector's passes, triggered by those allocations, rescan every
    live object of the server each time: on a 10,000-job submission they took about a
    third of brokerage's cost per job.  The decisions hold no reference cycles, so
    reference counting frees what is dropped; anything cyclic is collected once the
    collector is back on.  (The simulator's loop does the same, ``sim/engine.py``.)"""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def loads(text: str | None) -> dict:
    """The dict in a JSON text column; ``{}`` for NULL or empty."""
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


class Broker(Protocol):
    """What the store needs from brokerage: place requests given the site loads and the
    context (``links``, ``policy``, ``now``: :func:`panda_lab.model.brokerage.choose`'s
    keywords); a test may seed its own."""

    def choose(self, requests: list[Request], loads: list[SiteLoad],
               **context: Any) -> list[Choice]: ...


class DefaultBroker:
    """The model's brokerage; its random generator is seeded with ``seed`` when given
    (the same state and submissions then give the same decisions), else fresh."""

    def __init__(self, seed: int | None = None) -> None:
        self.rng = random.Random(seed) if seed is not None else None

    def choose(self, requests: list[Request], loads: list[SiteLoad],
               **context: Any) -> list[Choice]:
        return choose(requests, loads, self.rng, **context)


class StoreThreadError(RuntimeError):
    """A store transaction was opened on a thread that does not own the store."""


#: Seconds the samples of a report may wait in memory before a report writes them.
LEARN_EVERY_S = 1.0
#: Reports' samples held in memory at most before a report writes them.
LEARN_MAX = 1000

#: SQLite's memory-mapped window over the database file, in bytes.
MMAP_BYTES = 1 << 30
#: SQLite's page cache per connection, in KiB.
CACHE_KIB = 64 * 1024


def make_engine(url: str) -> Engine:
    """An engine for ``url``: SQLite in WAL mode with foreign keys on, or PostgreSQL
    with connections checked before use."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            # Reads of a large store (the monitor's groups over 100,000 jobs) from memory:
            # pages mapped (the OS's cache, shared, no copy) and a 64 MiB page cache per
            # connection (SQLite's default is 2 MiB), both bounds, not growth.
            cur.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
            cur.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
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


def add_missing_indexes(engine: Engine) -> list[str]:
    """Make on a database made by an older version the indexes of the schema it lacks
    (``create_all`` makes a missing table's indexes, not those added to an existing
    table).  An index changes no row: building it is the whole upgrade, once, at the
    next start.  Returns the names of the indexes made."""
    have = inspect(engine)
    made = []
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            if not have.has_table(table.name):
                continue
            present = {ix["name"] for ix in have.get_indexes(table.name)}
            for index in table.indexes:
                if index.name not in present:
                    # another server starting at the same time may make it first
                    index.create(conn, checkfirst=True)
                    made.append(index.name)
    return made


def widen_integer_columns(engine: Engine) -> list[str]:
    """Make 64-bit the count columns an older PostgreSQL database made 32-bit.

    Counts of events and bytes became ``BigInteger`` in the schema: PostgreSQL's INTEGER
    holds at most 2**31 - 1, so one 3 GB file could not be registered.  SQLite's INTEGER
    is already 64-bit, so there it does nothing.  Widening keeps every value, so it is
    safe to run at each start.  Returns the columns changed, as ``table.column``.
    """
    if engine.dialect.name != "postgresql":
        return []
    have = inspect(engine)
    changed = []
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            if not have.has_table(table.name):
                continue
            kinds = {c["name"]: c["type"] for c in have.get_columns(table.name)}
            for col in table.columns:
                if not isinstance(col.type, BigInteger) or col.name not in kinds:
                    continue
                if isinstance(kinds[col.name], BigInteger):
                    continue
                conn.execute(text(f'ALTER TABLE {table.name} ALTER COLUMN "{col.name}" '
                                  "TYPE BIGINT"))
                changed.append(f"{table.name}.{col.name}")
    return changed


class Database:
    """The engine, the result directory, the broker, and :meth:`tx`: every transaction
    of the store is one ``with self.tx() as conn:`` block."""

    def __init__(self, url: str, result_dir: str | Path, broker: Broker | None = None) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.result_dir = Path(result_dir)
        self.result_dir.mkdir(parents=True, exist_ok=True)
        self.broker: Broker = broker or DefaultBroker()
        #: The network term for tasks that do not choose (``active``/``passive``/``off``,
        #: the server's ``network``), and the age past which a learned link decays.
        self.network = "active"
        self.link_window = WINDOW_S
        self._owner: threading.Thread | None = None
        #: What reports measured, not yet written: ``[(samples, t)]`` (see
        #: :meth:`_learn_now`); and the part of it a running transaction is writing.
        self._learning: list[tuple[Any, float]] = []
        self._learning_taken: list[tuple[Any, float]] | None = None
        metadata.create_all(self.engine)
        add_missing_columns(self.engine)
        add_missing_indexes(self.engine)
        widen_integer_columns(self.engine)
        from panda_lab.store.rows import meta

        with self.tx() as conn:
            meta.get_or_set(conn, "schema_version", str(SCHEMA_VERSION))

    # -- the thread rule -------------------------------------------------------------
    def bind_to_current_thread(self) -> None:
        """Make the calling thread the store's owner: from now on :meth:`tx` raises
        :class:`StoreThreadError` on any other thread.  The server calls it on its event
        loop at startup (``create_app``'s lifespan)."""
        self._owner = threading.current_thread()

    @property
    def owner(self) -> threading.Thread | None:
        """The thread that owns the store, or ``None`` when no thread was bound."""
        return self._owner

    def _check_thread(self) -> None:
        owner = self._owner
        if owner is None:
            return
        here = threading.current_thread()
        if here is not owner:
            raise StoreThreadError(
                f"store transaction opened on thread {here.name!r} (id {here.ident}), but "
                f"the store belongs to thread {owner.name!r} (id {owner.ident}), the server's "
                "event loop: from another thread, call the store through "
                "Server.db_from_thread(fn, *args)")

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back when it raises.
        Raises :class:`StoreThreadError` on a thread other than the store's owner."""
        self._check_thread()
        outer, self._learning_taken = self._learning_taken, []
        try:
            with self.engine.begin() as conn:
                yield conn
        except BaseException:
            # samples this transaction was writing are not lost with it
            self._learning[:0] = self._learning_taken or []
            raise
        finally:
            self._learning_taken = outer

    # -- what reports measured, written together --------------------------------------
    def _learning_due(self, t: float, more: int = 0) -> bool:
        """Whether the samples held should be written now: the oldest waited
        :data:`LEARN_EVERY_S`, or :data:`LEARN_MAX` reports' worth are held."""
        return bool(self._learning) and (t - self._learning[0][1] >= LEARN_EVERY_S
                                         or len(self._learning) + more >= LEARN_MAX)

    def _learn_now(self, conn: Connection, *new: tuple[Any, float]) -> None:
        """Write, in this transaction, the samples held in memory and then ``new``
        ones (``(samples, t)``, this transaction's own): what brokerage and the views
        read next includes every report.

        Learning a link's or a site's estimate is a locked read and a write of its row;
        made per report it was most of what the server did for a short analysis job.
        So reports' samples are held in memory and written together (the FTS optimizer
        likewise updates its estimates per interval, not per transfer), in the order
        reported, before anything reads them, with a report once the oldest waited
        :data:`LEARN_EVERY_S`, when a task changes state, and at every watchdog sweep.
        A server that dies loses what came since the last write (at most that second
        while reports come, else up to a watchdog interval), never a report; servers
        sharing one database each hold their own.  Samples are checked when taken
        (``links.samples``): one that could not be written would fail every write
        after it."""
        from panda_lab.store.rows import links as link_rows

        held, self._learning = self._learning, []
        if self._learning_taken is not None:
            self._learning_taken.extend(held)  # put back if the transaction rolls back
        batch = held + list(new)
        if batch:
            link_rows.learn_samples(conn, [b for b, _ in batch], batch[-1][1])

    def flush_learning(self) -> None:
        """Write what reports measured and is held in memory (see :meth:`_learn_now`)."""
        if self._learning:
            with self.tx() as conn:
                self._learn_now(conn)

    def close(self) -> None:
        """Close the database connections (no transaction; any thread may call it).  On
        the store's own thread, what reports measured is written first."""
        if self._learning and self._owner in (None, threading.current_thread()):
            try:
                self.flush_learning()
            except Exception:  # the database may be the reason for closing
                log.warning("could not write the links' and sites' last samples",
                            exc_info=True)
        self.engine.dispose()
