"""A real JupyterHub, started here on 127.0.0.1, runs panda-lab as one of its managed
services (``panda-lab server run --jupyterhub``, the command JupyterHub starts with
``JUPYTERHUB_API_URL`` and the service's ``JUPYTERHUB_API_TOKEN``); the hub's users reach
it with their hub tokens, as ``panda_lab.connect()`` does inside a single-user server.

What it shows: each hub user's token identifies that user at panda-lab (through
JupyterHub's own ``HubAuth``), each sees and acts on their own tasks only, a hub admin is
an admin at panda-lab, and a token the hub does not know is refused.

Nothing is spawned (no single-user server is needed to hold a hub token), so the hub runs
with a proxy that only keeps its routes table: configurable-http-proxy (node) would route
browser traffic, and no browser is involved; every request here goes to the hub's own API
port or to panda-lab directly.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import jupyterhub  # the test extra installs it: missing is a failure, not a skip
import pytest
from harness import wait_for

from panda_lab import runtime
from panda_lab.client.session import connect
from panda_lab.model.states import TaskState

pytestmark = pytest.mark.slow

HUB_CONFIG = '''
import sys
from jupyterhub.proxy import Proxy


class RoutesTableProxy(Proxy):
    """A proxy that keeps the hub's routes and routes nothing (no browser here)."""

    should_start = False
    routes = {{}}

    async def add_route(self, routespec, target, data):
        self.routes[routespec] = {{"routespec": routespec, "target": target, "data": data}}

    async def delete_route(self, routespec):
        self.routes.pop(routespec, None)

    async def get_all_routes(self):
        return dict(self.routes)


c.JupyterHub.proxy_class = RoutesTableProxy
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {public_port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.db_url = "sqlite:///{hub_dir}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{hub_dir}/cookie_secret"
c.JupyterHub.pid_file = "{hub_dir}/hub.pid"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {{"alice", "bob"}}
c.Authenticator.admin_users = {{"root"}}
c.JupyterHub.services = [
    {{"name": "panda-lab",
      "command": [sys.executable, "-m", "panda_lab.cli.main", "--home", "{panda_home}",
                  "server", "run", "--jupyterhub", "--no-pilots"],
      "environment": {{"PYTHONPATH": {pythonpath!r}}}}},
    {{"name": "token-issuer", "api_token": "{issuer_token}"}},
]
c.JupyterHub.load_roles = [
    {{"name": "token-issuer", "scopes": ["tokens", "admin:users"],
      "services": ["token-issuer"]}},
]
'''



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """``(panda-lab URL, {hub user: hub token}, hub API URL)``."""
    hub_dir = tmp_path_factory.mktemp("hub")
    panda_home = hub_dir / "panda"
    panda_home.mkdir()
    hub_port, issuer = _free_port(), secrets.token_hex(16)
    (hub_dir / "jupyterhub_config.py").write_text(HUB_CONFIG.format(
        public_port=_free_port(), hub_port=hub_port, hub_dir=hub_dir,
        panda_home=panda_home, issuer_token=issuer,
        pythonpath=os.pathsep.join(p for p in sys.path if p)))
    log = open(hub_dir / "hub.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f",
                             str(hub_dir / "jupyterhub_config.py")], cwd=hub_dir,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{hub_port}/hub/api"

    def tail() -> str:
        return (hub_dir / "hub.log").read_text(errors="replace")[-3000:] + (
            (panda_home / "logs" / "server.log").read_text(errors="replace")[-2000:]
            if (panda_home / "logs" / "server.log").exists() else "")

    try:
        def up():
            assert proc.poll() is None, tail()
            info = runtime.read_connection(panda_home)
            return info if info and _answers(info["url"]) else None

        info = wait_for(up, 60, what="the hub and its panda-lab service")
        tokens = {}
        with httpx.Client(base_url=api, headers={"Authorization": f"token {issuer}"},
                          timeout=10) as c:
            for name in ("alice", "bob", "root"):
                r = c.post(f"/users/{name}/tokens", json={"note": "panda-lab test"})
                assert r.status_code == 201, (name, r.text, tail())
                tokens[name] = r.json()["token"]
                # the scopes of a single-user server's JUPYTERHUB_API_TOKEN (its 'server'
                # role), less access to the server itself: none is spawned here
                r = c.post(f"/users/{name}/tokens", json={"note": "as a single-user server",
                                                          "scopes": ["users:activity!user"]})
                assert r.status_code == 201, (name, r.text)
                tokens[f"{name}-server"] = r.json()["token"]
        yield info["url"], tokens, api
    finally:
        _stop_service(panda_home)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        _kill_leftovers(panda_home)


def _stop_service(panda_home: Path) -> None:
    """SIGTERM to panda-lab first, as an operator stops a service: the hub would send
    SIGINT and could wait its ``interrupt_timeout`` (10 s) before anything else."""
    import psutil

    info = runtime.read_connection(panda_home)
    if not info:
        return
    try:
        service = psutil.Process(info["pid"])
        service.terminate()
        wait_for(lambda: service.status() == psutil.STATUS_ZOMBIE, 20,
                 what="panda-lab to stop")  # the hub, its parent, reaps it
    except psutil.NoSuchProcess:
        pass


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/api/info", timeout=2).status_code == 401  # up, wants a token
    except httpx.HTTPError:
        return False


def _kill_leftovers(panda_home: Path) -> None:
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        if str(panda_home) in " ".join(p.info["cmdline"] or []):
            p.kill()


def square(x):
    return x * x


def test_each_hub_user_is_themselves_and_sees_only_their_own(hub, monkeypatch):
    url, tokens, _ = hub
    ids = {}
    for name in ("alice", "bob"):
        # inside a single-user server: the URL is configured, the token is the hub's
        monkeypatch.setenv("PANDA_LAB_URL", url)
        monkeypatch.setenv("JUPYTERHUB_API_TOKEN", tokens[name])
        monkeypatch.delenv("PANDA_LAB_TOKEN", raising=False)
        monkeypatch.delenv("PANDA_LAB_TOKEN_FILE", raising=False)
        lab = connect()
        try:
            ids[name] = lab.submit(square, [(i,) for i in range(3)], name=f"hub-{name}")
            assert [(t["id"], t["owner"]) for t in lab.list_tasks()] == [(ids[name], name)]
        finally:
            lab.close()
    other = {"alice": "bob", "bob": "alice"}
    for name in ("alice", "bob"):
        h = {"Authorization": f"Bearer {tokens[name]}"}
        theirs = ids[other[name]]
        assert httpx.get(f"{url}/api/tasks/{theirs}", headers=h).status_code == 404
        assert httpx.post(f"{url}/api/tasks/{theirs}/kill", headers=h).status_code == 404
        r = httpx.get(f"{url}/api/tasks", params={"user": other[name]}, headers=h)
        assert r.status_code == 403
        assert httpx.get(f"{url}/api/counts", headers=h).json()["waiting"] == 3
        assert httpx.get(f"{url}/metrics", headers=h).status_code == 403  # everyone's

    # the hub's admin is an admin here: everyone's tasks, filterable, and acts on them
    h = {"Authorization": f"Bearer {tokens['root']}"}
    seen = {t["id"]: t["owner"] for t in httpx.get(f"{url}/api/tasks", headers=h).json()}
    assert seen == {ids["alice"]: "alice", ids["bob"]: "bob"}
    only = httpx.get(f"{url}/api/tasks", params={"user": "bob"}, headers=h).json()
    assert [t["id"] for t in only] == [ids["bob"]]
    assert httpx.get(f"{url}/api/counts", headers=h).json()["waiting"] == 6
    assert httpx.post("{}/api/tasks/{}/kill".format(url, ids["alice"]),
                      headers=h).status_code == 200
    alice = {"Authorization": f"Bearer {tokens['alice']}"}
    task = httpx.get("{}/api/tasks/{}".format(url, ids["alice"]), headers=alice).json()
    assert task["state"] == TaskState.ABORTED
    assert httpx.get(f"{url}/metrics", headers=h).status_code == 200


def test_a_single_user_servers_narrow_token_keeps_who_and_what(hub):
    """Such a token holds only the scopes of JupyterHub's ``server`` role; the hub adds
    its owner's identify scopes (``read:users:name``), which carry the ``admin`` flag, so
    a hub admin in a notebook is an admin here too."""
    url, tokens, api = hub
    for name in ("alice", "root"):
        token = tokens[f"{name}-server"]
        me = httpx.get(f"{api}/user", headers={"Authorization": f"token {token}"}).json()
        assert me["name"] == name and me["admin"] == (name == "root")  # what the hub says
        assert "read:users!user" not in me["scopes"]  # a narrow token indeed
        h = {"Authorization": f"Bearer {token}"}
        r = httpx.post(f"{url}/api/tasks", headers=h, json={"name": f"narrow-{name}",
                                                            "jobs": []})
        assert r.status_code == 201, r.text
        task = httpx.get("{}/api/tasks/{}".format(url, r.json()["task"]), headers=h).json()
        assert task["owner"] == name
        # only the admin sees everyone's: the metrics, and the other user's work
        assert httpx.get(f"{url}/metrics", headers=h).status_code == (
            200 if name == "root" else 403)


def test_a_token_the_hub_does_not_know_is_refused(hub):
    url, tokens, api = hub
    r = httpx.get(f"{url}/api/tasks", headers={"Authorization": f"Bearer {'x' * 43}"})
    assert r.status_code == 401
    # the hub itself agrees on who holds each token (its API, not ours)
    for name in ("alice", "bob", "root"):
        token = tokens[name]
        me = httpx.get(f"{api}/user", headers={"Authorization": f"token {token}"}).json()
        assert me["name"] == name and me["admin"] == (name == "root")


def test_module_runs_a_real_hub(hub):
    """The hub is JupyterHub's own process and API, not a stand-in."""
    _, _, api = hub
    version = httpx.get(api + "/").json()["version"]
    assert version == jupyterhub.__version__
