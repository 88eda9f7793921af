"""Counts of events and bytes beyond 32 bits, on SQLite and PostgreSQL.

The kind: "a count column narrower than what it counts".  PostgreSQL's INTEGER is 32-bit,
so a real file of 3 GB could not be registered there (a 500 from the server).  Its
members, each tested here with a value past 2**31: a file's size and entries, a dataset's
size and events, a chunk's entry range, a result's size, the merged accumulator's events.
An older PostgreSQL database made with 32-bit columns is widened when a store opens it.
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect, select, text

from panda_lab.store import Store
from panda_lab.store.base import widen_integer_columns
from panda_lab.store.schema import accumulators, chunks, datasets, files, results

BIG = 3 * 2**31 + 7  # past PostgreSQL's INTEGER, well within BIGINT


def _file(i: int) -> dict:
    return {"path": f"/data/big{i}.root", "tree": "Events", "entries": BIG,
            "size_bytes": BIG, "clusters": [0, BIG], "branches": []}


def test_counts_past_32_bits_are_kept(db_url, tmp_path):
    store = Store(db_url, tmp_path / "results")
    ds = store.register_dataset("big", "Events", [_file(0), _file(1)])
    engine = store.engine
    with engine.begin() as conn:
        row = conn.execute(select(datasets).where(datasets.c.id == ds)).one()
        assert (row.n_events, row.size_bytes) == (2 * BIG, 2 * BIG)
        sizes = conn.execute(select(files.c.entries, files.c.size_bytes)
                             .where(files.c.dataset_id == ds)).all()
        assert sizes == [(BIG, BIG), (BIG, BIG)]
        conn.execute(chunks.insert().values(task_id=1, job_index=0, file_index=0,
                                            path="/data/big0.root", tree="Events",
                                            start=BIG - 10, stop=BIG, scout=False))
        conn.execute(results.insert().values(task_id=1, job_index=0, job_id=1, size=BIG))
        conn.execute(accumulators.insert().values(task_id=1, merged="[]", events=BIG,
                                                  updated_at=0.0))
        assert conn.execute(select(chunks.c.start, chunks.c.stop)).one() == (BIG - 10, BIG)
        assert conn.execute(select(results.c.size)).scalar_one() == BIG
        assert conn.execute(select(accumulators.c.events)).scalar_one() == BIG


@pytest.mark.postgresql
def test_an_older_postgresql_database_is_widened(postgres, tmp_path):
    url = postgres.new_database()
    Store(url, tmp_path / "results")  # today's schema
    engine = create_engine(url)
    narrowed = ["files.size_bytes", "files.entries", "datasets.n_events", "chunks.stop"]
    with engine.begin() as conn:  # as an older version made them
        for name in narrowed:
            table, col = name.split(".")
            conn.execute(text(f'ALTER TABLE {table} ALTER COLUMN "{col}" TYPE INTEGER'))
    kinds = {c["name"]: str(c["type"]) for c in inspect(engine).get_columns("files")}
    assert kinds["size_bytes"] == "INTEGER"

    store = Store(url, tmp_path / "results")  # opening it widens them
    kinds = {c["name"]: str(c["type"]) for c in inspect(engine).get_columns("files")}
    assert kinds["size_bytes"] == "BIGINT" and kinds["entries"] == "BIGINT"
    assert store.register_dataset("big", "Events", [_file(0)]) > 0
    assert widen_integer_columns(store.engine) == []  # nothing left to widen
    engine.dispose()
