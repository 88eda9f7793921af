"""Request bodies over the server's limit are refused whatever they say of their length.

The kind of fault: a body limit that trusts what the client declares.  The server's own
check read ``Content-Length`` only, so a chunked body (no length said) of any size was
read whole into memory, before its token was checked: 1.2 GB sent without a token left a
server at 2.5 GB.  Members: a body that says a length over the limit (refused before it
is read); a chunked body over the limit, with and without a token (refused once it passes
the limit, nothing done); a chunked body under the limit (served as any other).  On an
app built with a limit of 10 kB, through the real app and store.
"""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

import panda_lab.server.app as app_module
from panda_lab.server.app import Server, create_app
from panda_lab.server.config import ServerConfig

LIMIT = 10_000


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setattr(app_module, "MAX_BODY", LIMIT)
    server = Server(ServerConfig(home=tmp_path / "home", provision=False))
    with TestClient(create_app(server)) as client:
        yield client, {"Authorization": f"Bearer {server.user_token}"}
    server.close()


def _chunked(body: bytes, piece: int = 1_000):
    """The body in pieces, as a generator: the client sends it chunked, no length said."""
    for i in range(0, len(body), piece):
        yield body[i:i + piece]


def _task_body(n_jobs: int) -> bytes:
    import orjson

    job = {"payload": base64.b64encode(b"x" * 30).decode()}
    return orjson.dumps({"name": "big", "jobs": [job] * n_jobs})


def test_a_chunked_body_over_the_limit_is_refused_with_or_without_a_token(app):
    client, user = app
    body = _task_body(1_000)
    assert len(body) > 5 * LIMIT
    for headers in ({}, user):
        r = client.post("/api/tasks", content=_chunked(body),
                        headers={**headers, "Content-Type": "application/json"})
        assert r.status_code == 413, (headers, r.status_code, r.text)
    assert client.get("/api/tasks", headers=user).json() == []  # nothing was done


def test_a_body_that_says_a_length_over_the_limit_is_refused(app):
    client, user = app
    body = _task_body(1_000)
    r = client.post("/api/tasks", content=body,
                    headers={**user, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert client.get("/api/tasks", headers=user).json() == []


def test_a_body_under_the_limit_is_served_chunked_or_not(app):
    client, user = app
    body = _task_body(20)
    assert len(body) < LIMIT
    for content in (_chunked(body, 100), body):
        r = client.post("/api/tasks", content=content,
                        headers={**user, "Content-Type": "application/json"})
        assert r.status_code == 201, r.text
    assert len(client.get("/api/tasks", headers=user).json()) == 2
