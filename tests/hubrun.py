"""A real JupyterHub for the tests, started on 127.0.0.1, with panda-lab as one of its
managed services (``panda-lab server run --jupyterhub``, the command JupyterHub starts
with ``JUPYTERHUB_API_URL`` and the service's ``JUPYTERHUB_API_TOKEN``), and a service of
the test's own (``token-issuer``) that issues the hub users' tokens and starts their
servers through the hub's REST API.

The hub runs with a proxy that only keeps its routes table: configurable-http-proxy (a
node program, not in the test environment) would route a browser's traffic under one
address; here each single-user server is reached at its own address, which the hub's
``GET /hub/api/proxy`` (the routes table) gives.  So the hub, the spawner, the
authenticator and the single-user servers are JupyterHub's own, and only the one hop a
proxy adds is left out.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from harness import free_port, wait_for

HUB_CONFIG = '''
import sys
from jupyterhub.proxy import Proxy


class RoutesTableProxy(Proxy):
    """A proxy that keeps the hub's routes and routes nothing."""

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
# the hub's API answers a request to start a server at once (202), not after 10 s
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
c.Authenticator.allowed_users = {users!r}
c.Authenticator.admin_users = {admins!r}
c.JupyterHub.services = [
    {{"name": "panda-lab",
      "command": [sys.executable, "-m", "panda_lab.cli.main", "--home", "{panda_home}",
                  "server", "run", "--jupyterhub", "--no-pilots", "--port", "{panda_port}"],
      "environment": {{"PYTHONPATH": {pythonpath!r}}}}},
    {{"name": "token-issuer", "api_token": "{issuer_token}"}},
]
c.JupyterHub.load_roles = [
    {{"name": "token-issuer", "scopes": ["tokens", "admin:users", "servers", "admin:server_state",
                                       "proxy"],
      "services": ["token-issuer"]}},
]
'''


class Hub:
    """One JupyterHub process in ``hub_dir`` (its config, database, log), its panda-lab
    service's home in ``hub_dir/panda``.  ``users``: the hub's allowed users, ``admins``
    those of them who are hub admins.  :meth:`add_config` before :meth:`start`, then
    :meth:`stop`."""

    def __init__(self, hub_dir: Path, users: set[str], admins: set[str]) -> None:
        self.dir = hub_dir
        self.panda_home = hub_dir / "panda"
        self.panda_home.mkdir(exist_ok=True)
        self.hub_port, self.panda_port = free_port(), free_port()
        self.issuer = secrets.token_hex(16)
        #: The hub's REST API, e.g. ``http://127.0.0.1:8081/hub/api``.
        self.api = f"http://127.0.0.1:{self.hub_port}/hub/api"
        #: The panda-lab service's URL, as users set it in ``PANDA_LAB_URL``.
        self.panda_url = f"http://127.0.0.1:{self.panda_port}"
        config = HUB_CONFIG.format(
            public_port=free_port(), hub_port=self.hub_port, hub_dir=hub_dir,
            users=set(users), admins=set(admins), panda_home=self.panda_home,
            panda_port=self.panda_port, issuer_token=self.issuer,
            pythonpath=os.pathsep.join(p for p in sys.path if p))
        (hub_dir / "jupyterhub_config.py").write_text(config)
        self.proc: subprocess.Popen | None = None

    def add_config(self, text: str) -> None:
        """Append ``text`` (Python, ``c.Spawner...`` lines) to the hub's
        ``jupyterhub_config.py``; only before :meth:`start`."""
        with open(self.dir / "jupyterhub_config.py", "a") as f:
            f.write(text)

    def start(self, timeout: float = 60.0) -> Hub:
        """Start the hub and wait until its panda-lab service answers; ``RuntimeError``
        or ``TimeoutError`` with the logs' tails when either does not come up."""
        self.log = open(self.dir / "hub.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(self.dir / "jupyterhub_config.py")],
            cwd=self.dir, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyterhub exited ({self.proc.returncode}):\n{self.tail()}")
            return _answers(self.panda_url)

        try:
            wait_for(up, timeout, what="the hub and its panda-lab service")
        except AssertionError as exc:  # wait_for timed out
            raise TimeoutError(f"{exc}\n{self.tail()}") from None
        return self

    def client(self) -> httpx.Client:
        """An HTTP client of the hub's API with the issuer service's token."""
        return httpx.Client(base_url=self.api, timeout=30,
                            headers={"Authorization": f"token {self.issuer}"})

    def token(self, name: str, scopes: list[str] | None = None) -> str:
        """A new hub token of user ``name`` (all its own permissions, or ``scopes``)."""
        body = {"note": "panda-lab test", **({"scopes": scopes} if scopes else {})}
        with self.client() as c:
            r = c.post(f"/users/{name}/tokens", json=body)
        assert r.status_code == 201, (name, r.text, self.tail())
        return r.json()["token"]

    def spawn(self, names: list[str], timeout: float = 90.0) -> dict[str, str]:
        """Start the single-user servers of ``names`` through the hub (all at once, as
        users pressing "Start My Server" would) and wait until the hub calls each ready.
        Returns ``{name: its base URL}`` (``http://127.0.0.1:PORT/user/NAME/``, the
        spawner's address under the user's prefix).  ``RuntimeError`` with the hub's log
        when the hub gives up on one (its spawner failed), ``TimeoutError`` after
        ``timeout`` seconds."""
        with self.client() as c:
            for name in names:
                r = c.post(f"/users/{name}/server")
                if r.status_code not in (201, 202):
                    raise RuntimeError(f"the hub refused to start {name}'s server "
                                       f"({r.status_code} {r.text}):\n{self.tail()}")

            def ready() -> bool:
                for name in names:
                    server = c.get(f"/users/{name}").json()["servers"].get("")
                    if server is None:  # the spawn failed and the hub cleared it
                        raise RuntimeError(f"the hub could not start {name}'s server:\n"
                                           f"{self.tail()}")
                    if not server["ready"]:
                        # the hub waits its http_timeout for a server that died at start
                        pid = (server.get("state") or {}).get("pid")
                        if pid and not _running(pid):
                            raise RuntimeError(f"{name}'s server (pid {pid}) exited "
                                               f"before it answered:\n{self.tail()}")
                        return False
                return True

            try:
                wait_for(ready, timeout, interval=0.3, what="the single-user servers")
            except AssertionError as exc:  # wait_for timed out
                raise TimeoutError(f"{exc}\n{self.tail()}") from None
            routes = c.get("/proxy").json()
        return {name: routes[f"/user/{name}/"]["target"] + f"/user/{name}/" for name in names}

    def tail(self) -> str:
        """The last lines of the hub's log (with what the single-user servers wrote: a
        local spawner's servers write to the hub's output) and of its panda-lab service's
        log."""
        server_log = self.panda_home / "logs" / "server.log"
        lines = (self.dir / "hub.log").read_text(errors="replace").splitlines()
        hub = "\n".join([line for line in lines if " 200 GET /hub/api/" not in line][-40:])
        return (hub + "\n"
                + (server_log.read_text(errors="replace")[-2000:]
                   if server_log.exists() else ""))

    def stop(self) -> None:
        """Stop the single-user servers, then panda-lab (SIGTERM, as an operator stops a
        service: the servers first, so the event streams their panels hold at panda-lab
        close and panda-lab need not wait them out; the hub would stop each in turn,
        giving each its ``interrupt_timeout``), then the hub, then anything of this hub
        left running."""
        import psutil

        if self.proc is None:
            _kill_leftovers(str(self.dir))
            return
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            children = []
        service = [c for c in children if "panda_lab.cli.main" in " ".join(_cmdline(c))]
        try:
            for group in ([c for c in children if c not in service], service):
                for child in group:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        child.terminate()
                # the hub, their parent, reaps them: until then they are zombies
                wait_for(lambda group=group: not any(_running(c.pid) for c in group), 30,
                         what="panda-lab and the single-user servers to stop")
        finally:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.log.close()
            _kill_leftovers(str(self.dir))


def _cmdline(process) -> list[str]:
    import psutil

    try:
        return process.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return []


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited but not reaped, does not)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/api/info", timeout=2).status_code == 401  # up, wants a token
    except httpx.HTTPError:
        return False


def _kill_leftovers(marker: str) -> None:
    """Kill the processes whose command line or working directory holds ``marker``."""
    import psutil

    for p in psutil.process_iter(["cmdline", "cwd"]):
        mine = marker in " ".join(p.info["cmdline"] or []) or marker in (p.info["cwd"] or "")
        if mine and p.pid != os.getpid():
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


def run_notebook(base: str, token: str, path: str, cells: list[str],
                 timeout: float = 60.0) -> list[str]:
    """Run a notebook in a Jupyter server the way JupyterLab does, through the server's
    REST API: save it (``PUT api/contents/PATH``, code cells ``cells``), open a session on
    it (``POST api/sessions``: the server starts the kernel, in its own environment), and
    execute each cell as stored there over the kernel's websocket (Jupyter's messaging
    protocol, ``execute_request``).  ``base``: the server's URL with its prefix and a
    trailing slash; ``token``: a token the server takes.  Returns each cell's output (its
    streams and results, as text).  ``AssertionError`` naming the cell and the kernel's
    traceback when a cell raises; ``TimeoutError`` when one runs past ``timeout``
    seconds."""
    import json
    import uuid

    import nbformat
    import websocket

    headers = {"Authorization": f"token {token}"}
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    with httpx.Client(base_url=base, headers=headers, timeout=30) as c:
        r = c.put(f"api/contents/{path}", json={"type": "notebook", "content": nb})
        assert r.status_code in (200, 201), (r.status_code, r.text)
        r = c.post("api/sessions", json={"path": path, "type": "notebook",
                                         "kernel": {"name": "python3"}})
        assert r.status_code == 201, (r.status_code, r.text)
        kernel = r.json()["kernel"]["id"]
        stored = c.get(f"api/contents/{path}").json()["content"]["cells"]
    ws = websocket.create_connection(
        base.replace("http", "ws", 1) + f"api/kernels/{kernel}/channels",
        header=[f"Authorization: token {token}"], timeout=timeout)
    session, outputs = uuid.uuid4().hex, []
    try:
        for n, cell in enumerate(stored):
            msg_id = uuid.uuid4().hex
            ws.send(json.dumps({
                "header": {"msg_id": msg_id, "session": session, "username": "",
                           "msg_type": "execute_request", "version": "5.3"},
                "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                "content": {"code": cell["source"], "silent": False, "store_history": True,
                            "user_expressions": {}, "allow_stdin": False,
                            "stop_on_error": True}}))
            text, deadline = [], time.monotonic() + timeout
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"cell {n} ran past {timeout} s: {cell['source']!r}")
                msg = json.loads(ws.recv())
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    text.append(content["text"])
                elif kind in ("execute_result", "display_data"):
                    text.append(content["data"].get("text/plain", ""))
                elif kind == "error":
                    raise AssertionError(f"cell {n} raised {content['ename']}: "
                                         f"{content['evalue']}\n{cell['source']}\n"
                                         + "\n".join(content["traceback"]))
                elif kind == "status" and content["execution_state"] == "idle":
                    break
            outputs.append("".join(text))
    finally:
        ws.close()
    return outputs
