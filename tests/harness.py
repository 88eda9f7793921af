"""Real server processes for integration tests: start, SIGKILL, restart, connect."""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from panda_lab import runtime
from panda_lab.client.session import Lab
from panda_lab.server.main import server_alive

#: Short timeouts so that failure handling shows within a test's patience.
FAST = ["--heartbeat-timeout", "3", "--heartbeat-interval", "0.5", "--watchdog-interval", "0.3",
        "--task-lease", "5"]


class ServerProcess:
    """``panda-lab server run`` in a subprocess, with its own home directory."""

    def __init__(self, home: Path, db_url: str | None = None, extra: list[str] | None = None,
                 python: str | None = None, fast: bool = True):
        """``python``: the interpreter the server runs with (and so starts its local
        pilots with); this test's own by default.  ``fast``: the short timeouts of
        :data:`FAST` (a test's); without, the server's defaults (a benchmark's, what a
        user runs: a watchdog sweep every 2 s, not every 0.3 s)."""
        self.home = home
        self.fast = fast
        self.db_url = db_url
        self.extra = list(extra or [])
        self.python = python or sys.executable
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    def start(self, timeout: float = 30.0) -> ServerProcess:
        cmd = [self.python, "-m", "panda_lab.cli.main", "--home", str(self.home),
               "server", "run", *(FAST if self.fast else ()), *self.extra]
        if self.db_url:
            cmd += ["--db", self.db_url]
        self.log = open(self.home / "server-test.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = runtime.read_connection(self.home)
            if info and info.get("pid") == self.proc.pid and server_alive(info):
                self.info = info
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log_tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"server did not start: {self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        try:
            return (self.home / "server-test.log").read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    def lab(self) -> Lab:
        return Lab(self.info["url"], self.info["user_token"], home=self.home)

    def kill(self) -> None:
        """SIGKILL: no goodbye, no clean-up, as a crash would leave things."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.kill_pilots()
        if getattr(self, "log", None):
            self.log.close()

    def kill_pilots(self) -> None:
        """Pilots run in their own sessions and may outlive a killed server: end them."""
        import psutil

        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if "panda_lab.pilot" in cmd and self.info.get("url", "@@") in cmd:
                try:
                    for c in p.children(recursive=True):
                        c.kill()
                    p.kill()
                except psutil.NoSuchProcess:
                    pass

    def pilot_pids(self) -> list[int]:
        import psutil

        out = []
        for p in psutil.process_iter(["cmdline", "pid"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if "panda_lab.pilot" in cmd and self.info.get("url", "@@") in cmd:
                out.append(p.info["pid"])
        return out


def wait_for(pred, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def site_in_state(lab: Lab, name: str, state: str, timeout: float = 60.0) -> dict:
    """Wait until the site ``name`` is in ``state`` (online, offline); its row."""
    return wait_for(lambda: next((s for s in lab.sites()
                                  if s["name"] == name and s["state"] == state), None),
                    timeout, what=f"site {name} {state}")


#: In a page: every picture a panda-lab task monitor shows, caught as the browser swaps it
#: in (``window.__histograms``, a set of image sources).
WATCH_HISTOGRAMS = """() => {
    window.__histograms = new Set();
    const note = img => img.closest('.panda-task-monitor') && img.src
                        && window.__histograms.add(img.src);
    new MutationObserver(records => records.forEach(r => {
        if (r.type === 'attributes') note(r.target);
        r.addedNodes && r.addedNodes.forEach(n => n.querySelectorAll
            && n.querySelectorAll('img').forEach(note));
    })).observe(document.body, {subtree: true, childList: true, attributes: true,
                                attributeFilter: ['src']});
}"""


#: In a page: keep the text of every SVG picture a task monitor shows, in the order they
#: are swapped in (``window.__svgs``), fetched at once: ipywidgets revokes an image's
#: blob URL when the next one replaces it.
WATCH_SVGS = """() => {
    window.__svgs = [];
    let n = 0;
    const note = img => {
        if (!(img.closest && img.closest('.panda-task-monitor') && img.src)) return;
        const i = n++;
        fetch(img.src).then(r => r.text()).then(t => window.__svgs.push([i, t]))
            .catch(() => {});
    };
    new MutationObserver(records => records.forEach(r => {
        if (r.type === 'attributes') note(r.target);
        r.addedNodes && r.addedNodes.forEach(n => n.querySelectorAll
            && n.querySelectorAll('img').forEach(note));
    })).observe(document.body, {subtree: true, childList: true, attributes: true,
                                attributeFilter: ['src']});
}"""


def kernel_print(page, expr: str) -> str:
    """What the current notebook's kernel prints for ``expr``, asked outside any cell."""
    return page.evaluate("""async code => {
        const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
        let out = '';
        const future = k.requestExecute({code, store_history: false});
        future.onIOPub = msg => {
            if (msg.header.msg_type === 'stream') out += msg.content.text;
        };
        await future.done;
        return out.trim();
    }""", f"print({expr})")


def run_cell(page, code: str) -> None:
    """Put ``code`` in the current notebook's first cell and run it (returns at once)."""
    page.evaluate("""code => {
        const nb = window.jupyterapp.shell.currentWidget.content;
        nb.activeCellIndex = 0;
        nb.activeCell.model.sharedModel.setSource(code);
        return window.jupyterapp.commands.execute('notebook:run-cell');
    }""", code)


def open_new_notebook(page) -> None:
    """In a JupyterLab page (the app exposed for tests): a new notebook, its kernel
    connected and idle."""
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.commands"
                           ".hasCommand('notebook:create-new')")
    page.evaluate("window.jupyterapp.commands.execute('notebook:create-new', "
                  "{kernelName: 'python3'})")
    wait_for_kernel(page)


def wait_for_kernel(page) -> None:
    """Wait until the current notebook's kernel is connected and idle."""
    page.wait_for_function("""() => {
        const w = window.jupyterapp.shell.currentWidget;
        const k = w && w.sessionContext && w.sessionContext.session
                  && w.sessionContext.session.kernel;
        return k && k.connectionStatus === 'connected' && k.status === 'idle';
    }""", timeout=90_000)


#: Debian's Chromium (scripts/install-system-deps installs it), never a download, and
#: its flags for a headless run on a machine with no network and as root.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]


def port_open(port: int) -> bool:
    """Whether something accepts connections on ``127.0.0.1:port``."""
    import socket

    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    """A TCP port nobody listens on now (for services a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayServer:
    """A real ``dask-gateway-server`` with its local backend (clusters are processes on
    this machine), as a cloud site's tests and benchmark need it."""

    def __init__(self, workdir: Path, persistent: bool = False) -> None:
        self.dir = workdir
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.ports: tuple[int, int] | None = None
        #: keep clusters in a database file and running across a restart, as a gateway
        #: on Kubernetes keeps them in the cluster's own state
        self.persistent = persistent
        self.key = base64.b64encode(os.urandom(32)).decode()

    def start(self, timeout: float = 30.0) -> GatewayServer:
        """Start it; a second start (after ``stop``) listens on the same ports."""
        import urllib.request

        if self.ports is None:
            self.ports = free_port(), free_port()
        api, proxy = self.ports
        dask = str(Path(sys.executable).parent / "dask")
        config = self.dir / "gateway_config.py"
        config.write_text(f"""
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.DaskGateway.address = "127.0.0.1:{api}"
c.Proxy.address = "127.0.0.1:{proxy}"
c.ClusterConfig.scheduler_cmd = [{dask!r}, "scheduler"]
c.ClusterConfig.worker_cmd = [{dask!r}, "worker"]
c.ClusterConfig.worker_cores = 1
c.ClusterConfig.worker_memory = "2 G"
c.LocalBackend.clusters_directory = {str(self.dir / "clusters")!r}
""")
        if self.persistent:
            with config.open("a") as f:
                f.write(f"""c.DBBackendBase.db_url = "sqlite:///{self.dir / 'gateway.sqlite'}"
c.DBBackendBase.db_encrypt_keys = [{self.key!r}]
c.DBBackendBase.stop_clusters_on_shutdown = False
c.DBBackendBase.cluster_heartbeat_timeout = 600
""")
            # (a cluster unheard of for its heartbeat timeout, 30 s by default, is culled
            # when the gateway comes back: a test's outage must not run into it)
        self.log = open(self.dir / "gateway.log", "ab")  # noqa: SIM115
        server = str(Path(sys.executable).parent / "dask-gateway-server")
        self.proc = subprocess.Popen([server, "-f", str(config)], cwd=self.dir,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.url = f"http://127.0.0.1:{proxy}"

        def up() -> bool:
            try:
                with urllib.request.urlopen(f"{self.url}/api/health", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(up, timeout, what="dask-gateway-server up")
        return self

    def _api(self, method: str, path: str) -> Any:
        """One call to the gateway's REST API, as this process's user (simple auth), who
        owns the clusters a panda-lab server started here."""
        import getpass
        import json
        import urllib.request

        auth = base64.b64encode(f"{getpass.getuser()}:".encode()).decode()
        req = urllib.request.Request(f"{self.url}/api/v1/{path}", method=method,
                                     headers={"Authorization": f"Basic {auth}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def cluster_names(self) -> list[str]:
        """The clusters the gateway runs now (pending or running)."""
        return sorted(self._api("GET", "clusters/"))

    def stop(self, clusters: bool = True) -> None:
        """Stop the gateway; a persistent one stops its clusters first unless told not to
        (a gateway going away under its clusters)."""
        if self.proc is not None and self.proc.poll() is None:
            if self.persistent and clusters:
                # stopping is asynchronous: wait for it, or the cluster outlives its gateway
                live = "clusters/?status=PENDING,RUNNING,STOPPING"
                for name in self._api("GET", live):
                    self._api("DELETE", f"clusters/{name}")
                wait_for(lambda: not self._api("GET", live), 30, what="the clusters stopped")
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            # its proxy is a process of its own, told to stop but not waited for
            wait_for(lambda: not port_open(self.ports[1]), 20, what="the gateway proxy gone")
        if clusters:  # whatever a failed test left running (the gateway may be down)
            self._kill_cluster_processes()
        self.log.close()

    def _kill_cluster_processes(self) -> None:
        import psutil

        where = str(self.dir / "clusters")
        for proc in psutil.process_iter(["cwd"]):
            if (proc.info.get("cwd") or "").startswith(where):
                with contextlib.suppress(psutil.Error):  # it ended meanwhile
                    proc.kill()


def panel_jupyter_path(data: Path) -> str | None:
    """A ``JUPYTER_PATH`` under which JupyterLab finds the panel as built in the checkout
    under test (extension/ -> panda_lab/labextension), ahead of the copy an editable
    install left in the environment's share/jupyter: ``data`` gets a
    ``labextensions/panda-lab`` link to the build.  None when the checkout has no build
    (the environment's copy is then the one found)."""
    built = Path(runtime.__file__).parent / "labextension"
    if not (built / "package.json").exists():
        return None
    (data / "labextensions").mkdir(parents=True, exist_ok=True)
    link = data / "labextensions" / "panda-lab"
    if not link.exists():
        link.symlink_to(built.resolve(), target_is_directory=True)
    return os.pathsep.join(p for p in (str(data), os.environ.get("JUPYTER_PATH", "")) if p)


class JupyterServer:
    """A real ``jupyter lab`` (or plain ``jupyter server``) whose kernels and server
    extension find the panda-lab server of ``panda_home``."""

    def __init__(self, panda_home: Path, workdir: Path, app: str = "jupyterlab",
                 extra_args: Sequence[str] = ()) -> None:
        self.panda_home, self.workdir, self.app = panda_home, workdir, app
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> JupyterServer:
        cfg = self.workdir / ".jupyter-config"
        # no "would you like news?" popup over what the screenshots show
        notes = cfg / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
        notes.mkdir(parents=True, exist_ok=True)
        (notes / "notification.jupyterlab-settings").write_text(
            '{"fetchNews": "false", "checkForUpdates": false}')
        env = dict(os.environ, PANDA_LAB_HOME=str(self.panda_home),
                   JUPYTER_CONFIG_DIR=str(cfg), JUPYTER_RUNTIME_DIR=str(cfg / "runtime"))
        jupyter_path = panel_jupyter_path(cfg / "data")
        if jupyter_path is not None:
            env["JUPYTER_PATH"] = jupyter_path
        args = [sys.executable, "-m", self.app, "--no-browser", "--allow-root",
                f"--ServerApp.port={self.port}", "--ServerApp.ip=127.0.0.1",
                f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={self.workdir}"]
        if self.app == "jupyterlab":
            args += ["--LabApp.news_url=",
                     "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                     "--LabApp.expose_app_in_browser=True"]
        elif self.app == "notebook":  # Notebook 7
            args += ["--JupyterNotebookApp.expose_app_in_browser=True"]
        args += self.extra_args
        self.log = open(self.workdir / f"{self.app}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(args, cwd=self.workdir, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

        def up() -> bool:
            import urllib.request

            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.app} exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}",
                                            timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(up, timeout, interval=0.2, what=f"{self.app} up")
        return self

    def log_tail(self, n: int = 3000) -> str:
        return (self.workdir / f"{self.app}.log").read_bytes()[-n:].decode(errors="replace")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.log.close()


class RangeFileServer:
    """Files over HTTP with byte ranges (what uproot's HTTP source asks for), from a
    thread of the test process: a storage endpoint that is only reachable by URL."""

    def __init__(self, directory: Path, rate: float | None = None) -> None:
        """``rate``: bytes per second the server sends at most, over all its requests
        together (a throttled link); ``None``: as fast as it can."""
        import functools
        import http.server
        import threading
        import time

        self.hits = 0
        self.rate = rate
        self.sent = 0
        throttle = threading.Lock()
        self._count = threading.Lock()  # handler threads add to hits and sent
        #: When the throttle lets the next block go (time.monotonic()).
        self._next = 0.0
        #: Set to answer every request with 503, as a storage endpoint in trouble.
        self.down = False
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def send_head(self):
                import re

                path = self.translate_path(self.path)
                if outer.down:
                    self.send_error(503)
                    return None
                if not os.path.isfile(path):
                    self.send_error(404)
                    return None
                with outer._count:
                    outer.hits += 1
                size = os.path.getsize(path)
                f = open(path, "rb")  # noqa: SIM115 - closed by http.server
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
                if m:
                    start, end = int(m.group(1)), min(int(m.group(2) or size - 1), size - 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                    f.seek(start)
                    self.left = end - start + 1
                else:  # no range, or several: the whole file
                    self.send_response(200)
                    self.left = size
                self.send_header("Content-Length", str(self.left))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                return f

            def copyfile(self, source, outputfile) -> None:
                while self.left > 0:
                    buf = source.read(min(1 << 14 if outer.rate else 1 << 16, self.left))
                    if not buf:
                        break
                    if outer.rate:  # one shared pipe: blocks go out at `rate` in all
                        with throttle:
                            t = time.monotonic()
                            start = max(t, outer._next)
                            outer._next = start + len(buf) / outer.rate
                        time.sleep(max(0.0, outer._next - t))
                    # Counted before it goes out: once the client holds the bytes,
                    # `sent` already has them (counted after the write, a reader could
                    # finish and look before this thread added its last block).
                    with outer._count:
                        outer.sent += len(buf)
                    outputfile.write(buf)
                    self.left -= len(buf)

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class XRootDServer:
    """Debian's ``xrootd`` serving a directory over root://, as a grid storage element.

    xrootd refuses to run as root, so as root it drops to ``nobody`` (``-R``): the
    directory it serves and its admin directory are made world-readable for that."""

    def __init__(self) -> None:
        import shutil
        import tempfile

        binary = shutil.which("xrootd")
        if binary is None:
            raise FileNotFoundError("xrootd is not installed (scripts/install-system-deps)")
        self.binary = binary
        self.base = Path(tempfile.mkdtemp(prefix="panda-xrootd-"))
        self.base.chmod(0o777)
        self.export = self.base / "export"
        self.export.mkdir()
        self.export.chmod(0o755)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def url(self, path: Path) -> str:
        return f"root://127.0.0.1:{self.port}/{path}"

    def start(self, timeout: float = 20.0) -> XRootDServer:
        import socket

        cfg = self.base / "xrootd.cfg"
        cfg.write_text(f"all.export {self.export}\nxrd.trace off\n")
        args = [self.binary, "-p", str(self.port), "-c", str(cfg), "-n", "panda",
                "-l", str(self.base / "xrootd.log"), "-a", str(self.base)]
        if os.geteuid() == 0:
            args[1:1] = ["-R", "nobody"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     start_new_session=True)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"xrootd exited {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False

        wait_for(up, timeout, interval=0.1, what="xrootd listening")
        return self

    def stop(self) -> None:
        import shutil

        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.base, ignore_errors=True)


#: A page script (``page.evaluate(SET_HIDDEN, True)``) that hides or shows the page as the
#: Page Visibility API reports it: ``document.hidden``, ``visibilityState`` and a
#: ``visibilitychange`` event, as a browser does when its tab goes to the background.
SET_HIDDEN = """hidden => {
  Object.defineProperty(document, "hidden", {configurable: true, get: () => hidden});
  Object.defineProperty(document, "visibilityState", {configurable: true,
                        get: () => hidden ? "hidden" : "visible"});
  document.dispatchEvent(new Event("visibilitychange"));
}"""
