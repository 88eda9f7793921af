"""Pilots on the workers of a Dask cluster: one pilot per worker, as workers come and go.

The cluster is either a running scheduler (``scheduler = "tcp://host:8786"``) or one the
provisioner starts from a class and its options (``cluster = "distributed.LocalCluster"``,
``"dask_jobqueue.SLURMCluster"``, ...), so any Dask deployment becomes a site without code
of ours that talks to its resource manager.

A pilot is a long-running Dask task pinned to its worker.  The task starts the pilot as a
child process (the pilot keeps its own payload processes, as everywhere) that is killed
with the worker: a worker lost mid-job hands the job back for a retry.  A distributed
``Event`` per pilot asks it to stop.  The Dask cluster sees the pilot token: it is trusted
as much as the machines it runs on.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from typing import Any

from panda_lab.model.scaling import Mode, ScalingPolicy, Snapshot
from panda_lab.provisioners.base import PilotSpec, Provisioner, ProvisionerError
from panda_lab.provisioners.config import DaskSite, provisioner

log = logging.getLogger("panda_lab.provisioners")

#: Seconds to connect to a scheduler before the site is called offline.
CONNECT_TIMEOUT = 10

#: States of a Dask client that will not come back: it gave up reconnecting, so the next
#: look makes a new one.
GONE = ("closing", "closed")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the pilot gets SIGTERM when the worker process dies, as on a pre-empted
    machine, so its jobs are handed back instead of waiting for a heartbeat timeout."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_pilot(args: list[str], token: str, stop: str) -> int:
    """The Dask task that is a pilot: runs on a worker until the pilot ends or ``stop`` is
    set.  It starts the pilot with the worker's own Python, which need not be the server's."""
    from distributed import Event, get_worker

    env = dict(os.environ, PANDA_LAB_PILOT_TOKEN=token)
    env.pop("MALLOC_TRIM_THRESHOLD_", None)  # set by Dask; it slows numpy-heavy payloads
    worker = get_worker()
    log_path = os.path.join(worker.local_directory, f"panda-pilot-{uuid.uuid4().hex[:8]}.log")
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "panda_lab.pilot", *args],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, preexec_fn=_die_with_parent)
    event = Event(stop)
    while proc.poll() is None:
        if event.wait(timeout=1.0):
            proc.terminate()  # the pilot hands back its jobs and says goodbye
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return proc.wait()


@dataclass
class DaskPilot:
    """A pilot on a Dask worker: its worker's address, its task, its stop event."""

    worker: str
    future: Any
    stop: str


def load_class(path: str) -> type:
    """``"package.module.Class"`` to the class, with an error that says what to install."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ProvisionerError(f"cannot load cluster class {path!r}: {exc}") from exc


@provisioner("dask", DaskSite)
class DaskProvisioner(Provisioner):
    """A pilot on each worker of a Dask cluster (a running scheduler or a cluster class)."""

    label = "dask"
    polling_interval = 1.0

    def __init__(self, spec: PilotSpec) -> None:
        super().__init__(spec)
        self.policy = ScalingPolicy(Mode.PER_WORKER, 0, spec.site.pilots)
        self.client: Any = None
        self.cluster: Any = None  # a cluster this provisioner started, closed with it
        self._workers: list[str] = []
        # Imported now, in the main thread: dask_jobqueue sets a signal handler on import,
        # which Python allows only there.
        self.cluster_class: type | ProvisionerError | None = None
        cfg = spec.site.settings
        if isinstance(cfg, DaskSite) and cfg.cluster:
            try:
                self.cluster_class = load_class(cfg.cluster)
            except ProvisionerError as exc:
                self.cluster_class = exc  # the site goes offline with this reason

    # ---- the cluster -----------------------------------------------------------------
    def connect(self) -> Any:
        """The Dask client, connecting on first use; a failure marks the site offline
        and is tried again at the next look."""
        if self.client is not None:
            if self.client.status not in GONE:
                return self.client
            self.client = None
            self.handles = []  # their futures belonged to the client that is gone
        if self.closing:
            raise ProvisionerError("the server is stopping")
        from distributed import Client

        cfg = self.spec.site.settings
        assert isinstance(cfg, DaskSite)
        try:
            if cfg.cluster:
                if isinstance(self.cluster_class, ProvisionerError):
                    raise self.cluster_class
                if self.cluster is None:
                    assert self.cluster_class is not None
                    self.cluster = self.cluster_class(**cfg.cluster_options)
                    if "workers" in cfg.model_fields_set:
                        self.cluster.scale(cfg.workers)
                self.client = Client(self.cluster, timeout=CONNECT_TIMEOUT,
                                     set_as_default=False)
            else:
                self.client = Client(cfg.scheduler, timeout=CONNECT_TIMEOUT,
                                     set_as_default=False)
        except ProvisionerError:
            raise
        except Exception as exc:
            raise ProvisionerError(f"dask cluster unreachable: {exc}") from exc
        return self.client

    def workers(self) -> list[str]:
        """Addresses of the workers the scheduler knows now."""
        try:
            info = self.connect().scheduler_info(n_workers=-1)
        except ProvisionerError:
            raise
        except Exception as exc:
            raise ProvisionerError(f"dask scheduler unreachable: {exc}") from exc
        return sorted(info.get("workers", {}))

    # ---- the provisioner interface ---------------------------------------------------
    def snapshot(self) -> Snapshot:
        """One pilot on every worker: the cluster's owner (or its adaptive scaling)
        decides how many workers there are (``workers`` of the last look)."""
        return Snapshot(demand=self.queued, current=len(self.handles),
                        slots=self.spec.site.slots, workers=len(self._workers))

    def step(self) -> None:
        """Look at the cluster's workers, then keep a pilot on each (see the base)."""
        self._workers = self.workers()
        super().step()

    def submit(self, n: int) -> list:
        client = self.connect()
        taken = {h.worker for h in self.handles}
        free = [w for w in self._workers if w not in taken][:n]
        args = self.spec.command()[3:]  # the arguments after "python -m panda_lab.pilot"
        out = []
        for worker in free:
            stop = f"panda-stop-{self.spec.site.name}-{uuid.uuid4().hex}"
            fut = client.submit(run_pilot, args, self.spec.pilot_token, stop,
                                key=f"panda-pilot-{self.spec.site.name}-{uuid.uuid4().hex}",
                                workers=[worker], allow_other_workers=False, pure=False)
            out.append(DaskPilot(worker, fut, stop))
        if free:
            log.info("%s: started %d pilot(s) on Dask workers", self.spec.site.name, len(free))
        return out

    def status(self, handles: list) -> list[bool]:
        if not handles:
            return []
        workers = set(self._workers)
        alive = []
        for h in handles:
            ok = h.future.status == "pending" and h.worker in workers
            if not ok and h.future.status == "pending":
                h.future.cancel()  # its worker left: the task would wait forever
            alive.append(ok)
        return alive

    def cancel(self, handles: list) -> None:
        if not handles or self.client is None:
            return
        from distributed import Event

        for h in handles:
            try:
                Event(h.stop, client=self.client).set()
            except Exception as exc:
                log.warning("%s: cannot stop pilot on %s: %s", self.spec.site.name,
                            h.worker, exc)

    def kill(self, handles: list) -> None:
        if self.client is not None:
            self.client.cancel([h.future for h in handles], force=True)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None
