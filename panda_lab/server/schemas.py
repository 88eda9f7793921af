"""Request bodies of the REST API, as pydantic models: they give the OpenAPI schema and
turn bad input into a 422 that names the field, before anything touches the store.

The rule: every field a request carries (path, query, body) is bounded in the schema by
what the store can hold, so nothing reaches the database or the code unchecked.  Ids and
indices are INTEGER columns, 32-bit on PostgreSQL (SQLite's are 64-bit): ``Id`` and
``Index`` keep to the smaller range, ids from 1.  Counts and sizes (events, bytes) are
64-bit (``Count``); seconds are finite (``Seconds``); names are as long as their column
(``Name``, ``SiteName``) and hold no NUL (PostgreSQL's text refuses it); states are
the model's enums; a result reference is one the server gave (``ResultRef``).  Without
it an id beyond SQLite's range (``GET /api/jobs/-15740692419485192192``) reached the
driver and got a 500.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from fastapi import Header, HTTPException, Query
from fastapi import Path as FastPath
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from panda_lab.model import JobState
from panda_lab.text import clean

#: The largest value of an INTEGER column on PostgreSQL (SQLite's are 64-bit).
INT32_MAX = 2**31 - 1
#: The largest value SQLite (and PostgreSQL's BIGINT) stores.
INT64_MAX = 2**63 - 1

Id = Annotated[int, Field(ge=1, le=INT32_MAX, description="an id (a task's, job's, pilot's)")]
Index = Annotated[int, Field(ge=0, le=INT32_MAX, description="a logical job's index in its task")]
Int32 = Annotated[int, Field(ge=-INT32_MAX - 1, le=INT32_MAX)]
Count = Annotated[int, Field(ge=0, le=INT64_MAX)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False, description="seconds, finite")]
#: Strict: a number (an integer too), never a string of digits nor a boolean (read as 1.0).
Timestamp = Annotated[float, Field(ge=0, le=1e11, allow_inf_nan=False, strict=True,
                                   description="seconds since the epoch")]
#: Text a database column keeps: no NUL character (PostgreSQL's text types refuse it).
NO_NUL = r"^[^\x00]*$"

#: The ``Idempotency-Key`` request header (IETF draft "The Idempotency-Key HTTP Header
#: Field"): a client's unique key (a UUID) for one request that creates work; a repeat
#: with the same key gets what the first made (store/rows/submissions.py).
IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$",
    description="a unique key (printable ASCII, e.g. a UUID) per request; a request "
                "repeated with it makes nothing new and gets the first one's answer")]


def text(max_length: int, min_length: int = 0) -> object:
    """A ``Field`` for text kept in a column of ``max_length`` characters, without NUL."""
    return Field(min_length=min_length, max_length=max_length, pattern=NO_NUL)


Name = Annotated[str, text(256, 1)]
SiteName = Annotated[str, text(128, 1)]
#: Where a job may run: a site, a comma-separated list of them, or a list (empty, ""
#: and "ANY": any site).
Sites = (Annotated[str, text(10_000)]
         | Annotated[list[Annotated[str, text(128)]], Field(max_length=1000)])
Owner = Annotated[str, text(128)]
#: A large result's place in the result store, as ``PUT /api/pilot/results`` named it.
ResultRef = Annotated[str, Field(max_length=32, pattern=r"^[0-9]{1,10}/[0-9]{1,10}\.pkl$")]


def b64decode(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None


def _is_b64(value: str) -> str:
    b64decode(value, "the value")
    return value


#: Bytes in JSON: checked to be base64 where the field is read, so a bad one is a 422
#: naming it, never an error where the bytes are used.
B64 = Annotated[str, Field(description="bytes, base64-encoded"), AfterValidator(_is_b64)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobSpec(Strict):
    payload: B64
    site: Sites | None = None
    priority: Int32 | None = None
    cores: Annotated[int, Field(ge=1, le=1024)] | None = None
    memory_mb: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None
    walltime_s: Seconds | None = None
    max_attempts: Annotated[int, Field(ge=1, le=100)] | None = None

    def store_dict(self) -> dict:
        d = {k: v for k, v in self.model_dump().items() if v is not None}
        d["payload"] = base64.b64decode(self.payload)
        return d


class TaskOptions(Strict):
    priority: Int32 = 0
    cores: Annotated[int, Field(ge=1, le=1024)] = 1
    memory_mb: Annotated[int, Field(ge=0, le=INT32_MAX)] = 0
    walltime_s: Seconds = 0.0
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    kind: Annotated[str, text(32)] = "jobs"
    client: dict = Field(default_factory=dict, description="client environment, for checks")
    output_limit: Annotated[int, Field(ge=0, le=1 << 30)] | None = Field(
        None, description="characters of each job's stdout and stderr kept in full "
                          "(default: panda_lab.output.OUTPUT_LIMIT)")
    workdir: dict[str, str] | None = Field(
        None, description="the submitting client's {host, path}: a pilot on that host runs "
                          "the task's jobs in that directory (panda_lab.payload.workdir)")
    network: Literal["active", "passive", "off"] | None = Field(
        None, description="brokerage's network term for this task: weighed (active), "
                          "computed and shown only (passive), not computed (off); "
                          "default: the server's")
    policy: Literal["network", "passive", "locality", "round-robin",
                    "least-loaded"] | None = Field(
        None, description="brokerage policy for this task, to compare (overrides "
                          "network): see panda_lab.model.brokerage.Policy")
    accumulate: Literal["panda-lab", "coffea"] | None = Field(
        None, description="the rules an analysis's results merge by: coffea's for a coffea "
                          "processor (lists concatenate), else panda-lab's "
                          "(panda_lab.analysis.accumulate)")


class TaskSubmit(Strict):
    name: Name
    owner: Owner = ""
    site: Sites = "ANY"
    jobs: list[JobSpec] = Field(default_factory=list, max_length=1_000_000)
    common: B64 | None = None
    open: bool = False
    options: TaskOptions = Field(default_factory=TaskOptions)


class JobsAdd(Strict):
    jobs: list[JobSpec] = Field(min_length=1, max_length=1_000_000)


class JobIds(Strict):
    ids: list[Id] = Field(min_length=1, max_length=1_000_000)


class JobIndices(Strict):
    indices: list[Index] = Field(min_length=1, max_length=1_000_000,
                               description="logical job indices within the task")


class PilotRegister(Strict):
    site: SiteName
    host: Annotated[str, text(256)]
    pid: Annotated[int, Field(ge=0, le=INT32_MAX)]
    slots: Annotated[int, Field(ge=1, le=1024)] = 1
    info: dict = Field(default_factory=dict)


def clean_text(value: object) -> object:
    """A report's free text made valid UTF-8 without NUL (the rule of panda_lab.text), so
    that a pilot that did not apply the rule cannot get its whole report refused, nor
    put into the database what PostgreSQL or the JSON of the event stream refuse."""
    return clean(value) if isinstance(value, str) else value


class JobError(Strict):
    category: Literal["user", "input", "payload", "system", "timeout", "killed", "merge"]
    message: Annotated[str, Field(max_length=100_000)] = ""
    traceback: Annotated[str, Field(max_length=1_000_000)] | None = None
    type: Annotated[str, text(1000)] | None = None
    exception: B64 | None = Field(None, description="the pickled exception, to re-raise it")

    _texts = field_validator("message", "traceback", "type", mode="before")(clean_text)


class LinkReads(Strict):
    """What a job read from one storage endpoint (see :mod:`panda_lab.reads`): ``""``
    is the site's own endpoint."""

    endpoint: Annotated[str, Field(max_length=256)]
    bytes: Count
    seconds: Seconds
    requests: Count


class CacheAction(Strict):
    """What a pilot did to its site's stage-in cache for a job: ``staged`` a file (copied
    it in), a ``hit`` (read a copy there), or ``evicted`` one (least recently used)."""

    action: Literal["staged", "hit", "evicted"]
    path: Annotated[str, Field(max_length=4096)]
    bytes: int = Field(0, ge=0)


class JobUpdate(Strict):
    id: Id
    attempt: Id
    state: JobState
    started_at: Timestamp | None = None
    #: When the payload ended, on the pilot's clock as ``started_at`` is (a final
    #: report may go out up to ``flush_interval`` later): the job's ``ended_at``.
    ended_at: Timestamp | None = None
    result: B64 | None = None
    result_ref: ResultRef | None = None
    error: JobError | None = None
    stdout: Annotated[str, Field(max_length=100_000)] | None = None
    stderr: Annotated[str, Field(max_length=100_000)] | None = None
    #: Bytes, seconds and requests per endpoint the job read: the links it measured.
    reads: list[LinkReads] | None = Field(None, max_length=64)
    #: What the job's pilot did to its site's stage-in cache (model/staging.py).
    cache: list[CacheAction] | None = Field(None, max_length=4096)
    #: Events the job processed, and the payload's wall seconds: the site's speed.
    events: Count | None = None
    seconds: Seconds | None = None
    #: The first job of its task in a new worker process (imports, first opens): its
    #: speed is not the site's, see store/rows/links.py observe_sites.
    cold: bool | None = None
    #: Failed without having started: the pilot hands it back (it stops, or its
    #: walltime runs out), and its next attempt does not count against its limit.
    unstarted: bool | None = None
    #: The payload's peak resident memory during the job (MB) and its CPU seconds.
    peak_rss_mb: Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)] | None = None
    cpu_s: Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)] | None = None

    _texts = field_validator("stdout", "stderr", mode="before")(clean_text)


class PilotUsage(Strict):
    """A pilot's usage with its workers (panda_lab.pilot.usage.PilotMeter)."""

    rss_mb: Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False,
                                   description="resident memory now, MB")]
    cpu_s: Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False,
                                  description="CPU seconds since the pilot started")]
    cpu_pct: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False,
                                    description="CPU since the previous reading, % of "
                                                "one core")] | None = None


class PilotUpdate(Strict):
    pilot: Id
    updates: list[JobUpdate] = Field(default_factory=list, max_length=100_000)
    held: list[Id] = Field(default_factory=list, max_length=100_000)
    usage: PilotUsage | None = None


class PilotAcquire(Strict):
    pilot: Id
    site: SiteName
    n: Annotated[int, Field(ge=1, le=1000)] = 1
    #: Jobs beyond ``n`` the pilot would hold ahead, given only while the site has jobs
    #: to spare (``panda_lab.store.rows.jobs.spare``).
    extra: Annotated[int, Field(ge=0, le=1000)] = 0
    wait: Annotated[float, Field(ge=0, le=60, allow_inf_nan=False)] = 0.0
    held: list[Id] = Field(default_factory=list, max_length=100_000)
    #: The pilot met a transport failure since its last acquisition: an answer may have
    #: been lost, so the jobs on it that it does not hold (``held``) are failed at once
    #: (and retried as the rules allow) instead of after the heartbeat timeout.
    lost_check: bool = False
    #: Reports to apply before jobs are handed out, as ``/update`` takes them (and the
    #: pilot's usage with them): the report of the job whose slot the pilot fills rides
    #: with the acquisition, one round trip instead of two.
    updates: list[JobUpdate] = Field(default_factory=list, max_length=100_000)
    usage: PilotUsage | None = None
    #: The tasks whose common payload part the pilot holds; ``None`` (a pilot that does
    #: not say) fetches every one itself.  The answer's ``commons`` carries the others'
    #: of the jobs it hands out (``{task_id: base64}``, each of at most
    #: ``INLINE_COMMON`` bytes, ``panda_lab.store.rows.tasks``).
    commons: list[Id] | None = Field(default=None, max_length=100_000)


class PilotHeartbeat(Strict):
    pilot: Id
    held: list[Id] = Field(default_factory=list, max_length=100_000)
    usage: PilotUsage | None = None


class PilotEnd(Strict):
    pilot: Id
    state: Literal["finished", "failed"] = "finished"


# ---- path and query parameters, by the same rule --------------------------------------------

IdPath = Annotated[int, FastPath(ge=1, le=INT32_MAX, description="an id, from 1")]


def _task_ref_in_range(task: str) -> str:
    if task.isascii() and task.isdigit() and not 1 <= int(task) <= INT32_MAX:
        raise ValueError(f"task id {task} is out of range (1 to {INT32_MAX})")
    return task


TaskRef = Annotated[str, FastPath(min_length=1, max_length=256, pattern=NO_NUL,
                                  description="a task id (ASCII digits, in an id's range), "
                                              "or a task's name (its newest task)"),
                    AfterValidator(_task_ref_in_range)]
NamePath = Annotated[str, FastPath(min_length=1, max_length=256, pattern=NO_NUL)]
#: A comma-separated list of integers in a query (``1,2,5``): checked by :func:`int_list`.
IntList = Annotated[str | None, Query(max_length=100_000, pattern=r"^[0-9, ]*$",
                                      description="comma-separated integers")]


def invalid(where: str, field: str, msg: str, value: object = None) -> HTTPException:
    """A 422 shaped as the schema's own ones: ``detail`` is ``[{"loc": [where, field],
    "msg", "type", "input"}]``, for a check the schema cannot express."""
    item: dict = {"loc": [where, field], "msg": msg, "type": "value_error"}
    if isinstance(value, str) and len(value) < 200:
        item["input"] = value
    return HTTPException(422, [item])


def int_list(value: str | None, field: str, lo: int, hi: int = INT32_MAX) -> list[int] | None:
    """The integers of a comma-separated query parameter ``field`` (None when absent or
    empty), each in ``[lo, hi]``.  Raises a 422 naming ``field`` otherwise."""
    if not value:
        return None
    try:
        out = [int(i) for i in value.split(",") if i.strip()]
    except ValueError:
        raise invalid("query", field, "must be comma-separated integers", value) from None
    bad = next((i for i in out if not lo <= i <= hi), None)
    if bad is not None:
        raise invalid("query", field, f"{bad} is out of range ({lo} to {hi})", value)
    return out


def task_ref(task: str) -> int | str:
    """A task given in a path (``TaskRef``, checked already): an id (ASCII digits; not
    ``str.isdigit``, which "²" passes) or a name."""
    return int(task) if task.isascii() and task.isdigit() else task
