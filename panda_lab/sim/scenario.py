"""Simulation scenarios: sites, datasets, links and tasks, read from TOML and checked.

The format (every key optional unless marked; sizes in MB = 10^6 bytes, times in s)::

    name = "slow link to the biggest site"
    description = "..."
    seed = 1                       # random generator of brokerage and failures
    policies = ["network", "round-robin"]   # default: all five

    [network]                      # the true network, for links not listed below
    default_mbps = 50.0            # a remote read's throughput
    default_latency_ms = 30.0
    local_mbps = 500.0             # a site reading its own endpoint
    local_latency_ms = 1.0

    [sites.BIG]                    # one table per site (at least one)
    slots = 200                    # required: job slots of its pilots
    speed = 20000                  # required: events/s of one slot
    endpoint = "BIG-SE"            # its storage endpoint ("" : none)
    failure_rate = 0.0             # fraction of attempts that fail (at their end)
    pilot_delay_s = 30             # when its pilots start taking jobs
    job_start_s = 1.0              # seconds a job costs before it reads or computes
                                   # (payload start); default: brokerage's JOB_START_S
    local_mbps = 800               # overrides network.local_mbps
    cache_mb = 0                   # its stage-in cache (sites.toml's cache_bytes, here in
                                   # MB; 0: none): jobs told to stage in copy their files
                                   # whole into it, later jobs there read them (LRU)
    count = 1                      # >1: sites BIG-01 .. BIG-NN, "{i}" in endpoint numbered

    [datasets.main]                # at least one
    files = 400                    # required
    file_mb = 2000                 # required
    events_per_file = 1_000_000    # required
    clusters_per_file = 10         # cut points the splitter may use
    replicas = { "BIG-SE" = 1.0, "T2-*-SE" = 0.1 }   # required: endpoint (glob) ->
                                   # fraction of the files it holds (1.0: all)

    [[links]]                      # the true throughput of a link
    endpoint = "BIG-SE"            # required
    site = "SMALL"                 # required
    mbps = 5                       # required (0: unusable)
    latency_ms = 80
    declared = false               # true: brokerage knows it from the start (sites.toml)

    [[tasks]]                      # at least one
    dataset = "main"               # required
    split = "events"               # events | files | auto (scouts first, as JEDI)
    events_per_job = 250_000       # split "events"
    files_per_job = 1              # split "files"
    target_job_seconds = 600       # split "auto"
    submit_at = 0
    sites = "ANY"                  # or a list of sites
    max_attempts = 3
    read_requests = 10             # read requests a job makes per file
    queue_limit = 0                # jobs of the task queued at once (JEDI's throttle);
                                   # 0: every job brokered at submission, as the server

Errors raise :class:`ScenarioError` naming the key (``sites.BIG.slots: ...``).
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from panda_lab.model.brokerage import JOB_START_S, Policy


class ScenarioError(ValueError):
    """A scenario that cannot be simulated; the message starts with the key."""


@dataclass(frozen=True)
class SiteSpec:
    name: str
    slots: int
    speed: float
    endpoint: str = ""
    failure_rate: float = 0.0
    pilot_delay_s: float = 0.0
    local_mbps: float = 500.0
    job_start_s: float = JOB_START_S
    local_latency_ms: float = 1.0
    #: bytes the site's stage-in cache holds at most (0: no cache)
    cache_bytes: int = 0


@dataclass(frozen=True)
class FileSpec:
    name: str
    nbytes: int
    events: int
    clusters: tuple[int, ...]
    replicas: tuple[str, ...]


@dataclass(frozen=True)
class LinkSpec:
    endpoint: str
    site: str
    mbps: float
    latency_ms: float
    declared: bool = False


@dataclass(frozen=True)
class TaskSpec:
    dataset: str
    split: str = "events"
    events_per_job: int = 0
    files_per_job: int = 1
    target_job_seconds: float = 600.0
    submit_at: float = 0.0
    sites: tuple[str, ...] = ("ANY",)
    max_attempts: int = 3
    read_requests: int = 10
    queue_limit: int = 0


@dataclass
class Scenario:
    name: str
    description: str
    seed: int
    policies: tuple[Policy, ...]
    sites: list[SiteSpec]
    datasets: dict[str, list[FileSpec]]
    links: dict[tuple[str, str], LinkSpec]
    tasks: list[TaskSpec]
    default_mbps: float = 50.0
    default_latency_ms: float = 30.0
    source: str = ""
    endpoints: list[str] = field(default_factory=list)

    def link(self, endpoint: str, site: SiteSpec) -> LinkSpec:
        """The true link from ``endpoint`` to ``site``: listed, local, or the default."""
        got = self.links.get((endpoint, site.name))
        if got is not None:
            return got
        if endpoint == site.endpoint:
            return LinkSpec(endpoint, site.name, site.local_mbps, site.local_latency_ms)
        return LinkSpec(endpoint, site.name, self.default_mbps, self.default_latency_ms)


def _get(table: dict, key: str, where: str, kind: type | tuple, default: Any = ...,
         positive: bool = False, fraction: bool = False) -> Any:
    if key not in table:
        if default is ...:
            raise ScenarioError(f"{where}{key}: required")
        return default
    v = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(v, bool) and bool not in kinds) or not isinstance(v, kinds):
        raise ScenarioError(f"{where}{key}: expected {' or '.join(k.__name__ for k in kinds)}, "
                            f"got {v!r}")
    if positive and v <= 0:
        raise ScenarioError(f"{where}{key}: must be positive, got {v!r}")
    if fraction and not 0 <= v <= 1:
        raise ScenarioError(f"{where}{key}: must be between 0 and 1, got {v!r}")
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
        raise ScenarioError(f"{where}{key}: must not be negative, got {v!r}")
    return v


def _unknown(table: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise ScenarioError(f"{where}{extra[0]}: unknown key (known: {', '.join(sorted(allowed))})")


NUM = (int, float)


def _sites(raw: dict, net: dict) -> list[SiteSpec]:
    if not isinstance(raw, dict) or not raw:
        raise ScenarioError("sites: at least one [sites.NAME] table is required")
    out = []
    for name, t in raw.items():
        w = f"sites.{name}."
        if not isinstance(t, dict):
            raise ScenarioError(f"sites.{name}: expected a table")
        _unknown(t, {"slots", "speed", "endpoint", "failure_rate", "pilot_delay_s",
                     "local_mbps", "local_latency_ms", "count", "job_start_s",
                     "cache_mb"}, w)
        count = _get(t, "count", w, int, 1, positive=True)
        common = dict(slots=_get(t, "slots", w, int, positive=True),
                      speed=float(_get(t, "speed", w, NUM, positive=True)),
                      failure_rate=float(_get(t, "failure_rate", w, NUM, 0.0, fraction=True)),
                      pilot_delay_s=float(_get(t, "pilot_delay_s", w, NUM, 0.0)),
                      job_start_s=float(_get(t, "job_start_s", w, NUM, JOB_START_S)),
                      local_mbps=float(_get(t, "local_mbps", w, NUM,
                                            net["local_mbps"], positive=True)),
                      local_latency_ms=float(_get(t, "local_latency_ms", w, NUM,
                                                  net["local_latency_ms"])),
                      cache_bytes=int(float(_get(t, "cache_mb", w, NUM, 0)) * 1e6))
        endpoint = _get(t, "endpoint", w, str, "")
        for i in range(1, count + 1):
            n = name if count == 1 else f"{name}-{i:02d}"
            out.append(SiteSpec(n, endpoint=endpoint.replace("{i}", f"{i:02d}"), **common))
    return out


def _datasets(raw: dict, endpoints: list[str]) -> dict[str, list[FileSpec]]:
    if not isinstance(raw, dict) or not raw:
        raise ScenarioError("datasets: at least one [datasets.NAME] table is required")
    out = {}
    for name, t in raw.items():
        w = f"datasets.{name}."
        _unknown(t, {"files", "file_mb", "events_per_file", "clusters_per_file", "replicas"}, w)
        n = _get(t, "files", w, int, positive=True)
        nbytes = int(float(_get(t, "file_mb", w, NUM, positive=True)) * 1e6)
        events = _get(t, "events_per_file", w, int, positive=True)
        nclu = min(_get(t, "clusters_per_file", w, int, 10, positive=True), events)
        reps = _get(t, "replicas", w, dict)
        held: list[list[str]] = [[] for _ in range(n)]
        for k, (pattern, frac) in enumerate(reps.items()):
            if isinstance(frac, bool) or not isinstance(frac, NUM) or not 0 <= frac <= 1:
                raise ScenarioError(f"{w}replicas.{pattern}: a fraction between 0 and 1, "
                                    f"got {frac!r}")
            match = [e for e in endpoints if fnmatch.fnmatchcase(e, pattern)]
            if not match:
                raise ScenarioError(f"{w}replicas.{pattern}: no site has such an endpoint "
                                    f"(endpoints: {', '.join(endpoints) or 'none'})")
            for j, e in enumerate(match):
                # the files an endpoint holds: a fraction, spread so endpoints differ
                m, off = round(frac * n), (k * 7919 + j * n // max(len(match), 1)) % n
                for f in range(m):
                    held[(off + f) % n].append(e)
        clusters = tuple(sorted({events * c // nclu for c in range(nclu + 1)}))
        files = [FileSpec(f"{name}/{i:06d}.root", nbytes, events, clusters, tuple(h))
                 for i, h in enumerate(held)]
        if any(not f.replicas for f in files):
            raise ScenarioError(f"{w}replicas: some files have no replica (fractions under 1 "
                                f"must add up to cover every file)")
        out[name] = files
    return out


def load(source: str | Path, text: str | None = None) -> Scenario:
    """The scenario in the TOML file ``source`` (or in ``text``, ``source`` naming it).
    Raises :class:`ScenarioError` naming the key for anything missing, mistyped, unknown
    or inconsistent, and for a file that is not TOML."""
    try:
        raw = tomllib.loads(text if text is not None else Path(source).read_text("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not TOML: {exc}") from None
    except OSError as exc:
        raise ScenarioError(f"{source}: {exc.strerror or exc}") from None
    return parse(raw, str(source))


def parse(raw: dict, source: str = "") -> Scenario:
    """A scenario from its parsed TOML (see :func:`load`)."""
    _unknown(raw, {"name", "description", "seed", "policies", "network", "sites", "datasets",
                   "links", "tasks"}, "")
    nraw = _get(raw, "network", "", dict, {})
    _unknown(nraw, {"default_mbps", "default_latency_ms", "local_mbps", "local_latency_ms"},
             "network.")
    net = {"default_mbps": float(_get(nraw, "default_mbps", "network.", NUM, 50.0,
                                      positive=True)),
           "default_latency_ms": float(_get(nraw, "default_latency_ms", "network.", NUM, 30.0)),
           "local_mbps": float(_get(nraw, "local_mbps", "network.", NUM, 500.0, positive=True)),
           "local_latency_ms": float(_get(nraw, "local_latency_ms", "network.", NUM, 1.0))}
    sites = _sites(_get(raw, "sites", "", dict), net)
    names = {s.name for s in sites}
    endpoints = sorted({s.endpoint for s in sites if s.endpoint})
    datasets = _datasets(_get(raw, "datasets", "", dict), endpoints)
    links: dict[tuple[str, str], LinkSpec] = {}
    for i, t in enumerate(_get(raw, "links", "", list, [])):
        w = f"links[{i}]."
        _unknown(t, {"endpoint", "site", "mbps", "latency_ms", "declared"}, w)
        ep, site = _get(t, "endpoint", w, str), _get(t, "site", w, str)
        if site not in names:
            raise ScenarioError(f"{w}site: unknown site {site!r}")
        links[(ep, site)] = LinkSpec(ep, site, float(_get(t, "mbps", w, NUM)),
                                     float(_get(t, "latency_ms", w, NUM,
                                                net["default_latency_ms"])),
                                     _get(t, "declared", w, bool, False))
    tasks = []
    traw = _get(raw, "tasks", "", list)
    if not traw:
        raise ScenarioError("tasks: at least one [[tasks]] table is required")
    for i, t in enumerate(traw):
        w = f"tasks[{i}]."
        _unknown(t, {"dataset", "split", "events_per_job", "files_per_job",
                     "target_job_seconds", "submit_at", "sites", "max_attempts",
                     "read_requests", "queue_limit"}, w)
        ds = _get(t, "dataset", w, str)
        if ds not in datasets:
            raise ScenarioError(f"{w}dataset: unknown dataset {ds!r}")
        split = _get(t, "split", w, str, "events")
        if split not in ("events", "files", "auto"):
            raise ScenarioError(f"{w}split: events, files or auto, got {split!r}")
        epj = _get(t, "events_per_job", w, int, 0)
        if split == "events" and epj <= 0:
            raise ScenarioError(f"{w}events_per_job: required and positive for split events")
        tsites = _get(t, "sites", w, (str, list), "ANY")
        tsites = tuple([tsites] if isinstance(tsites, str) else tsites)
        for s in tsites:
            if s != "ANY" and s not in names:
                raise ScenarioError(f"{w}sites: unknown site {s!r}")
        tasks.append(TaskSpec(
            ds, split, epj, _get(t, "files_per_job", w, int, 1, positive=True),
            float(_get(t, "target_job_seconds", w, NUM, 600.0, positive=True)),
            float(_get(t, "submit_at", w, NUM, 0.0)), tsites,
            _get(t, "max_attempts", w, int, 3, positive=True),
            _get(t, "read_requests", w, int, 10, positive=True),
            _get(t, "queue_limit", w, int, 0)))
    pol = _get(raw, "policies", "", list, [str(p) for p in Policy])
    try:
        policies = tuple(Policy(p) for p in pol)
    except ValueError:
        raise ScenarioError(f"policies: each one of {', '.join(map(str, Policy))}; "
                            f"got {pol!r}") from None
    return Scenario(_get(raw, "name", "", str, Path(source).stem if source else "scenario"),
                    _get(raw, "description", "", str, ""), _get(raw, "seed", "", int, 1),
                    policies, sites, datasets, links, tasks, net["default_mbps"],
                    net["default_latency_ms"], source, endpoints)
