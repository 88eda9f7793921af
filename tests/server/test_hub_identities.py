"""A server run as a JupyterHub service identifies notebook users by their hub token,
through JupyterHub's own client (``HubAuth``) speaking to the hub's ``GET /hub/api/user``.

The hub here is a stand-in answering that one route as JupyterHub 6 does (the user model
for a known token, 403 for an unknown one), so that the cache, the hub being down and the
server's own tokens can be tested in-process; tests/browser/test_hub_spawned.py runs a real
JupyterHub.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient

from panda_lab.client.session import remote_token
from panda_lab.server.app import Server, create_app
from panda_lab.server.config import ServerConfig

SERVICE_TOKEN = "service-token-of-panda-lab"
HUB_USERS = {"hub-token-of-alice": {"kind": "user", "name": "alice", "admin": False},
             "hub-token-of-root": {"kind": "user", "name": "hubadmin", "admin": True},
             "hub-token-of-a-service": {"kind": "service", "name": "grafana"}}


class FakeHub(BaseHTTPRequestHandler):
    asked: list[str] = []

    def do_GET(self) -> None:
        token = self.headers.get("Authorization", "").removeprefix("token ")
        FakeHub.asked.append(self.path)
        model = HUB_USERS.get(token) if self.path == "/hub/api/user" else None
        body = json.dumps(model or {"status": 403, "message": "no such token"}).encode()
        self.send_response(200 if model else 403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def hub_app(tmp_path_factory):
    hub = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    home = tmp_path_factory.mktemp("hub-home")
    server = Server(ServerConfig(
        home=home, provision=False, hub_cache_s=0,
        hub_api_url=f"http://127.0.0.1:{hub.server_address[1]}/hub/api",
        hub_api_token=SERVICE_TOKEN))
    bob = server.store.add_user("bob", "user")
    with TestClient(create_app(server)) as client:
        yield client, server, bob, hub
    server.close()
    hub.shutdown()


def _as(token):
    return {"Authorization": f"Bearer {token}"}


def test_a_hub_user_is_known_by_the_hub_token_and_isolated(hub_app):
    client, _, bob, _ = hub_app
    r = client.post("/api/tasks", headers=_as("hub-token-of-alice"),
                    json={"name": "from-the-hub", "jobs": []})
    assert r.status_code == 201, r.text
    task = r.json()["task"]
    assert client.get(f"/api/tasks/{task}", headers=_as("hub-token-of-alice")
                      ).json()["owner"] == "alice"
    assert client.get(f"/api/tasks/{task}", headers=_as(bob)).status_code == 404
    # a hub admin is an admin here: sees alice's work
    assert client.get(f"/api/tasks/{task}", headers=_as("hub-token-of-root")).status_code == 200
    assert task in {t["id"] for t in client.get(
        "/api/tasks", params={"user": "alice"}, headers=_as("hub-token-of-root")).json()}


def test_tokens_the_hub_does_not_know_are_refused(hub_app):
    client, _, _, _ = hub_app
    FakeHub.asked.clear()
    for token in ("not-a-hub-token", "hub-token-of-a-service"):
        r = client.get("/api/tasks", headers=_as(token))
        assert r.status_code == 401, (token, r.text)
    assert FakeHub.asked == ["/hub/api/user"] * 2  # the hub was asked, by its own route


def test_the_server_own_tokens_never_reach_the_hub(hub_app):
    client, server, bob, _ = hub_app
    FakeHub.asked.clear()
    for token in (server.user_token, bob):
        assert client.get("/api/tasks", headers=_as(token)).status_code == 200
    assert FakeHub.asked == []


def test_a_hub_that_does_not_answer_is_a_503_not_a_500(tmp_path):
    server = Server(ServerConfig(home=tmp_path, provision=False, hub_cache_s=0,
                                 hub_api_url="http://127.0.0.1:9/hub/api",
                                 hub_api_token=SERVICE_TOKEN))
    try:
        with TestClient(create_app(server)) as client:
            r = client.get("/api/tasks", headers=_as("hub-token-of-alice"))
            assert r.status_code == 503 and "JupyterHub" in r.json()["detail"]
    finally:
        server.close()


def test_inside_jupyterhub_connect_needs_no_token_to_copy(monkeypatch):
    """What ``panda_lab.connect()`` sends inside a single-user server: its hub token."""
    for name in ("PANDA_LAB_TOKEN", "PANDA_LAB_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hub-token-of-alice")
    assert remote_token() == "hub-token-of-alice"
    monkeypatch.setenv("PANDA_LAB_TOKEN", "own")  # an explicit token wins
    assert remote_token() == "own"
