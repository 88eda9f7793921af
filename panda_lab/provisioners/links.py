"""Storage endpoints and network links of ``sites.toml``: what brokerage starts from.

A site reads its input from the storage endpoints holding replicas of it; how fast it
can is the (endpoint, site) *link*.  ``sites.toml`` may declare endpoints and links::

    [endpoints.CERN-EOS]
    url = "root://eos.example.org//data"       # optional: where its files are served
    description = "the experiment's disk"

    [[links]]
    endpoint = "CERN-EOS"
    site = "UNI-HPC"
    throughput = 250.0    # MB/s
    latency = 20.0        # ms per request

A declared link is the starting point (as CRIC's "closeness" and FTS's throughput are for
PanDA's network weight); what jobs then measure replaces it (the server's learned
estimate, :mod:`panda_lab.model.network`).  A link not declared starts from a prior.
An endpoint is known when ``[endpoints]`` declares it or a site names it
(``endpoint = ...``); a link to an unknown endpoint or site is an error that names it, as
any wrong key is: a typo must never silently mean "no link".
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from panda_lab.provisioners.config import ConfigError, SiteConfig

#: The top-level keys of ``sites.toml`` this module reads.
NETWORK_KEYS = ("endpoints", "links")


class EndpointSettings(BaseModel):
    """The keys of one ``[endpoints.NAME]`` table."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    url: str = Field("", description="where the endpoint serves its files (informative)")
    description: str = Field("", description="shown in `panda-lab links`")


class LinkSettings(BaseModel):
    """The keys of one ``[[links]]`` entry."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    endpoint: str = Field(description="the storage endpoint read from")
    site: str = Field(description="the site reading")
    throughput: float = Field(ge=0, description="MB/s the site reads from the endpoint at "
                                                "(0: unusable, brokerage avoids it)")
    latency: float = Field(0.0, ge=0, description="ms each read request waits")


@dataclass(frozen=True)
class LinkConfig:
    """A declared link: ``mbps`` in MB/s (10^6 bytes), ``latency_ms`` in milliseconds."""

    endpoint: str
    site: str
    mbps: float
    latency_ms: float = 0.0

    def as_dict(self) -> dict:
        """``{"endpoint", "site", "mbps", "latency_ms"}``, as the store records it."""
        return {"endpoint": self.endpoint, "site": self.site, "mbps": self.mbps,
                "latency_ms": self.latency_ms}


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "?"
    if err["type"] == "extra_forbidden":
        return f"unknown key {key!r}"
    if err["type"] == "missing":
        return f"missing key {key!r}"
    return f"{key!r}: {err['msg']}"


def parse_network(data: dict, sites: list[SiteConfig],
                  source: str = "sites.toml") -> tuple[dict[str, EndpointSettings],
                                                       list[LinkConfig]]:
    """The endpoints and links of a parsed ``sites.toml`` whose ``sites`` are given.

    Returns ``({endpoint name: settings}, [LinkConfig])``, links in file order.  Raises
    :class:`ConfigError` naming the table and the key: an unknown or missing key, a
    wrong type, a negative throughput or latency, a link to an endpoint
    no table or site names, to a site that is not configured, or declared twice."""
    raw_endpoints = data.get("endpoints", {})
    if not isinstance(raw_endpoints, dict):
        raise ConfigError(f"{source}: 'endpoints' must be a table of [endpoints.NAME]")
    endpoints: dict[str, EndpointSettings] = {}
    for name, body in raw_endpoints.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: [endpoints.{name}] must be a table")
        try:
            endpoints[name] = EndpointSettings.model_validate(body)
        except ValidationError as exc:
            raise ConfigError(f"{source}: [endpoints.{name}] {_first_error(exc)}; "
                              f"allowed: {sorted(EndpointSettings.model_fields)}") from None
    known = set(endpoints) | {s.endpoint for s in sites if s.endpoint}
    site_names = {s.name for s in sites}
    raw_links = data.get("links", [])
    if not isinstance(raw_links, list):
        raise ConfigError(f"{source}: 'links' must be an array of tables ([[links]])")
    links: list[LinkConfig] = []
    seen: set[tuple[str, str]] = set()
    for i, body in enumerate(raw_links):
        where = f"{source}: [[links]] #{i + 1}"
        if not isinstance(body, dict):
            raise ConfigError(f"{where} must be a table")
        try:
            s = LinkSettings.model_validate(body)
        except ValidationError as exc:
            raise ConfigError(f"{where} {_first_error(exc)}; "
                              f"allowed: {sorted(LinkSettings.model_fields)}") from None
        if s.endpoint not in known:
            raise ConfigError(f"{where} endpoint {s.endpoint!r} is not declared; known "
                              f"endpoints: {', '.join(sorted(known)) or 'none'}")
        if s.site not in site_names:
            raise ConfigError(f"{where} site {s.site!r} is not configured; known sites: "
                              f"{', '.join(sorted(site_names))}")
        if (s.endpoint, s.site) in seen:
            raise ConfigError(f"{where} link {s.endpoint} -> {s.site} is declared twice")
        seen.add((s.endpoint, s.site))
        links.append(LinkConfig(s.endpoint, s.site, float(s.throughput), float(s.latency)))
    return endpoints, links


def load_links(path: str | Path, sites: list[SiteConfig]) -> list[LinkConfig]:
    """The declared links of a ``sites.toml`` file (see :func:`parse_network`); raises
    :class:`ConfigError` as it does, or when the file is missing or not TOML."""
    path = Path(path)
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"site file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_network(data, sites, str(path))[1]
