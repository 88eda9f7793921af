"""Server and site configuration, with defaults that just work on a laptop.

Sites come from a ``sites.toml``; a wrong key or value is an error that names the key
and what is allowed, because a typo in a site file should never silently mean "default".
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

SITE_KINDS = ("grid", "cloud", "hpc", "local")

#: The keys each provisioner accepts beyond COMMON_KEYS, with their types.  A provisioner
#: registers its own keys here; ``none`` means pilots are started by hand.
PROVISIONER_KEYS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "local": {},
    "none": {},
    "slurm": {"partition": str, "account": str, "walltime": str, "max_jobs": int,
              "min_jobs": int, "jobs_per_pilot": int, "memory": int, "extra_directives": list,
              "idle_exit": (int, float)},
    # One of: the address of a running scheduler, or a cluster class to start
    # ("distributed.LocalCluster", "dask_jobqueue.SLURMCluster") with its options.
    "dask": {"scheduler": str, "cluster": str, "cluster_options": dict, "workers": int},
    "gateway": {"address": str, "min_workers": int, "max_workers": int,
                "cluster_options": dict, "idle_timeout": (int, float),
                "timeout": (int, float)},
}

#: For each provisioner, the key whose value is the site's number of pilots at most
#: (what brokerage counts as the site's capacity before its pilots start).
PILOTS_KEY = {"slurm": "max_jobs", "dask": "workers", "gateway": "max_workers"}

WALLTIME = re.compile(r"^(?:(\d+)-)?(\d{1,2}):(\d{2}):(\d{2})$")


def walltime_seconds(value: str) -> int:
    """``"HH:MM:SS"`` or ``"D-HH:MM:SS"`` in seconds; ``ValueError`` for anything else."""
    m = WALLTIME.match(value)
    if not m:
        raise ValueError(f"walltime {value!r} is not HH:MM:SS or D-HH:MM:SS")
    d, h, mi, s = (int(x or 0) for x in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + s

#: Keys every site accepts, with their types; provisioners may add their own.
COMMON_KEYS: dict[str, type | tuple[type, ...]] = {
    "kind": str,
    "provisioner": str,
    "pilots": int,
    "slots": int,
    "description": str,
    # The storage endpoint near this site: its pilots read replicas there first.
    "endpoint": str,
}


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and the allowed values."""


@dataclass
class SiteConfig:
    name: str
    kind: str = "local"
    provisioner: str = "local"
    #: Pilots the provisioner keeps alive at this site.
    pilots: int = 1
    #: Payload worker processes per pilot (jobs it runs at once).
    slots: int = 1
    description: str = ""
    #: The storage endpoint near this site (a replica's ``endpoint``), read first.
    endpoint: str = ""
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "provisioner": self.provisioner,
                "pilots": self.pilots, "slots": self.slots, "description": self.description,
                "endpoint": self.endpoint, **self.extra}


def default_sites(cores: int | None = None) -> list[SiteConfig]:
    """Three sites on this machine, one of each remote kind, honestly labelled local.

    Each gets one single-slot pilot: with the usual 2 to 8 cores that keeps payloads
    within about the machine's cores while showing brokerage across three sites.
    """
    cores = cores or os.cpu_count() or 2
    per_site = max(1, cores // 3)
    kinds = (("LOCAL-GRID", "grid"), ("LOCAL-CLOUD", "cloud"), ("LOCAL-HPC", "hpc"))
    return [
        SiteConfig(name=name, kind=kind, provisioner="local", pilots=per_site, slots=1,
                   description=f"local pilot processes on this machine, standing in for a "
                               f"{kind} site")
        for name, kind in kinds
    ]


def parse_sites(data: dict, source: str = "sites.toml") -> list[SiteConfig]:
    sites_ = data.get("sites")
    unknown_top = set(data) - {"sites"}
    if unknown_top:
        raise ConfigError(f"{source}: unknown top-level key(s) {sorted(unknown_top)}; "
                          "allowed: ['sites']")
    if not isinstance(sites_, dict) or not sites_:
        raise ConfigError(f"{source}: no [sites.NAME] tables found")
    out = []
    for name, body in sites_.items():
        where = f"{source}: [sites.{name}]"
        if not isinstance(body, dict):
            raise ConfigError(f"{where} must be a table")
        kind = body.get("kind", "local")
        if kind not in SITE_KINDS:
            raise ConfigError(f"{where} kind = {kind!r}; allowed: {list(SITE_KINDS)}")
        prov = body.get("provisioner", "local")
        if prov not in PROVISIONER_KEYS:
            raise ConfigError(f"{where} provisioner = {prov!r}; allowed: "
                              f"{sorted(PROVISIONER_KEYS)}")
        allowed = COMMON_KEYS | PROVISIONER_KEYS[prov]
        extra = {}
        for key, value in body.items():
            if key not in allowed:
                raise ConfigError(f"{where} unknown key {key!r} for provisioner {prov!r}; "
                                  f"allowed: {sorted(allowed)}")
            types = allowed[key] if isinstance(allowed[key], tuple) else (allowed[key],)
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                names = " or ".join(t.__name__ for t in types)
                raise ConfigError(f"{where} {key} = {value!r} must be of type {names}")
            if key not in COMMON_KEYS:
                extra[key] = value
        if "walltime" in extra:
            try:
                walltime_seconds(extra["walltime"])
            except ValueError as exc:
                raise ConfigError(f"{where} {exc}") from None
        for key in ("max_jobs", "jobs_per_pilot", "workers", "max_workers"):
            if key in extra and extra[key] < 1:
                raise ConfigError(f"{where} {key} = {extra[key]} must be at least 1")
        for key in ("min_jobs", "min_workers"):
            if key in extra and extra[key] < 0:
                raise ConfigError(f"{where} {key} = {extra[key]} must not be negative")
        _check_bounds(where, extra, "min_jobs", "max_jobs")
        _check_bounds(where, extra, "min_workers", "max_workers")
        if prov == "dask" and ("scheduler" in extra) == ("cluster" in extra):
            raise ConfigError(f"{where} a dask site needs exactly one of 'scheduler' (the "
                              "address of a running scheduler) or 'cluster' (a cluster class "
                              "such as 'distributed.LocalCluster')")
        if prov == "dask" and "cluster_options" in extra and "cluster" not in extra:
            raise ConfigError(f"{where} cluster_options needs 'cluster'")
        if prov == "gateway" and "address" not in extra:
            raise ConfigError(f"{where} a gateway site needs 'address' (the dask-gateway URL)")
        pilots = body.get("pilots", 1)
        if prov in PILOTS_KEY:
            if "pilots" in body:
                raise ConfigError(f"{where} 'pilots' is not used by provisioner {prov!r}; "
                                  f"set {PILOTS_KEY[prov]!r}")
            pilots = int(extra.get(PILOTS_KEY[prov], _DEFAULT_MAX[prov]))
        for key in ("pilots", "slots"):
            if key in body and body[key] < (0 if key == "pilots" else 1):
                raise ConfigError(f"{where} {key} = {body[key]} is too small")
        out.append(SiteConfig(
            name=name, kind=kind, provisioner=prov, pilots=pilots,
            slots=body.get("slots", 1), description=body.get("description", ""),
            endpoint=body.get("endpoint", ""), extra=extra))
    return out


_DEFAULT_MAX = {"slurm": 1, "dask": 1, "gateway": 4}


def _check_bounds(where: str, extra: dict, low: str, high: str) -> None:
    if low in extra and high in extra and extra[low] > extra[high]:
        raise ConfigError(f"{where} {low} = {extra[low]} is more than {high} = {extra[high]}")


def load_sites(path: str | Path) -> list[SiteConfig]:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"site file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_sites(data, str(path))


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
    user_token: str | None = None
    pilot_token: str | None = None

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.home / 'panda-lab.sqlite'}"

    @property
    def result_dir(self) -> Path:
        return self.home / "results"
