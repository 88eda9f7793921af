"""The server serves the one vocabulary of states, and hands other threads' store calls
to the loop that owns the store.

Kind tested: a state name or named set that a client retypes instead of reading from
``panda_lab.model.states`` (the retry rule had drifted between the server, the widget
and the panel this way).  Members: every set in the document equals the Python set it
names; the retry rule the store applies is the one served.
"""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from panda_lab.model import states as st
from panda_lab.server.app import Server, create_app
from panda_lab.server.config import ServerConfig


@pytest.fixture(scope="module")
def server_app(tmp_path_factory):
    server = Server(ServerConfig(home=tmp_path_factory.mktemp("vocab"), provision=False))
    yield server, create_app(server)
    server.close()


def test_states_document_is_the_models_sets(server_app):
    server, app = server_app
    with TestClient(app) as client:
        doc = client.get("/api/states",
                         headers={"Authorization": f"Bearer {server.user_token}"}).json()
    assert doc == st.vocabulary()
    assert doc["job_states"] == [s.value for s in st.JobState]
    for key, named in [("task_final", st.TASK_FINAL), ("task_retryable", st.TASK_RETRYABLE),
                       ("job_final", st.JOB_FINAL), ("job_queued", st.JOB_QUEUED),
                       ("job_active", st.JOB_ACTIVE), ("job_retryable", st.JOB_RETRYABLE),
                       ("pilot_final", st.PILOT_FINAL)]:
        assert set(doc[key]) == {str(s) for s in named}, key
    # the ready task may be retried (the store allows it); aborted and done may not
    assert "ready" in doc["task_retryable"]
    assert "aborted" not in doc["task_retryable"] and "done" not in doc["task_retryable"]


def test_db_from_thread_runs_on_the_loop_and_refuses_without_one(server_app):
    server, app = server_app
    with pytest.raises(RuntimeError, match="not running"):
        server.db_from_thread(server.store.list_sites)
    with TestClient(app) as client:
        loop_thread: list[int] = []

        def probe() -> str:
            loop_thread.append(threading.get_ident())
            return "ok"

        out: list = []
        t = threading.Thread(target=lambda: out.append(server.db_from_thread(probe, timeout=10)))
        t.start()
        # the loop runs in the TestClient's portal thread; let it serve the call
        client.get("/api/info", headers={"Authorization": f"Bearer {server.user_token}"})
        t.join(10)
        assert out == ["ok"]
        assert loop_thread and loop_thread[0] != t.ident
