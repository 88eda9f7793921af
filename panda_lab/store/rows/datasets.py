"""Dataset rows: datasets, their files and replicas, files found bad; analysis chunks.

A dataset is registered once (entries, sizes and cluster boundaries read from the files'
metadata) and shared by every notebook of the server.  An analysis task keeps the input
chunk of each job, so its report can say, for every file and entry range, what happened.
Functions take a ``Connection`` and open no transaction; the workflow verbs do.
"""

from __future__ import annotations

import json

from sqlalchemy import Connection, delete, insert, or_, select, true
from sqlalchemy.engine import Row

from panda_lab.model.brokerage import Request
from panda_lab.store.base import now
from panda_lab.store.errors import DatasetNotFound
from panda_lab.store.schema import bad_files, chunks, datasets, files, replicas


def find(conn: Connection, name: str) -> int | None:
    """The id of the dataset called ``name``, or None."""
    return conn.execute(select(datasets.c.id).where(datasets.c.name == name)).scalar()


def owner_of(conn: Connection, name: str) -> str | None:
    """The owner of the dataset called ``name`` (None: registered before identities,
    or no such dataset)."""
    return conn.execute(select(datasets.c.owner).where(datasets.c.name == name)).scalar()


def _of(owner: str | None, server_owner: str | None):
    """The SQL condition "owned by ``owner``": a dataset of no recorded owner belongs to
    the server owner."""
    if owner is None:
        return true()
    if owner == server_owner:
        return or_(datasets.c.owner == owner, datasets.c.owner.is_(None))
    return datasets.c.owner == owner


def delete_dataset(conn: Connection, ds_id: int) -> None:
    """A dataset with its files, replicas and bad files."""
    file_ids = select(files.c.id).where(files.c.dataset_id == ds_id)
    conn.execute(delete(replicas).where(replicas.c.file_id.in_(file_ids)))
    conn.execute(delete(files).where(files.c.dataset_id == ds_id))
    conn.execute(delete(bad_files).where(bad_files.c.dataset_id == ds_id))
    conn.execute(delete(datasets).where(datasets.c.id == ds_id))


def insert_dataset(conn: Connection, name: str, tree: str, files_: list[dict],
                   bad_: list[dict], owner: str | None = None) -> int:
    """A dataset, its files (with replicas; an origin replica when none is given) and
    its bad files; returns its id.  File dicts as ``Store.register_dataset`` takes them."""
    ds_id = conn.execute(insert(datasets).values(
        name=name, tree=tree, n_files=len(files_),
        n_events=sum(int(f["entries"]) for f in files_),
        size_bytes=sum(int(f["size_bytes"]) for f in files_), created_at=now(), owner=owner,
    ).returning(datasets.c.id)).scalar_one()
    for i, f in enumerate(files_):
        index = f["file_index"] if f.get("file_index") is not None else i
        fid = conn.execute(insert(files).values(
            dataset_id=ds_id, file_index=index, path=f["path"], tree=f.get("tree", tree),
            entries=int(f["entries"]), size_bytes=int(f["size_bytes"]),
            clusters=json.dumps([int(c) for c in f["clusters"]]),
            branches=json.dumps(f.get("branches", [])),
        ).returning(files.c.id)).scalar_one()
        reps = f.get("replicas") or [{"endpoint": "origin", "url": f["path"]}]
        conn.execute(insert(replicas), [
            {"file_id": fid, "endpoint": r["endpoint"], "url": r["url"]} for r in reps])
    if bad_:
        conn.execute(insert(bad_files), [
            {"dataset_id": ds_id, "path": b["path"], "tree": b.get("tree") or tree,
             "reason": b["reason"],
             "file_index": b["file_index"] if b.get("file_index") is not None
             else len(files_) + k}
            for k, b in enumerate(bad_)])
    return ds_id


def get(conn: Connection, name: str, with_files: bool, owner: str | None = None,
        server_owner: str | None = None) -> dict:
    """A dataset's row as a dict, with ``files`` and ``bad_files`` when asked; raises
    :class:`DatasetNotFound` (naming up to 20 known datasets), also for a dataset not of
    ``owner`` when one is given (``server_owner`` owns those of no recorded owner)."""
    mine = _of(owner, server_owner)
    row = conn.execute(select(datasets).where(datasets.c.name == name, mine)).first()
    if row is None:
        known = [r[0] for r in conn.execute(select(datasets.c.name).where(mine).limit(20))]
        raise DatasetNotFound(f"no dataset named {name!r}; known: {known}")
    out = dict(row._mapping)
    if with_files:
        out["files"] = files_of(conn, row.id)
        out["bad_files"] = [
            {"file_index": b.file_index, "path": b.path, "tree": b.tree, "reason": b.reason}
            for b in conn.execute(select(bad_files).where(bad_files.c.dataset_id == row.id)
                                  .order_by(bad_files.c.file_index))]
    return out


def files_of(conn: Connection, ds_id: int) -> list[dict]:
    """A dataset's files in order, each with its replicas ``[{endpoint, url}]``."""
    rows = conn.execute(select(files).where(files.c.dataset_id == ds_id)
                        .order_by(files.c.file_index)).all()
    reps: dict[int, list[dict]] = {}
    for r in conn.execute(select(replicas).where(
            replicas.c.file_id.in_([f.id for f in rows])).order_by(replicas.c.id)):
        reps.setdefault(r.file_id, []).append({"endpoint": r.endpoint, "url": r.url})
    return [{"file_index": f.file_index, "path": f.path, "tree": f.tree,
             "entries": f.entries, "size_bytes": f.size_bytes,
             "clusters": json.loads(f.clusters), "branches": json.loads(f.branches),
             "replicas": reps.get(f.id, [])} for f in rows]


def listing(conn: Connection, owner: str | None = None,
            server_owner: str | None = None) -> list[dict]:
    """Every dataset's row (of ``owner``, as :func:`get` counts it) as a dict, by name."""
    return [dict(r._mapping) for r in conn.execute(
        select(datasets).where(_of(owner, server_owner)).order_by(datasets.c.name))]


# ---- analysis chunks: the input range of each job ------------------------------------------
def insert_chunks(conn: Connection, task_id: int, start: int, job_chunks: list[list[dict]],
                  scout: bool) -> None:
    """The input ranges of jobs ``start, start + 1, ...`` of a task."""
    conn.execute(insert(chunks), [
        {"task_id": task_id, "job_index": start + i, "file_index": c["file_index"],
         "path": c["path"], "tree": c["tree"], "start": c["start"], "stop": c["stop"],
         "scout": scout}
        for i, cs in enumerate(job_chunks) for c in cs])


def chunks_of(conn: Connection, task_id: int) -> list[Row]:
    """A task's chunks by job index (then insertion order)."""
    return conn.execute(select(chunks).where(chunks.c.task_id == task_id)
                        .order_by(chunks.c.job_index, chunks.c.id)).all()


def input_request(chunks: list[dict], sites: tuple[str, ...]) -> Request:
    """The request of an analysis job reading ``chunks`` (dicts with ``path``, ``start``,
    ``stop``, optional ``bytes`` (the range's share of its file), ``file_bytes`` (the
    whole file's) and ``replicas`` ``[{"endpoint", "url"}]``): its events, the bytes of
    its input held at each endpoint, its files and their whole size, and the read
    requests it makes (about two per chunk: the metadata, then the baskets in one
    request)."""
    held: dict[str, int] = {}
    sizes = {c["path"]: int(c.get("file_bytes") or 0) for c in chunks}
    for c in chunks:
        for endpoint in {r["endpoint"] for r in c.get("replicas") or ()}:
            held[endpoint] = held.get(endpoint, 0) + int(c.get("bytes") or 0)
    return Request(sites=sites, near=frozenset(held),
                   events=sum(int(c["stop"]) - int(c["start"]) for c in chunks),
                   input_bytes={e: b for e, b in held.items() if b > 0},
                   files=tuple(dict.fromkeys(c["path"] for c in chunks)),
                   read_requests=max(1, 2 * len(chunks)), file_bytes=sum(sizes.values()))
