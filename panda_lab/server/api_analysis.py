"""The data and analysis API: datasets, dataset analyses, partial results, reports.

Datasets and analysis tasks belong to the identity that registered or submitted them
(:mod:`panda_lab.server.auth`): another user's are a 404, as missing ones."""

from __future__ import annotations

import base64
from collections import Counter
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import Field, field_validator

from panda_lab.analysis.files import UnknownColumns
from panda_lab.model.splitter import SplitRule, check_clusters
from panda_lab.server import analysis_report
from panda_lab.server.api_client import replayed, submission_key
from panda_lab.server.app import Server
from panda_lab.server.auth import Who, known, task_of
from panda_lab.server.schemas import (
    B64,
    INT32_MAX,
    NO_NUL,
    Count,
    IdempotencyKey,
    IdPath,
    Name,
    NamePath,
    Owner,
    Seconds,
    Sites,
    Strict,
    TaskOptions,
    b64decode,
    clean_text,
    text,
)

router = APIRouter()


def _server(request: Request) -> Server:
    return request.app.state.server


Tree = Annotated[str, text(256, 1)]
#: A path, URL or branch name: as long as a path may be (Linux's PATH_MAX).
Text = Annotated[str, text(4096)]


class Replica(Strict):
    endpoint: Annotated[str, text(256, 1)]
    url: Text


class FileSpec(Strict):
    #: The file's place in the list given at registration (good and bad files together).
    file_index: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None
    path: Text
    tree: Tree
    entries: Count
    size_bytes: Count
    clusters: list[Count]
    branches: list[Text] = Field(default_factory=list)
    replicas: list[Replica] = Field(default_factory=list)


class BadFile(Strict):
    """A file given at registration that cannot be used, and why (kept, to be reported)."""

    file_index: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None
    path: Text
    tree: Tree | None = None
    #: free text: made valid UTF-8 without NUL (panda_lab.text), not refused
    reason: Annotated[str, Field(min_length=1, max_length=100_000)]

    _texts = field_validator("reason", mode="before")(clean_text)


class DatasetRegister(Strict):
    name: Name
    tree: Tree
    #: May be empty: a dataset without files (a skim that wrote none) analyses to nothing.
    files: list[FileSpec] = Field(default_factory=list, max_length=1_000_000)
    bad_files: list[BadFile] = Field(default_factory=list, max_length=1_000_000)
    replace: bool = False


class Split(Strict):
    mode: Literal["auto", "events", "files"] = "auto"
    events_per_job: Count = 0
    files_per_job: Annotated[int, Field(ge=0, le=INT32_MAX)] = 0
    target_job_seconds: Annotated[Seconds, Field(gt=0)] = 60.0
    n_scouts: Annotated[int, Field(ge=1, le=100)] = 3


class AnalysisSubmit(Strict):
    name: Name
    owner: Owner = ""
    dataset: Name
    processor: B64 = Field(description="the pickled job function (processor bound)")
    split: Split = Field(default_factory=Split)
    #: The columns the processor reads, when the user named them: checked against the
    #: dataset's branches before any job is made.
    columns: list[Text] | None = None
    site: Sites = "ANY"
    skip_bad_files: bool = False
    options: TaskOptions = Field(default_factory=TaskOptions)


@router.post("/datasets", status_code=201)
async def register_dataset(request: Request, body: DatasetRegister, who: Who) -> dict:
    s = _server(request)
    for f in body.files:
        try:
            check_clusters(f.path, f.entries, f.clusters)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
    given = [f.file_index for f in [*body.files, *body.bad_files]]
    if any(i is not None for i in given):
        if None in given:
            raise HTTPException(422, "file_index: give it for every file and bad file, or none")
        twice = sorted(i for i, n in Counter(given).items() if n > 1)
        if twice:
            raise HTTPException(422, f"file_index: {twice} given to more than one file")
    files = [f.model_dump() for f in body.files]
    bad = [b.model_dump() for b in body.bad_files]
    ds_id = await s.db(s.store.register_dataset, body.name, body.tree, files, body.replace,
                       bad, who.name)
    return {"id": ds_id, "name": body.name}


@router.get("/datasets")
async def list_datasets(request: Request, who: Who,
                        user: Annotated[str | None, Query(max_length=128, pattern=NO_NUL)]
                        = None) -> list[dict]:
    """One's own datasets; an admin's or a monitor's: everyone's, or ``user``'s."""
    s = _server(request)
    return await s.db(s.store.list_datasets, who.owner(user), s.owner_name)


@router.get("/datasets/{name}")
async def get_dataset(request: Request, name: NamePath, who: Who, files: bool = True) -> dict:
    s = _server(request)
    return await s.db(s.store.get_dataset, name, files, who.owner(), s.owner_name)


@router.post("/analyses", status_code=201)
async def submit_analysis(request: Request, response: Response, body: AnalysisSubmit,
                          who: Who, idempotency_key: IdempotencyKey = None) -> dict:
    """Split a dataset into jobs (or send scouts first, for ``auto``) and run the processor.
    The dataset must be one ``who`` sees (404); the task is ``who``'s (``owner`` ignored).
    With an ``Idempotency-Key``, a repeat makes no second task (as ``POST /tasks``)."""
    s = _server(request)
    await s.db(s.store.get_dataset, body.dataset, False, who.owner(), s.owner_name)
    sp = body.split
    if sp.mode == "events" and sp.events_per_job <= 0:
        raise HTTPException(422, "split mode 'events' needs events_per_job > 0")
    if sp.mode == "files" and sp.files_per_job <= 0:
        raise HTTPException(422, "split mode 'files' needs files_per_job > 0")
    key = submission_key(who.name, idempotency_key, "POST /analyses", body)
    prior = await replayed(s, response, key)
    if prior is not None:
        return {"task": prior["task"]}
    rule = SplitRule(sp.mode, sp.events_per_job, sp.files_per_job, sp.target_job_seconds,
                     sp.n_scouts)
    common = b64decode(body.processor, "processor")
    try:
        task_id, changes = await s.db(s.analysis.submit, body.name, body.dataset, common, rule,
                                      body.site, body.options.model_dump(),
                                      body.skip_bad_files, who.name, body.columns, key)
    except UnknownColumns as exc:
        raise HTTPException(422, str(exc)) from exc
    s.publish(changes)
    return {"task": task_id}


@router.get("/tasks/{task_id}/partial")
async def partial(request: Request, task_id: IdPath, who: Who) -> dict:
    """The merged result so far, cheap: the merger's latest state, no job result is read."""
    s = _server(request)
    await task_of(s, who, task_id)
    known(s, task_id)  # 404 for an unknown task
    snap = await s.db(analysis_report.partial, s.store, s.analysis.merger,
                      s.analysis.files_of(task_id), task_id)
    data = snap.pop("data")
    snap["data"] = base64.b64encode(data).decode() if data is not None else None
    return snap


@router.get("/tasks/{task_id}/report")
async def report(request: Request, task_id: IdPath, who: Who) -> list[dict]:
    """Every input range with the fate of its job and whether it is in the merged result,
    then the files no job reads (404: no task)."""
    s = _server(request)
    await task_of(s, who, task_id)
    known(s, task_id)  # 404 for an unknown task
    return await s.db(analysis_report.report, s.store, s.analysis.merger, task_id)
