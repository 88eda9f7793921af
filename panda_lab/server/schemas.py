"""Request bodies of the REST API, as pydantic models: they give the OpenAPI schema and
turn bad input into a 422 that names the field, before anything touches the store."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from panda_lab.model import JobState
from panda_lab.text import clean

B64 = Annotated[str, Field(description="bytes, base64-encoded")]


def b64decode(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobSpec(Strict):
    payload: B64
    site: str | list[str] | None = None
    priority: int | None = None
    cores: Annotated[int, Field(ge=1, le=1024)] | None = None
    memory_mb: Annotated[int, Field(ge=0)] | None = None
    walltime_s: Annotated[float, Field(ge=0)] | None = None
    max_attempts: Annotated[int, Field(ge=1, le=100)] | None = None

    @field_validator("payload")
    @classmethod
    def _payload(cls, v: str) -> str:
        b64decode(v, "payload")
        return v

    def store_dict(self) -> dict:
        d = {k: v for k, v in self.model_dump().items() if v is not None}
        d["payload"] = base64.b64decode(self.payload)
        return d


class TaskOptions(Strict):
    priority: int = 0
    cores: Annotated[int, Field(ge=1, le=1024)] = 1
    memory_mb: Annotated[int, Field(ge=0)] = 0
    walltime_s: Annotated[float, Field(ge=0)] = 0.0
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    kind: str = "jobs"
    client: dict = Field(default_factory=dict, description="client environment, for checks")
    output_limit: Annotated[int, Field(ge=0, le=1 << 30)] | None = Field(
        None, description="characters of each job's stdout and stderr kept in full "
                          "(default: panda_lab.output.OUTPUT_LIMIT)")
    network: Literal["active", "passive", "off"] | None = Field(
        None, description="brokerage's network term for this task: weighed (active), "
                          "computed and shown only (passive), not computed (off); "
                          "default: the server's")
    policy: Literal["network", "passive", "locality", "round-robin",
                    "least-loaded"] | None = Field(
        None, description="brokerage policy for this task, to compare (overrides "
                          "network): see panda_lab.model.brokerage.Policy")


class TaskSubmit(Strict):
    name: Annotated[str, Field(min_length=1, max_length=256)]
    owner: str = ""
    site: str | list[str] = "ANY"
    jobs: list[JobSpec] = Field(default_factory=list, max_length=1_000_000)
    common: B64 | None = None
    open: bool = False
    options: TaskOptions = Field(default_factory=TaskOptions)

    @field_validator("common")
    @classmethod
    def _common(cls, v: str | None) -> str | None:
        if v is not None:
            b64decode(v, "common")
        return v


class JobsAdd(Strict):
    jobs: list[JobSpec] = Field(min_length=1, max_length=1_000_000)


class JobIds(Strict):
    ids: list[int] = Field(min_length=1, max_length=1_000_000)


class JobIndices(Strict):
    indices: list[int] = Field(min_length=1, max_length=1_000_000,
                               description="logical job indices within the task")


class PilotRegister(Strict):
    site: str
    host: str
    pid: int
    slots: Annotated[int, Field(ge=1, le=1024)] = 1
    info: dict = Field(default_factory=dict)


class PilotAcquire(Strict):
    pilot: int
    site: str
    n: Annotated[int, Field(ge=1, le=1000)] = 1
    wait: Annotated[float, Field(ge=0, le=60)] = 0.0
    held: list[int] = Field(default_factory=list, max_length=100_000)


def _clean_text(value: object) -> object:
    """A report's free text made valid UTF-8 without NUL (the rule of panda_lab.text), so
    that a pilot that did not apply the rule cannot get its whole report refused, nor
    put into the database what PostgreSQL or the JSON of the event stream refuse."""
    return clean(value) if isinstance(value, str) else value


class JobError(Strict):
    category: Literal["user", "input", "payload", "system", "timeout", "killed", "merge"]
    message: Annotated[str, Field(max_length=100_000)] = ""
    traceback: Annotated[str, Field(max_length=1_000_000)] | None = None
    type: str | None = None
    exception: B64 | None = Field(None, description="the pickled exception, to re-raise it")

    _texts = field_validator("message", "traceback", "type", mode="before")(_clean_text)


class LinkReads(Strict):
    """What a job read from one storage endpoint (see :mod:`panda_lab.reads`): ``""``
    is the site's own endpoint."""

    endpoint: Annotated[str, Field(max_length=256)]
    bytes: int = Field(ge=0)
    seconds: float = Field(ge=0)
    requests: int = Field(ge=0)


class JobUpdate(Strict):
    id: int
    attempt: int
    state: JobState
    started_at: float | None = None
    result: B64 | None = None
    result_ref: str | None = None
    error: JobError | None = None
    stdout: Annotated[str, Field(max_length=100_000)] | None = None
    stderr: Annotated[str, Field(max_length=100_000)] | None = None
    #: Bytes, seconds and requests per endpoint the job read: the links it measured.
    reads: list[LinkReads] | None = Field(None, max_length=64)
    #: Events the job processed, and the payload's wall seconds: the site's speed.
    events: Annotated[int, Field(ge=0)] | None = None
    seconds: Annotated[float, Field(ge=0)] | None = None

    _texts = field_validator("stdout", "stderr", mode="before")(_clean_text)


class PilotUpdate(Strict):
    pilot: int
    updates: list[JobUpdate] = Field(default_factory=list, max_length=100_000)
    held: list[int] = Field(default_factory=list, max_length=100_000)


class PilotHeartbeat(Strict):
    pilot: int
    held: list[int] = Field(default_factory=list, max_length=100_000)


class PilotEnd(Strict):
    pilot: int
    state: Literal["finished", "failed"] = "finished"
