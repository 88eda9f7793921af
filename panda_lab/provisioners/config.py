"""Site configuration: the keys each provisioner accepts, their types, defaults and meaning.

Each provisioner declares its keys as a pydantic model (``LocalSite``, ``SlurmSite``,
``DaskSite``, ``GatewaySite``, ``ManualSite``, over the common keys of ``SiteSettings``)
and registers it with its class (:func:`provisioner`).  ``parse_sites`` reads a
``sites.toml`` through that registry; a wrong key or value is a :class:`ConfigError` that
names the site, the key and what is allowed, because a typo in a site file should never
silently mean "default".  :func:`keys_table` renders the models as the README's table.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from panda_lab.resources import (
    READ_CACHE_ENV,
    LocalPlan,
    ResourceError,
    Resources,
    detect,
    plan_local,
    plan_note,
)

log = logging.getLogger("panda_lab.provisioners")

SITE_KINDS = ("grid", "cloud", "hpc", "local")

WALLTIME = re.compile(r"^(?:(\d+)-)?(\d{1,2}):(\d{2}):(\d{2})$")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and the allowed values."""


def walltime_seconds(value: str) -> int:
    """``"HH:MM:SS"`` or ``"D-HH:MM:SS"`` in seconds; ``ValueError`` for anything else."""
    m = WALLTIME.match(value)
    if not m:
        raise ValueError(f"walltime {value!r} is not HH:MM:SS or D-HH:MM:SS")
    d, h, mi, s = (int(x or 0) for x in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + s


# ---- the keys, one model per provisioner ---------------------------------------------------

class SiteSettings(BaseModel):
    """Keys every site accepts.  Strict: ``"4"`` is not a number, ``true`` is not one."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    #: For provisioners whose number of pilots follows their queue: the key that gives the
    #: site's most pilots (what brokerage counts as its capacity before they start);
    #: ``pilots`` is then refused.
    pilots_key: ClassVar[str | None] = None

    kind: Literal["grid", "cloud", "hpc", "local"] = Field(
        "local", description="what the site stands for: grid, cloud, hpc or local")
    provisioner: str = Field(
        "local", description="who starts its pilots (see the registry)")
    pilots: int = Field(1, ge=0, description="pilots kept alive (sites that follow their queue "
                                             "give their most instead: see below)")
    slots: int = Field(1, ge=1, description="jobs each pilot runs at once")
    description: str = Field("", description="shown in `panda-lab sites`")
    endpoint: str = Field("", description="the storage endpoint near the site: its replicas "
                                          "are read first and its jobs brokered here")
    cache_bytes: int = Field(0, ge=0, description="bytes the site's stage-in cache holds at "
                                                "most, least recently used evicted first "
                                                "(0: no cache; input is read remotely)")
    cache_dir: str = Field("", description="where the site's pilots keep the stage-in cache "
                                           "(default: site-cache/NAME in the server's home)")
    pilot_token_file: str = Field(
        "", description="a file holding the token the site's pilots get, one issued by "
                        "`panda-lab users add-pilot SITE` (revocable there); unset: the server "
                        "makes the site a token of its own. Either serves this site only")

    @model_validator(mode="after")
    def _cache(self) -> SiteSettings:
        if self.cache_dir and not self.cache_bytes:
            raise ValueError("cache_dir needs cache_bytes (the cache's bound in bytes, > 0)")
        return self

    def most_pilots(self) -> int:
        """The site's number of pilots at most: ``pilots``, or the provisioner's own key."""
        return self.pilots if self.pilots_key is None else int(getattr(self, self.pilots_key))


class LocalSite(SiteSettings):
    """Pilots as processes on the server's machine."""

    shared_cores: int = Field(0, ge=0, description="payloads run at once by the pilots of "
                                                   "every local site that sets it, together "
                                                   "(this machine's cores; 0: no limit). The "
                                                   "embedded default sets it when it has more "
                                                   "workers than cores")


class ManualSite(SiteSettings):
    """Pilots started by hand (``panda-lab pilot --site NAME``); nothing is provisioned."""


class SlurmSite(SiteSettings):
    """Pilots as Slurm batch jobs, as many as the queue needs."""

    pilots_key: ClassVar[str | None] = "max_jobs"

    partition: str = Field("", description="`--partition` of the pilot jobs")
    account: str = Field("", description="`--account` of the pilot jobs")
    walltime: str = Field("", description="`--time` (HH:MM:SS or D-HH:MM:SS); a pilot takes "
                                          "no job it could not finish in time")
    memory: int = Field(0, ge=0, description="`--mem` in MB (0: Slurm's default)")
    extra_directives: list[str] = Field(default_factory=list,
                                        description='more `#SBATCH` lines, e.g. `["--qos=short"]`')
    max_jobs: int = Field(1, ge=1, description="pilot batch jobs at most")
    min_jobs: int = Field(0, ge=0, description="pilot batch jobs kept when nothing is queued")
    jobs_per_pilot: int | None = Field(None, ge=1, description="jobs one allocation runs "
                                                               "before it ends (unset: no limit)")
    idle_exit: float = Field(60.0, ge=0, description="seconds an idle pilot waits for work "
                                                     "before it frees its allocation")

    @model_validator(mode="after")
    def _check(self) -> SlurmSite:
        if self.walltime:
            walltime_seconds(self.walltime)
        _bounds(self, "min_jobs", "max_jobs")
        return self


class DaskSite(SiteSettings):
    """One pilot on each worker of a Dask cluster, a running one or one started here."""

    pilots_key: ClassVar[str | None] = "workers"

    scheduler: str = Field("", description="address of a running scheduler "
                                           "(or give `cluster`)")
    cluster: str = Field("", description='a cluster class to start, e.g. '
                                         '`"dask_jobqueue.SLURMCluster"`')
    cluster_options: dict[str, Any] = Field(default_factory=dict,
                                            description="keyword arguments of `cluster`")
    workers: int = Field(1, ge=1, description="`cluster.scale(workers)` when given; the most "
                                              "pilots")

    @model_validator(mode="after")
    def _check(self) -> DaskSite:
        if bool(self.scheduler) == bool(self.cluster):
            raise ValueError("a dask site needs exactly one of 'scheduler' (the address of a "
                             "running scheduler) or 'cluster' (a cluster class such as "
                             "'distributed.LocalCluster')")
        if "cluster_options" in self.model_fields_set and not self.cluster:
            raise ValueError("cluster_options needs 'cluster'")
        return self


class GatewaySite(SiteSettings):
    """A dask-gateway cluster scaled to the site's queue, a pilot on each worker."""

    pilots_key: ClassVar[str | None] = "max_workers"

    address: str = Field(description="the dask-gateway URL")
    min_workers: int = Field(0, ge=0, description="workers kept after `idle_timeout`")
    max_workers: int = Field(4, ge=1, description="workers at most, asked for at once when "
                                                  "jobs wait")
    cluster_options: dict[str, Any] = Field(default_factory=dict,
                                            description="options of `new_cluster`")
    idle_timeout: float = Field(60.0, ge=0, description="seconds with nothing queued or "
                                                        "running before scaling down")
    timeout: float = Field(30.0, gt=0, description="seconds a gateway call may take before "
                                                   "the site is offline")

    @model_validator(mode="after")
    def _check(self) -> GatewaySite:
        _bounds(self, "min_workers", "max_workers")
        return self


def _bounds(model: BaseModel, low: str, high: str) -> None:
    lo, hi = getattr(model, low), getattr(model, high)
    if lo > hi:
        raise ValueError(f"{low} = {lo} is more than {high} = {hi}")


# ---- the registry ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Kind:
    """A provisioner as the configuration sees it: its name, the model of its keys, and
    the ``Provisioner`` class that runs it (``None``: pilots are started by hand), built
    with ``make.for_site(spec, home, known_pilots)``."""

    name: str
    settings: type[SiteSettings]
    make: type | None


#: Provisioner name → its keys and class.  Filled by :func:`provisioner` as
#: ``panda_lab.provisioners`` imports its modules.
REGISTRY: dict[str, Kind] = {}


def provisioner(name: str, settings: type[SiteSettings]) -> Callable[[type], type]:
    """Class decorator: register a provisioner class under ``name`` with its keys."""
    def register(cls: type) -> type:
        REGISTRY[name] = Kind(name, settings, cls)
        return cls

    return register


#: ``provisioner = "none"``: the site's pilots are started by hand.
MANUAL = Kind("none", ManualSite, None)


def kinds() -> dict[str, Kind]:
    """Every provisioner name a site may give, mapped to its :class:`Kind`: the
    registered ones by name, then ``none``."""
    return {**dict(sorted(REGISTRY.items())), "none": MANUAL}


# ---- sites ----------------------------------------------------------------------------------

@dataclass
class SiteConfig:
    """A site as the server and its provisioner see it.  ``extra`` holds the provisioner's
    keys as the site file gave them (shown by ``panda-lab sites``); ``settings`` is the
    validated model with every default filled in."""

    name: str
    kind: str = "local"
    provisioner: str = "local"
    #: Pilots the provisioner keeps alive at this site (at most, where the queue decides).
    pilots: int = 1
    #: Payload worker processes per pilot (jobs it runs at once).
    slots: int = 1
    description: str = ""
    #: The storage endpoint near this site (a replica's ``endpoint``), read first.
    endpoint: str = ""
    #: Bytes the site's stage-in cache holds at most (0: none), and where it is ("":
    #: the server's default, ``site-cache/NAME`` in its home).
    cache_bytes: int = 0
    cache_dir: str = ""
    #: A file holding the site's pilot token ("" : the server makes one for the site).
    pilot_token_file: str = ""
    extra: dict = field(default_factory=dict)
    settings: SiteSettings | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.settings is None:
            model = kinds()[self.provisioner].settings
            body = {"kind": self.kind, "provisioner": self.provisioner, "slots": self.slots,
                    "description": self.description, "endpoint": self.endpoint,
                    "pilot_token_file": self.pilot_token_file, **self._cache_keys(), **self.extra}
            if model.pilots_key is None:
                body["pilots"] = self.pilots
            self.settings = model.model_validate(body)

    def as_dict(self) -> dict:
        token_file = {"pilot_token_file": self.pilot_token_file} if self.pilot_token_file else {}
        return {"name": self.name, "kind": self.kind, "provisioner": self.provisioner,
                "pilots": self.pilots, "slots": self.slots, "description": self.description,
                "endpoint": self.endpoint, **token_file, **self._cache_keys(), **self.extra}

    def _cache_keys(self) -> dict:
        return {k: v for k, v in (("cache_bytes", self.cache_bytes),
                                  ("cache_dir", self.cache_dir)) if v}

    def read_pilot_token(self) -> str | None:
        """The token in ``pilot_token_file`` (surrounding white space dropped), or None
        when the site has no such file declared.  Raises :class:`ConfigError` naming the
        site and the key when the file cannot be read or holds no token."""
        if not self.pilot_token_file:
            return None
        where = f"[sites.{self.name}] pilot_token_file = {self.pilot_token_file!r}"
        try:
            token = Path(self.pilot_token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{where}: not a text file") from None
        if not token or any(c.isspace() for c in token):
            raise ConfigError(f"{where}: the file must hold one token, on one line")
        return token


def default_sites(resources: Resources | None = None, *,
                  plan: LocalPlan | None = None) -> list[SiteConfig]:
    """The embedded default: local sites sized to what this process may use.

    ``resources`` (default: :func:`panda_lab.resources.detect`, the cgroup's CPUs and
    memory, or ``PANDA_LAB_CPUS`` / ``PANDA_LAB_MEMORY``) goes through
    :func:`panda_lab.resources.plan_local`: three sites, one of each remote kind, honestly
    labelled local, when memory allows, else one.  Raises :class:`ConfigError` naming the
    variable when an override is not a valid value.  ``plan``, when given, is used as it is."""
    plan = plan or local_plan(resources)
    names = (("LOCAL-GRID", "grid"), ("LOCAL-CLOUD", "cloud"), ("LOCAL-HPC", "hpc"))
    if plan.sites == 1:
        names = (("LOCAL", "local"),)
    return [
        SiteConfig(name=name, kind=kind, provisioner="local", pilots=plan.pilots,
                   slots=plan.slots,
                   extra={"shared_cores": plan.shared_cores} if plan.shared_cores else {},
                   description=(f"local pilot processes on this machine, standing in for "
                                f"{'an' if kind == 'hpc' else 'a'} {kind} site"
                                if kind != "local" else
                                "local pilot processes on this machine"))
        for name, kind in names
    ]


def local_plan(resources: Resources | None = None) -> LocalPlan:
    """:func:`panda_lab.resources.plan_local` of ``resources`` (default: detected), logged;
    a bad override is a :class:`ConfigError` naming the variable."""
    try:
        res = resources or detect()
    except ResourceError as exc:
        raise ConfigError(str(exc)) from None
    plan = plan_local(res)
    try:
        log.info("embedded default: %s", plan_note(plan))
    except ResourceError as exc:
        raise ConfigError(str(exc)) from None
    # The local pilots' workers inherit the server's environment: their read cache is
    # sized with the rest of the plan unless the user set it (checked above, by name).
    if not (os.environ.get(READ_CACHE_ENV) or "").strip():
        os.environ[READ_CACHE_ENV] = f"{plan.cache_mb} MB"
    for note in res.notes:
        log.warning("resources: %s", note)
    return plan


def parse_site(name: str, body: Any, source: str = "sites.toml") -> SiteConfig:
    """One ``[sites.NAME]`` table to a :class:`SiteConfig`.  Raises :class:`ConfigError`
    naming the site and the key: an unknown key (with the allowed ones), a wrong type, a
    value out of range, a missing required key, bounds the wrong way round."""
    where = f"{source}: [sites.{name}]"
    if not isinstance(body, dict):
        raise ConfigError(f"{where} must be a table")
    prov = body.get("provisioner", "local")
    every = kinds()
    if prov not in every:
        raise ConfigError(f"{where} provisioner = {prov!r}; allowed: {sorted(every)}")
    model = every[prov].settings
    if model.pilots_key is not None and "pilots" in body:
        raise ConfigError(f"{where} 'pilots' is not used by provisioner {prov!r}; "
                          f"set {model.pilots_key!r}")
    try:
        settings = model.model_validate(body)
    except ValidationError as exc:
        raise ConfigError(f"{where} {_explain(exc, model, prov)}") from None
    common = set(SiteSettings.model_fields)
    token_file = settings.pilot_token_file
    if token_file and not Path(token_file).is_absolute():
        token_file = str(Path(source).parent / token_file)  # beside the site file
    site = SiteConfig(
        name=name, kind=settings.kind, provisioner=prov, pilots=settings.most_pilots(),
        slots=settings.slots, description=settings.description, endpoint=settings.endpoint,
        cache_bytes=settings.cache_bytes, cache_dir=settings.cache_dir,
        pilot_token_file=token_file,
        extra={k: v for k, v in body.items() if k not in common}, settings=settings)
    site.read_pilot_token()  # a missing or empty file is said now, not at the first pilot
    return site


def _explain(exc: ValidationError, model: type[SiteSettings], prov: str) -> str:
    """The first error of a validation as one sentence that names the key."""
    err = exc.errors()[0]
    key = str(err["loc"][0]) if err["loc"] else ""
    value, kind, ctx = err.get("input"), err["type"], err.get("ctx") or {}
    allowed = sorted(model.model_fields)
    if kind == "extra_forbidden":
        return f"unknown key {key!r} for provisioner {prov!r}; allowed: {allowed}"
    if kind == "missing":
        what = model.model_fields[key].description
        return f"a {prov} site needs {key!r} ({what})"
    if kind == "literal_error":
        return f"{key} = {value!r}; allowed: {list(get_args(model.model_fields[key].annotation))}"
    if kind in ("greater_than_equal", "greater_than"):
        bound = ctx.get("ge", ctx.get("gt"))
        rule = ("must not be negative" if kind == "greater_than_equal" and bound == 0
                else f"must be at least {bound}" if kind == "greater_than_equal"
                else f"must be more than {bound}")
        return f"{key} = {value!r} {rule}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if key not in model.model_fields:
        return str(err["msg"])
    # a type error; inside a list (``extra_directives = [1]``) the input is the item
    where = "".join(f"[{x}]" for x in err["loc"][1:])
    wanted = (_ITEM_TYPES.get(kind, kind) if where
              else _type_name(model.model_fields[key].annotation))
    return f"{key}{where} = {value!r} must be of type {wanted}"


#: pydantic's type errors, in the words of the README's table.
_ITEM_TYPES = {"string_type": "str", "int_type": "int", "float_type": "int or float",
               "list_type": "list", "dict_type": "table", "bool_type": "bool"}


def _type_name(annotation: Any) -> str:
    """How a key's type reads in an error and in the table."""
    if annotation is float:
        return "int or float"
    args = [a for a in get_args(annotation) if a is not type(None)]
    if type(None) in get_args(annotation) and len(args) == 1:
        return _type_name(args[0])
    origin = get_origin(annotation)
    if origin is Literal:
        return "str"
    if origin is not None:
        return {list: "list", dict: "table"}.get(origin, str(origin))
    return getattr(annotation, "__name__", str(annotation))


def parse_sites(data: dict, source: str = "sites.toml") -> list[SiteConfig]:
    """A parsed ``sites.toml`` (``{"sites": {NAME: {...}}}``) to its sites, in file order.
    Raises :class:`ConfigError` for anything :func:`parse_site` refuses, an unknown
    top-level key, or a file without sites."""
    # [endpoints.NAME] and [[links]] are the network's (provisioners/links.py)
    unknown_top = set(data) - {"sites", "endpoints", "links"}
    if unknown_top:
        raise ConfigError(f"{source}: unknown top-level key(s) {sorted(unknown_top)}; "
                          "allowed: ['endpoints', 'links', 'sites']")
    sites_ = data.get("sites")
    if not isinstance(sites_, dict) or not sites_:
        raise ConfigError(f"{source}: no [sites.NAME] tables found")
    return [parse_site(name, body, source) for name, body in sites_.items()]


def load_sites(path: str | Path) -> list[SiteConfig]:
    """The sites of a ``sites.toml`` file; :class:`ConfigError` when it is missing, not
    TOML, or wrong (see :func:`parse_sites`)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"site file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_sites(data, str(path))


# ---- the README's table ---------------------------------------------------------------------

TABLE_HEADER = "| Key | Provisioner | Type | Default | Meaning |"


def _default(info: Any) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if value in ("", [], {}, None):
        return "—"
    return f"`{value!r}`".replace("'", '"')


def keys_table() -> str:
    """The keys of ``sites.toml`` as a markdown table (the README's): the common keys
    first, then each provisioner's own (by provisioner name), with type, default and
    meaning.  Returns the
    table's lines joined by newlines, ending with one."""
    rows = [TABLE_HEADER, "|---|---|---|---|---|"]
    common = SiteSettings.model_fields
    names = ", ".join(f"`{name}`" for name in kinds() if name != "none")
    for key, info in common.items():
        meaning = info.description
        if key == "provisioner":
            meaning = f"who starts its pilots: {names}, or `none` (pilots started by hand)"
        rows.append(_row(key, "all", info, meaning))
    for name, kind in kinds().items():
        model = kind.settings
        for key, info in model.model_fields.items():
            if key in common:
                continue
            meaning = info.description
            if key == model.pilots_key:
                meaning += " (replaces `pilots`)"
            rows.append(_row(key, name, info, meaning))
    return "\n".join(rows) + "\n"


def _row(key: str, provisioner_: str, info: Any, meaning: str | None) -> str:
    return (f"| `{key}` | {provisioner_} | {_type_name(info.annotation)} | {_default(info)} | "
            f"{meaning} |")
