"""Server configuration, with defaults that just work on a laptop.

Sites come from a ``sites.toml`` read by :mod:`panda_lab.provisioners.config`, where each
provisioner declares its keys; a wrong key or value is an error that names the site, the
key and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# Sites are the provisioners' configuration: read through their registry.
from panda_lab.provisioners.config import SiteConfig, default_sites


@dataclass
class ServerConfig:
    """Everything a server needs; each field has a default that works on a laptop."""

    home: Path
    db_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    sites: list[SiteConfig] = field(default_factory=default_sites)
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
    user_token: str | None = None
    pilot_token: str | None = None
    #: A token accepted at ``/metrics`` only (Prometheus' ``authorization``), so that a
    #: monitoring system holds no token that acts on work; None: the user token only.
    scrape_token: str | None = None

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.home / 'panda-lab.sqlite'}"

    @property
    def result_dir(self) -> Path:
        return self.home / "results"
