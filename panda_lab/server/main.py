"""Running the server: in the foreground (``panda-lab server run``) or detached.

The server is its own process, never the notebook kernel: work outlives a kernel
restart.  A detached server writes the connection file once it listens; clients find
it there, and a restarted server reuses the port in it so its pilots find it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import uvicorn

from panda_lab import runtime
from panda_lab.http import ApiClient, ApiError, ServerUnreachable
from panda_lab.model.states import JobState, PilotState
from panda_lab.provisioners import PilotSpec, Provisioner, make_provisioner
from panda_lab.server.app import Server, create_app
from panda_lab.server.config import ServerConfig

log = logging.getLogger("panda_lab.server")


class ServerError(RuntimeError):
    """A server process could not be started: no port to bind, it exited at once (the
    message carries its log's tail), or it did not answer in time."""


def _pilots_gone(server: Server, site: str, gone: list[tuple[int, int | None]]) -> None:
    """A local provisioner saw pilot processes end: fail their jobs now (the retry rules
    act at once) rather than after the heartbeat timeout.  Called on the event loop (the
    store's thread), as are the provisioners' other callbacks."""
    changes = server.store.pilots_gone(site, socket.gethostname(), gone)
    if changes.jobs:
        log.warning("%s: %d job(s) lost with their pilot(s) %s", site,
                    sum(c.state == JobState.FAILED for c in changes.jobs), [p for p, _ in gone])
    server.publish(changes)


def _bind(host: str, port: int, fallback_port: int | None) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for p in ([fallback_port] if fallback_port and not port else []) + [port]:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit this.  Without it a keep-alive GET waits on the
        # client's delayed ACK before its response body leaves: 44 ms instead of 0.5 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((host, p))
        except OSError:
            sock.close()
            if p == port:
                raise
            continue
        sock.listen(2048)
        sock.set_inheritable(True)
        return sock
    raise ServerError("no port to bind")  # pragma: no cover - the loop always returns or raises


class _Uvicorn(uvicorn.Server):
    """On SIGTERM/SIGINT: answers the requests held open (:meth:`Server.begin_stop`),
    stops the pilots while the API still answers their last reports, then shuts down as
    uvicorn does."""

    def __init__(self, config: uvicorn.Config, provisioners: list[Provisioner],
                 server: Server | None = None) -> None:
        super().__init__(config)
        self.provisioners = provisioners
        self.lab_server = server
        self._draining = False

    def handle_exit(self, sig: int, frame: object) -> None:
        if self.lab_server is not None:  # on the loop, not inside the signal handler
            asyncio.get_event_loop().call_soon_threadsafe(self.lab_server.begin_stop)
        if self._draining or not self.provisioners:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        asyncio.get_event_loop().create_task(self._drain(sig, frame))

    @contextlib.contextmanager
    def capture_signals(self):
        """uvicorn's, less raising the signal again once the server has stopped: that
        signal asked for the stop just done, and raised again it would end the process
        by its default action (SIGTERM: killed, exit 143) before :func:`run_server`'s
        clean-up (the connection file, the store's last checkpoint)."""
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()

    async def _drain(self, sig: int, frame: object) -> None:
        try:
            await asyncio.wait_for(
                asyncio.gather(*(p.stop() for p in self.provisioners)), timeout=15)
        except Exception:
            log.exception("stopping pilots")
        super().handle_exit(sig, frame)


def run_server(config: ServerConfig) -> None:
    """Serve until SIGTERM/SIGINT; pilots of local sites are started and stopped with it."""
    server = Server(config)
    previous = runtime.read_connection(config.home)
    sock = _bind(config.host, config.port, (previous or {}).get("port"))
    port = sock.getsockname()[1]
    host = config.host if config.host not in ("0.0.0.0", "::") else socket.gethostname()
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    provisioners: list[Provisioner] = []
    if config.provision:
        # Read here, before the loop runs, on the thread that owns the store; the
        # provisioners' callbacks below are called on the loop, never on their threads.
        known = server.store.list_pilots(state=PilotState.RUNNING)
        for site in config.sites:
            spec = PilotSpec(url, server.site_tokens[site.name], site)
            prov = make_provisioner(spec, config.home, known)
            if prov is not None:
                prov.on_health = server.store.set_site_state
                prov.on_gone = functools.partial(_pilots_gone, server)
                prov.demand = functools.partial(server.store.site_demand, site.name)
                provisioners.append(prov)

    async def provision(_server: Server) -> None:
        await asyncio.gather(*(p.keep_alive() for p in provisioners))

    if provisioners:
        server.background.append(provision)
    app = create_app(server)
    uv_config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                               timeout_graceful_shutdown=5)
    uv = _Uvicorn(uv_config, provisioners, server)
    runtime.write_connection(config.home, {
        "url": url, "host": config.host, "port": port, "pid": os.getpid(),
        "user_token": server.user_token, "pilot_token": server.pilot_token,
        "database": config.database_url, "started_at": time.time(),
    })
    log.info("panda-lab server at %s (database %s)", url, server.store.engine.dialect.name)
    try:
        uv.run(sockets=[sock])
    finally:
        runtime.remove_connection(config.home, os.getpid())
        server.close()


# ---- detached server: start / stop / status ----------------------------------------------

def server_alive(info: dict | None, timeout: float = 2.0) -> bool:
    if not info:
        return False
    try:
        with ApiClient(info["url"], info["user_token"], timeout=timeout) as api:
            api.get("/api/info")
        return True
    except (ServerUnreachable, ApiError, KeyError):
        return False


def start_detached(home: Path, args: list[str] | None = None, timeout: float = 60.0) -> dict:
    """Start ``panda-lab server run`` detached; return the connection info once it answers."""
    info = runtime.read_connection(home)
    if server_alive(info):
        return info  # type: ignore[return-value]
    log_dir = home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "panda_lab.cli.main", "--home", str(home), "server", "run",
           *(args or [])]
    env = dict(os.environ)
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    with open(log_dir / "server.log", "ab") as logf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (log_dir / "server.log").read_text(errors="replace")[-2000:]
            raise ServerError(f"server exited with code {proc.returncode}; log tail:\n{tail}")
        info = runtime.read_connection(home)
        if info and info.get("pid") == proc.pid and server_alive(info):
            return info
        time.sleep(0.05)
    proc.kill()
    raise ServerError(f"server did not answer within {timeout:g} s (log: {log_dir / 'server.log'})")


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has exited: no such process, or a zombie (it exited and
    its parent, e.g. the kernel whose ``connect()`` started it, has not reaped it yet)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def stop_detached(home: Path, timeout: float = 30.0) -> bool:
    """Stop the server of this home (SIGTERM, then SIGKILL after ``timeout`` seconds);
    True if one was running.  Returns once the server has exited, even if another
    process started it and has not reaped it."""
    info = runtime.read_connection(home)
    if not info:
        return False
    pid = info.get("pid")
    try:
        os.kill(pid, signal.SIGTERM)
    except (ProcessLookupError, TypeError):
        runtime.remove_connection(home)
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if _gone(pid):
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
    runtime.remove_connection(home, pid)
    return True
