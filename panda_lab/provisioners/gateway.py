"""The cloud kind: a dask-gateway cluster scaled to the site's queue, a pilot per worker.

The gateway (on Kubernetes, Hadoop or a batch system) owns the machines; this provisioner
only asks for a number of workers: more when jobs wait, ``min_workers`` after the site
has been idle for ``idle_timeout`` seconds.  Scaling down only when idle means no worker
is retired under a running job; a worker lost anyway (pre-emption) kills its pilot, whose
jobs are handed back and retried elsewhere.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from panda_lab.provisioners.base import PilotSpec, ProvisionerError
from panda_lab.provisioners.dask import DaskProvisioner

log = logging.getLogger("panda_lab.provisioners")


class GatewayProvisioner(DaskProvisioner):
    label = "gateway"
    elastic = True

    def __init__(self, spec: PilotSpec) -> None:
        super().__init__(spec)
        cfg = spec.site.extra
        self.min_workers = int(cfg.get("min_workers", 0))
        self.max_workers = spec.site.pilots
        self.idle_timeout = float(cfg.get("idle_timeout", 60.0))
        self.gateway: Any = None
        self.requested = 0
        self.idle_since: float | None = None

    def connect(self) -> Any:
        if self.client is not None:
            return self.client
        if self.closing:
            raise ProvisionerError("the server is stopping")
        try:
            from dask_gateway import Gateway
        except ImportError as exc:
            raise ProvisionerError("the gateway provisioner needs the dask-gateway package "
                                   "(pip install 'panda-lab[gateway]')") from exc
        cfg = self.spec.site.extra
        try:
            if self.gateway is None:
                self.gateway = Gateway(cfg["address"])
            if self.cluster is None:
                self.cluster = self.gateway.new_cluster(**cfg.get("cluster_options", {}))
                self.requested = 0
            self.client = self.cluster.get_client(set_as_default=False)
        except Exception as exc:
            self._drop()
            raise ProvisionerError(f"dask-gateway at {cfg['address']} unreachable: "
                                   f"{exc}") from exc
        log.info("%s: gateway cluster %s", self.spec.site.name, self.cluster.name)
        return self.client

    def wanted_workers(self, demand: int, now: float) -> int:
        """Workers to ask for: enough for the queue, at once; ``min_workers`` once the site
        has had nothing queued or running for ``idle_timeout``; otherwise what was asked."""
        need = min(self.max_workers, math.ceil(demand / max(self.spec.site.slots, 1)))
        if demand > 0:
            self.idle_since = None
            return max(self.requested, need, self.min_workers)
        if self.idle_since is None:
            self.idle_since = now
        if now - self.idle_since >= self.idle_timeout:
            return self.min_workers
        return max(self.requested, self.min_workers)

    def step(self) -> None:
        self.connect()
        demand = self.demand() if self.demand is not None else 0
        wanted = self.wanted_workers(demand, time.monotonic())
        if wanted != self.requested:
            try:
                self.cluster.scale(wanted)
            except Exception as exc:
                self._drop()
                raise ProvisionerError(f"dask-gateway refused to scale: {exc}") from exc
            log.info("%s: %d worker(s) wanted (queue %d)", self.spec.site.name, wanted, demand)
            self.requested = wanted
        super().step()

    def _drop(self) -> None:
        """Forget a connection that failed, so the next look starts afresh."""
        for obj in (self.client, self.cluster, self.gateway):
            try:
                if obj is not None:
                    obj.close()
            except Exception:
                pass
        self.client = self.cluster = self.gateway = None
        self.handles = []

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            try:
                self.cluster.shutdown()
            except Exception as exc:
                log.warning("%s: gateway cluster not shut down: %s", self.spec.site.name, exc)
            self.cluster = None
        if self.gateway is not None:
            self.gateway.close()
            self.gateway = None
