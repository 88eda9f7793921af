"""Server configuration, with defaults that just work on a laptop.

Sites come from a ``sites.toml`` read by :mod:`panda_lab.provisioners.config`, where each
provisioner declares its keys; a wrong key or value is an error that names the site, the
key and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# Sites are the provisioners' configuration: read through their registry.
from panda_lab.provisioners.config import ConfigError, SiteConfig, default_sites
from panda_lab.provisioners.links import LinkConfig
from panda_lab.resources import MERGE_MEMORY_ENV, ResourceError, merge_memory

#: How a person raises the merge budget, named wherever the budget refuses something.
MERGE_MEMORY_HOW = f"${MERGE_MEMORY_ENV} or `panda-lab server run --merge-memory`"


def default_merge_memory() -> int:
    """The merged results' budget in bytes: ``$PANDA_LAB_MERGE_MEMORY``, else the resource
    plan's share (:func:`panda_lab.resources.merge_memory`).  Raises ``ValueError`` naming
    the variable for a bad value."""
    try:
        return merge_memory()[0]
    except ResourceError as exc:
        raise ValueError(str(exc)) from None

__all__ = ["NETWORK_MODES", "ConfigError", "LinkConfig", "ServerConfig", "SiteConfig",
           "default_sites"]

#: The network term of brokerage: weighed (``active``), computed and shown but not
#: weighed (``passive``, PanDA's default), or not computed (``off``: data locality only).
NETWORK_MODES = ("active", "passive", "off")


@dataclass
class ServerConfig:
    """Everything a server needs; each field has a default that works on a laptop."""

    home: Path
    db_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    sites: list[SiteConfig] = field(default_factory=default_sites)
    #: Declared (endpoint, site) links (``[[links]]`` of sites.toml): brokerage starts
    #: from them; what jobs measure replaces them.
    links: list[LinkConfig] = field(default_factory=list)
    #: The network term of brokerage for tasks that do not choose: one of NETWORK_MODES.
    network: str = "active"
    #: Measurements of a link older than this (seconds) decay toward its declared value
    #: or the prior (PanDA ignores network rows older than an hour).
    link_window: float = 3600.0
    #: Jobs waiting at a site that dispatched nothing for this long (seconds) while other
    #: sites have free slots are brokered again (0: never).
    stall_after: float = 300.0
    #: Seed of brokerage's random picks (None: fresh): the same state and submissions
    #: then give the same decisions.
    broker_seed: int | None = None
    #: A job whose pilot has not been heard of for this long is failed and retried.
    heartbeat_timeout: float = 60.0
    #: How often pilots heartbeat; told to them at registration.
    heartbeat_interval: float = 5.0
    #: A job may sit in ``sent`` (prefetched by a live pilot) at most this long.
    sent_timeout: float = 3600.0
    #: An open task whose client has not renewed its lease for this long is closed, its
    #: jobs left to finish (model/lease.py); clients renew every third of it.
    task_lease: float = 60.0
    watchdog_interval: float = 2.0
    #: Start local pilots for sites whose provisioner is ``local``.
    provision: bool = True
    #: The most events one job of an ``auto``-split analysis reads (None: no cap): the
    #: embedded default sets it from the memory each payload worker has.
    max_events_per_job: int | None = None
    #: Bytes the merged results of analyses may take in the server's memory (each task's
    #: merged value and its pickled copy, results waiting to be merged): the merger keeps
    #: within it (panda_lab.server.merger) and refuses a single merged result over it.
    merge_memory: int = field(default_factory=default_merge_memory)
    user_token: str | None = None
    pilot_token: str | None = None
    #: A token accepted at ``/metrics`` only (Prometheus' ``authorization``), so that a
    #: monitoring system holds no token that acts on work; None: the user token only.
    scrape_token: str | None = None
    #: Run as a JupyterHub service: tokens the server does not know are asked of the hub
    #: at this API URL (panda_lab.server.hub), with ``hub_api_token``, the service's.
    hub_api_url: str | None = None
    hub_api_token: str | None = None
    #: Seconds a hub's answer about a token is kept (a token revoked there is refused
    #: after this).
    hub_cache_s: float = 10.0

    def __post_init__(self) -> None:
        if self.merge_memory <= 0:
            raise ValueError(f"merge_memory = {self.merge_memory} must be a positive number "
                             "of bytes")
        if self.network not in NETWORK_MODES:
            raise ValueError(f"network = {self.network!r}; allowed: {list(NETWORK_MODES)}")

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.home / 'panda-lab.sqlite'}"

    @property
    def result_dir(self) -> Path:
        return self.home / "results"
