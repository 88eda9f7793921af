"""The merger's thread rule: every store call it makes runs on the store's owner thread.

A store stand-in records the thread of each call and refuses any but its owner's (the loop's
once it runs, the building thread before), as the store's transaction helper does; the
merger is the server's, with ``Server.db_from_thread`` as the one way off its thread.
"""

from __future__ import annotations

import asyncio
import pickle
import threading

import pytest

from panda_lab.analysis.runner import ChunkResult
from panda_lab.server.app import Server
from panda_lab.server.merger import PERSIST_EVERY, Merger


class OwnedStore:
    """The store calls the merger makes, over dicts, refusing calls off the owner thread."""

    def __init__(self, chunks: list[dict], results: dict[int, bytes]) -> None:
        self.owner = threading.current_thread()
        self.chunks, self.stored = chunks, results
        self.calls: list[tuple[str, str]] = []
        self.saved: list[tuple[set[int], int]] = []
        self.options: dict = {}

    def _check(self, name: str) -> None:
        here = threading.current_thread()
        self.calls.append((name, here.name))
        if here is not self.owner:
            raise AssertionError(f"{name} on thread {here.name}, not {self.owner.name}")

    def load_accumulator(self, task_id):
        self._check("load_accumulator")
        return None, set(), 0

    def task_options(self, task_id):
        self._check("task_options")
        return self.options

    def task_chunks(self, task_id):
        self._check("task_chunks")
        return list(self.chunks)

    def results(self, task_id, indices=None):
        self._check("results")
        return [{"index": i, "job_id": 100 + i, "data": d} for i, d in self.stored.items()
                if indices is None or i in indices]

    def result_sizes(self, task_id):
        self._check("result_sizes")
        return {i: len(d) for i, d in sorted(self.stored.items())}

    def save_accumulator(self, task_id, data, merged, events):
        self._check("save_accumulator")
        self.saved.append((set(merged), events))

    def analysis_tasks_to_merge(self):
        self._check("analysis_tasks_to_merge")
        return [1]


class LoopServer:
    """What the merger uses of a server: its store, loop, event stream and the real
    ``db``/``db_from_thread``."""

    db = Server.db
    db_from_thread = Server.db_from_thread

    def __init__(self, store: OwnedStore) -> None:
        self.store = store
        self.loop: asyncio.AbstractEventLoop | None = None
        self.announced: list[dict] = []

    def announce(self, kind: str, body: dict) -> None:
        self.announced.append(body)


def result(value, events: int) -> bytes:
    return pickle.dumps(ChunkResult(value, events, 0.1, 10.0))


def chunk(job_index: int, start: int, stop: int) -> dict:
    return {"job_index": job_index, "file_index": 0, "path": "/f.root", "tree": "Events",
            "start": start, "stop": stop}


CHUNKS = [chunk(0, 0, 10), chunk(1, 10, 20), chunk(2, 20, 30)]


async def on_the_loop(server: LoopServer, body):
    server.loop = asyncio.get_running_loop()
    server.store.owner = threading.current_thread()  # the loop takes the store over
    return await body()


def test_built_before_the_loop_merged_on_it_every_store_call_on_the_owner():
    """catch_up queues on the building thread; nothing merges until the loop runs; then
    the merger's reads and saves hop to the loop, and the loop awaits it without a thread."""
    big = result({"n": 5}, 10)
    store = OwnedStore(CHUNKS, {0: result({"n": 1}, 10), 1: big})
    server = LoopServer(store)
    merger = Merger(server)  # type: ignore[arg-type]
    merger.catch_up()                    # the building thread owns the store now
    assert merger.busy(1) and store.saved == []
    assert {t for _, t in store.calls} == {threading.current_thread().name}

    async def body():
        merger.submit(1, 2, 102, None)   # a large result: read from the store
        store.stored[2] = result({"n": 10}, 10)
        assert merger.busy(1)
        merger.start()
        await asyncio.wait_for(merger.settled(1), 10)
        assert not merger.busy(1)
        merger.finalize(1)
        await asyncio.wait_for(merger.settled(1), 10)
        await merger.close()
        return merger.snapshot(1)

    data, n_merged, events, final, error = asyncio.run(on_the_loop(server, body))
    assert error is None and final  # catch_up's flush: the task had ended
    assert pickle.loads(data) == {"n": 16} and (n_merged, events) == (3, 30)
    assert store.saved[-1] == ({0, 1, 2}, 30)
    assert server.announced[-1] == {"task": 1, "events": 30, "jobs_merged": 3}
    names = {name for name, _ in store.calls}
    assert {"results", "task_chunks", "save_accumulator"} <= names
    assert "panda-merger" not in {t for _, t in store.calls}
    assert not merger._thread.is_alive()


def test_a_merge_error_reaches_the_service_with_its_input():
    store = OwnedStore(CHUNKS, {})
    server = LoopServer(store)
    errors: list[tuple[int, dict, str]] = []
    merger = Merger(server, on_error=lambda task, err: errors.append(  # type: ignore[arg-type]
        (task, err, threading.current_thread().name)))

    async def body():
        merger.start()
        merger.submit(1, 0, 100, result({"n": 1}, 10))
        merger.submit(1, 1, 101, result("text", 10))  # a number against a text: refused
        merger.submit(1, 2, 102, result({"n": 1}, 10))  # not merged after the error
        await asyncio.wait_for(merger.settled(1), 10)
        await merger.close()

    asyncio.run(on_the_loop(server, body))
    ((task, err, thread),) = errors
    assert task == 1 and thread == "panda-merger"
    assert err["job_index"] == 1 and err["job_id"] == 101
    assert [c["start"] for c in err["chunks"]] == [10]
    assert merger.merged(1) == {0} and merger.error(1) == err
    assert "panda-merger" not in {t for _, t in store.calls}


def test_without_a_running_loop_the_merger_does_not_reach_the_store():
    """db_from_thread refuses when the loop is not running: the merger never opens a
    transaction itself instead."""
    store = OwnedStore(CHUNKS, {})
    server = LoopServer(store)
    with pytest.raises(RuntimeError, match="not running"):
        server.db_from_thread(store.task_chunks, 1)
    assert store.calls == []


def test_a_closed_merger_starts_again_with_what_was_queued():
    """The app of one server may be started again (its lifespan): what was queued while
    the merger was stopped is merged once it runs again."""
    store = OwnedStore(CHUNKS, {})
    server = LoopServer(store)
    merger = Merger(server)  # type: ignore[arg-type]

    async def first():
        merger.start()
        merger.submit(1, 0, 100, result({"n": 1}, 10))
        await asyncio.wait_for(merger.settled(1), 10)
        await merger.close()
        merger.submit(1, 1, 101, result({"n": 2}, 10))
        await asyncio.sleep(PERSIST_EVERY / 2)
        assert merger.busy(1) and merger.merged(1) == {0}

    async def second():
        merger.start()
        await asyncio.wait_for(merger.settled(1), 10)
        await merger.close()

    asyncio.run(on_the_loop(server, first))
    asyncio.run(on_the_loop(server, second))
    assert merger.merged(1) == {0, 1} and not merger.busy(1)
    assert "panda-merger" not in {t for _, t in store.calls}
