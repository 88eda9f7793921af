"""Pilots as local processes: the embedded default, and what tests run for real."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import psutil

from panda_lab.model.states import PilotState
from panda_lab.provisioners.base import PilotSpec, Provisioner
from panda_lab.provisioners.config import LocalSite, provisioner


@provisioner("local", LocalSite)
class LocalProvisioner(Provisioner):
    """``site.pilots`` pilot processes on this machine, each in its own session."""

    label = "local"

    def __init__(self, spec: PilotSpec, log_dir: Path, known_pilots: list[dict] | None = None,
                 cores_dir: Path | None = None):
        super().__init__(spec)
        self.log_dir = log_dir
        #: Where the lock files of the machine's shared cores are (see
        #: :mod:`panda_lab.pilot.cores`): one directory for every local site of a server.
        self.cores_dir = cores_dir or log_dir.parent / "cores"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.known_pilots = known_pilots or []
        self._n = 0

    @classmethod
    def for_site(cls, spec: PilotSpec, home: Path, known_pilots: list[dict]) -> LocalProvisioner:
        return cls(spec, home / "logs", known_pilots, home / "cores")

    def submit(self, n: int) -> list:
        env = dict(os.environ, PANDA_LAB_PILOT_TOKEN=self.spec.pilot_token)
        # Dask's workers leak this into the environment; it slows numpy/awkward payloads.
        env.pop("MALLOC_TRIM_THRESHOLD_", None)
        out = []
        for _ in range(n):
            self._n += 1
            log = self.log_dir / f"pilot-{self.spec.site.name}-{os.getpid()}-{self._n}.log"
            with open(log, "ab") as f:
                out.append(psutil.Popen(self.command(), stdin=subprocess.DEVNULL,
                                        stdout=f, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True))
        return out

    def command(self) -> list[str]:
        """The pilot's command line, with the machine's shared cores when the site sets
        ``shared_cores``."""
        n = getattr(self.spec.site.settings, "shared_cores", 0)
        extra = ["--shared-cores", str(n), "--cores-dir", str(self.cores_dir)] if n else []
        return self.spec.command() + extra

    def status(self, handles: list) -> list[bool]:
        alive = []
        for h in handles:
            try:
                alive.append(h.is_running() and h.status() != psutil.STATUS_ZOMBIE)
            except psutil.NoSuchProcess:
                alive.append(False)
            if not alive[-1] and isinstance(h, psutil.Popen):
                h.poll()  # reap it
        return alive

    def exit_info(self, handle: Any) -> tuple[int, int | None]:
        return handle.pid, getattr(handle, "returncode", None)

    def cancel(self, handles: list) -> None:
        self._signal(handles, signal.SIGTERM)

    def kill(self, handles: list) -> None:
        self._signal(handles, signal.SIGKILL)

    @staticmethod
    def _signal(handles: list, sig: int) -> None:
        for h in handles:
            try:
                h.send_signal(sig)
            except psutil.NoSuchProcess:
                pass

    def adopt(self) -> list:
        """Processes of this site's pilots that an earlier server left running here,
        found from ``known_pilots`` (the store's running pilots, read before the loop
        started) and checked by their command line; at most ``site.pilots``."""
        host = socket.gethostname()
        out = []
        for p in self.known_pilots:
            if (p["site"] != self.spec.site.name or p["host"] != host
                    or p["state"] != PilotState.RUNNING):
                continue
            try:
                proc = psutil.Process(p["pid"])
                cmd = " ".join(proc.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if "panda_lab.pilot" in cmd and f"--site {self.spec.site.name}" in cmd:
                out.append(proc)
        return out[: self.spec.site.pilots]
