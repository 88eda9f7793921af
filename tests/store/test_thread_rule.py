"""The store's thread rule: once bound, a store opens transactions on its owner thread
only; any other thread goes through ``Server.db_from_thread``.

Kind tested: a thread (the analysis merger, a provisioner's ``asyncio.to_thread``) that
calls the store directly, racing the event loop that owns it.  Members: a plain store
bound to a thread refuses another, and says which threads and what to do; rebinding
moves the ownership; the server binds its store at creation and then on its event loop
at startup, where a direct call from another thread fails and the same call through
``Server.db_from_thread`` works.
"""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from panda_lab.server.app import Server, create_app
from panda_lab.server.config import ServerConfig
from panda_lab.store import Store, StoreThreadError


def on_thread(fn, *args, name: str = "other"):
    """Run ``fn`` on a new thread: ``("ok", value)`` or ``("raised", exception)``."""
    out: list = []

    def run() -> None:
        try:
            out.append(("ok", fn(*args)))
        except BaseException as exc:  # reported to the caller
            out.append(("raised", exc))

    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    t.join(30)
    assert out, f"{fn} hung on thread {name}"
    return out[0]


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "results")
    s.upsert_sites([{"name": "A", "kind": "local", "provisioner": "local"}])
    yield s
    s.close()


def test_a_bound_store_refuses_another_thread_and_names_both(store):
    store.bind_to_current_thread()
    assert store.owner is threading.current_thread()
    kind, exc = on_thread(store.list_sites, name="merger")
    assert kind == "raised" and isinstance(exc, StoreThreadError)
    assert isinstance(exc, RuntimeError)
    msg = str(exc)
    assert "'merger'" in msg and repr(threading.current_thread().name) in msg
    assert "Server.db_from_thread" in msg
    # a write is refused the same way, and nothing is written
    kind, exc = on_thread(store.set_site_state, "A", "offline", "x")
    assert kind == "raised" and isinstance(exc, StoreThreadError)
    assert store.list_sites()[0]["state"] == "online"  # the owner still works


def test_rebinding_moves_the_ownership(store):
    store.bind_to_current_thread()
    holder: dict = {}

    def take() -> str:
        store.bind_to_current_thread()
        holder["thread"] = threading.current_thread()
        return store.site_names()[0]

    assert on_thread(take, name="new-owner") == ("ok", "A")
    assert store.owner is holder["thread"]
    with pytest.raises(StoreThreadError, match="'new-owner'"):
        store.site_names()


def test_an_unbound_store_serves_the_thread_that_calls_it(store):
    """A store nobody bound (a script, a test, one of several processes sharing a
    PostgreSQL database) has no owner to protect."""
    assert store.owner is None
    assert on_thread(store.site_names) == ("ok", ["A"])
    assert store.site_names() == ["A"]


def test_the_server_store_is_called_from_other_threads_only_through_the_loop(tmp_path):
    server = Server(ServerConfig(home=tmp_path / "home", provision=False))
    try:
        # made on this thread: owned by it until the loop takes it over
        assert server.store.owner is threading.current_thread()
        kind, exc = on_thread(server.store.list_sites)
        assert kind == "raised" and isinstance(exc, StoreThreadError)
        with TestClient(create_app(server)):
            loop_thread = server.db_from_thread(threading.current_thread, timeout=10)
            assert server.store.owner is loop_thread is not threading.current_thread()
            # a direct call, from this thread or any other, is refused...
            with pytest.raises(StoreThreadError, match="db_from_thread"):
                server.store.list_sites()
            kind, exc = on_thread(server.store.get_task, 1, name="provisioner")
            assert kind == "raised" and isinstance(exc, StoreThreadError)
            assert "'provisioner'" in str(exc)
            # ...and the same calls through the loop work
            kind, sites = on_thread(server.db_from_thread, server.store.list_sites, name="p2")
            assert kind == "ok" and {s["name"] for s in sites} == {
                s.name for s in server.config.sites}
            task_id, _, _ = server.db_from_thread(server.store.create_task, "t", [])
            kind, task = on_thread(
                lambda: server.db_from_thread(server.store.get_task, task_id, timeout=10))
            assert kind == "ok" and task["id"] == task_id
    finally:
        server.close()
