"""The cloud kind: a dask-gateway cluster scaled to the site's queue, a pilot per worker.

The gateway (on Kubernetes, Hadoop or a batch system) owns the machines; this provisioner
only asks for a number of workers: more when jobs wait, ``min_workers`` after the site
has been idle for ``idle_timeout`` seconds.  Scaling down only when idle means no worker
is retired under a running job; a worker lost anyway (pre-emption) kills its pilot, whose
jobs are handed back and retried elsewhere.

A gateway that stops answering (a restart, a network cut) does not take its cluster along:
the cluster keeps its workers.  So the provisioner remembers the cluster's name and, once
the gateway is back, reattaches to it rather than starting a second one beside it; only
a cluster that is gone is replaced.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from panda_lab.model.scaling import Mode, ScalingPolicy, Snapshot
from panda_lab.provisioners.base import PilotSpec, ProvisionerError
from panda_lab.provisioners.config import GatewaySite, provisioner
from panda_lab.provisioners.dask import GONE, DaskProvisioner

log = logging.getLogger("panda_lab.provisioners")


def _bound_requests(gateway: Any, seconds: float) -> None:
    """Give every HTTP request of ``gateway`` a total time limit.  dask-gateway has no
    public setting for it; its requests take their keyword arguments from this dict."""
    kwargs = getattr(gateway, "_request_kwargs", None)
    if isinstance(kwargs, dict):
        import aiohttp

        kwargs["timeout"] = aiohttp.ClientTimeout(total=seconds)


@provisioner("gateway", GatewaySite)
class GatewayProvisioner(DaskProvisioner):
    """Workers of a dask-gateway cluster asked for by the site's queue, a pilot on each.

    Two policies: ``workers_policy`` sizes the cluster (the queue, scaled down after
    ``idle_timeout``); the inherited one keeps one pilot per worker."""

    #: The workers follow the queue (``workers_policy``), so the demand is read.
    reads_demand = True

    label = "gateway"

    def __init__(self, spec: PilotSpec) -> None:
        super().__init__(spec)
        cfg = spec.site.settings
        assert isinstance(cfg, GatewaySite)
        self.cfg = cfg
        #: How many workers to ask the gateway for (a gateway call may take at most
        #: ``cfg.timeout`` seconds: a gateway that accepts connections and does not
        #: answer would otherwise hold the provisioner for five minutes).
        self.workers_policy = ScalingPolicy(Mode.QUEUE, cfg.min_workers, spec.site.pilots,
                                            idle_timeout=cfg.idle_timeout)
        self.gateway: Any = None
        #: the cluster this provisioner started: reattached after a lost connection,
        #: shut down with the server
        self.cluster_name: str | None = None
        self.requested = 0
        self.idle_since: float | None = None

    def connect(self) -> Any:
        if self.client is not None:
            if self.client.status not in GONE:
                return self.client
            # the client gave up reconnecting (the gateway's proxy was away for long)
            self._drop()
        if self.closing:
            raise ProvisionerError("the server is stopping")
        try:
            from dask_gateway import Gateway
        except ImportError as exc:
            raise ProvisionerError("the gateway provisioner needs the dask-gateway package "
                                   "(pip install 'panda-lab[gateway]')") from exc
        cfg = self.cfg
        try:
            if self.gateway is None:
                self.gateway = Gateway(cfg.address)
                _bound_requests(self.gateway, cfg.timeout)
            if self.cluster is None:
                self.cluster = self._reattach()
            if self.cluster is None:
                self.cluster = self.gateway.new_cluster(**cfg.cluster_options)
                self.cluster_name = self.cluster.name
                self.requested = 0
            self.client = self.cluster.get_client(set_as_default=False)
        except ProvisionerError:
            self._drop()
            raise
        except Exception as exc:
            self._drop()
            raise ProvisionerError(f"dask-gateway at {cfg.address} unreachable: "
                                   f"{exc}") from exc
        log.info("%s: gateway cluster %s", self.spec.site.name, self.cluster.name)
        return self.client

    def _reattach(self) -> Any:
        """The cluster started before the connection was lost, if the gateway still runs
        it; ``None`` when there was none or it is gone (then a new one is started).

        Its first call is one bounded request (the clusters listed), so a gateway that
        does not answer raises here, and the site stays offline until it does; starting
        or connecting to a cluster would instead wait for the cluster without end."""
        try:
            running = {c.name for c in self.gateway.list_clusters()}
        except Exception as exc:
            raise ProvisionerError(f"dask-gateway at {self.cfg.address} "
                                   f"unreachable: {str(exc) or type(exc).__name__}") from exc
        if self.cluster_name is None:
            return None
        if self.cluster_name not in running:
            log.warning("%s: gateway cluster %s is gone; starting a new one",
                        self.spec.site.name, self.cluster_name)
            self.cluster_name = None
            return None
        cluster = self.gateway.connect(self.cluster_name, shutdown_on_close=True)
        # ask for the workers again: the count asked before is not known to be in force
        self.requested = -1
        log.info("%s: reattached to gateway cluster %s", self.spec.site.name,
                 self.cluster_name)
        return cluster

    def wanted_workers(self, demand: int, now: float) -> int:
        """Workers to ask for (the policy's ``QUEUE`` rule with an idle timeout): enough
        for the queue, at once; ``min_workers`` once the site has had nothing queued or
        running for ``idle_timeout`` seconds; otherwise what was asked.  ``now`` in
        seconds of the monotonic clock; updates ``idle_since``."""
        decision = self.workers_policy.decide(Snapshot(
            demand=demand, current=self.requested, slots=self.spec.site.slots, now=now,
            idle_since=self.idle_since))
        self.idle_since = decision.idle_since
        return decision.target

    def step(self) -> None:
        """Ask the gateway for the workers the queue wants, then keep a pilot on each."""
        self.connect()
        demand = self.queued or 0
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
        """Forget a connection that failed, so the next look starts afresh; the cluster
        itself is left running (its name is kept, to reattach to it).  The ``Gateway``
        object is kept for the next look: it is only an HTTP client, and a closed one
        prints a traceback when it is collected."""
        for obj, kwargs in ((self.client, {}), (self.cluster, {"shutdown": False})):
            try:
                if obj is not None:
                    obj.close(**kwargs)
            except Exception:
                pass
        self.client = self.cluster = None
        self.handles = []

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        try:
            if self.cluster is not None:
                self.cluster.shutdown()
            elif self.cluster_name is not None:  # dropped and not reattached since
                from dask_gateway import Gateway

                with Gateway(self.cfg.address) as gateway:
                    gateway.stop_cluster(self.cluster_name)
        except Exception as exc:
            log.warning("%s: gateway cluster %s not shut down: %s", self.spec.site.name,
                        self.cluster_name, exc)
        self.cluster = None
        self.cluster_name = None
        if self.gateway is not None:
            self.gateway.close()
            self.gateway = None
