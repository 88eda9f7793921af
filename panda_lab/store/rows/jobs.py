"""Job rows (one row per attempt) and their status history.

Every statement here touches many jobs at once (``IN`` lists, ``executemany`` with bound
parameters): the per-job cost of the control plane is what limits throughput.  Functions
take a ``Connection`` and open no transaction; the workflow verbs do.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence

import orjson
from sqlalchemy import Connection, bindparam, exists, func, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.sql.elements import BindParameter

from panda_lab.model import (
    JOB_FINAL,
    JOB_ON_PILOT,
    JOB_RETRYABLE,
    JOB_WAITING,
    ErrorCategory,
    JobState,
)
from panda_lab.model.brokerage import passed_at
from panda_lab.model.states import PilotState
from panda_lab.store.base import Changes, JobChange, loads
from panda_lab.store.rows import holders
from panda_lab.store.rows import sites as site_rows
from panda_lab.store.schema import job_decisions, job_status, jobs, pilots
from panda_lab.text import clean

J = JobState
FINAL = [str(s) for s in JOB_FINAL]
ON_PILOT = [str(s) for s in JOB_ON_PILOT]
WAITING = [str(s) for s in JOB_WAITING]
RETRYABLE = [str(s) for s in JOB_RETRYABLE]
#: An attempt's brokerage decision (JSON text), as a column named ``broker_info``: its row
#: in ``job_decisions``, else (attempts placed before that table) the job row's own.
DECISION = func.coalesce(
    select(job_decisions.c.info).where(job_decisions.c.job_id == jobs.c.id)
    .scalar_subquery(), jobs.c.broker_info).label("broker_info")
#: Every column but the payload and the decision: what a report needs.
LEAN = [c for c in jobs.c if c.name not in ("payload", "broker_info")]
#: Every column but the payload, the decision included: what reads and retries need.
NO_PAYLOAD = [*LEAN, DECISION]

# The statements of every dispatch and report, built once (parameters by name): building
# a statement and its cache key cost about as much as running it on SQLite.
_IDS = bindparam("ids", expanding=True)
_SEND = (update(jobs)
         .where(jobs.c.id.in_(_IDS), jobs.c.state == str(J.ACTIVATED))
         .values(state=str(J.SENT), pilot_id=bindparam("pilot"), site=bindparam("site"),
                 modified_at=bindparam("t"), heartbeat_at=bindparam("t"))
         .returning(jobs.c.id, jobs.c.task_id, jobs.c.job_index, jobs.c.attempt,
                    jobs.c.payload, jobs.c.walltime_s, jobs.c.cores, jobs.c.priority,
                    jobs.c.data_key, jobs.c.access, jobs.c.read_from))
_LOCK_ACTIVATED = (select(jobs.c.id).where(jobs.c.id.in_(_IDS), jobs.c.state == str(J.ACTIVATED))
                   .with_for_update(skip_locked=True))
_DECISIONS = select(jobs.c.id, DECISION).where(jobs.c.id.in_(_IDS))
_MOVE_DECISION = (update(job_decisions).where(job_decisions.c.job_id == bindparam("jid"))
                  .values(info=bindparam("text_")))
_MOVE_OLD_DECISION = (update(jobs).where(jobs.c.id == bindparam("jid"))
                      .values(broker_info=bindparam("text_")))
_LOCK_FOR_REPORT = select(*LEAN).where(jobs.c.id.in_(_IDS)).with_for_update()
_HEARTBEAT = (update(jobs)
              .where(jobs.c.id.in_(_IDS), jobs.c.pilot_id == bindparam("pilot"),
                     jobs.c.state.in_(ON_PILOT))
              .values(heartbeat_at=bindparam("t")))
_HISTORY = insert(job_status)
_HELD_STATES = select(jobs.c.id, jobs.c.state, jobs.c.pilot_id).where(jobs.c.id.in_(_IDS))
#: Every column, the decision included: what a next attempt is made from.
FULL = [*(c for c in jobs.c if c.name != "broker_info"), DECISION]

#: The error message of an attempt cancelled by its client before any attempt of its
#: logical job reached a pilot (``cancel_waiting``); pbook's ``retry`` never brings such
#: a job back: its client was told it would never run.
CANCELLED_BY_CLIENT = "cancelled by its client before it ran"

#: A state change of one attempt, guarded by the state it was read in (compare-and-set).
UPDATE = (
    update(jobs)
    .where(jobs.c.id == bindparam("b_id"), jobs.c.state == bindparam("b_old"))
    .values(
        state=bindparam("b_state"),
        modified_at=bindparam("b_time"),
        heartbeat_at=bindparam("b_time"),
        started_at=func.coalesce(jobs.c.started_at, bindparam("b_started")),
        ended_at=bindparam("b_ended"),
        error_category=bindparam("b_cat"),
        error_message=bindparam("b_msg"),
        error_traceback=bindparam("b_tb"),
        error_pickle=bindparam("b_exc"),
        stdout_tail=func.coalesce(bindparam("b_out"), jobs.c.stdout_tail),
        stderr_tail=func.coalesce(bindparam("b_err"), jobs.c.stderr_tail),
        peak_rss_mb=func.coalesce(bindparam("b_rss"), jobs.c.peak_rss_mb),
        cpu_s=func.coalesce(bindparam("b_cpu"), jobs.c.cpu_s),
    )
)

#: A running job's output so far (the pilot sends it while the job runs): no state change.
OUTPUT = (
    update(jobs)
    .where(jobs.c.id == bindparam("b_id"), jobs.c.state == bindparam("b_old"))
    .values(
        heartbeat_at=bindparam("b_time"),
        stdout_tail=func.coalesce(bindparam("b_out"), jobs.c.stdout_tail),
        stderr_tail=func.coalesce(bindparam("b_err"), jobs.c.stderr_tail),
    )
)


def text(value: object) -> object:
    """Text for a ``text`` column: PostgreSQL refuses NUL, and neither database takes a
    lone surrogate (the rule of :mod:`panda_lab.text`; reports arrive clean already)."""
    return clean(value) if isinstance(value, str) else value


def history(conn: Connection,
            rows: Iterable[tuple[int, Sequence[JobState | str], float | Sequence[float],
                                 str]]) -> None:
    """Append to the status history: ``(job id, states in order, time, info)``, the
    time one for all the states or one per state."""
    batch = [{"job_id": jid, "state": str(st), "time": at, "info": info}
             for jid, states, t, info in rows
             for st, at in zip(states, t if isinstance(t, Sequence) else [t] * len(states),
                               strict=True)]
    if batch:
        conn.execute(_HISTORY, batch)


#: Attempt rows inserted in as few statements as the driver takes, each row's id read
#: back with its key.
_INSERT = insert(jobs).returning(jobs.c.id, jobs.c.task_id, jobs.c.job_index, jobs.c.attempt)


def _insert_rows(conn: Connection, rows: list[dict]) -> list[int]:
    """Insert job rows; their ids in the rows' order.  Each row's id is matched by its key
    (task, index, attempt) rather than by the order rows come back in: asked to keep
    that order, SQLAlchemy inserts one row per statement on SQLite (10,000 statements
    for a 10,000-job task).  Rows with a key twice fall back to that."""
    keys = [(r["task_id"], r["job_index"], r["attempt"]) for r in rows]
    if len(set(keys)) < len(keys):
        return list(conn.execute(
            insert(jobs).returning(jobs.c.id, sort_by_parameter_order=True), rows).scalars())
    got = {(r.task_id, r.job_index, r.attempt): r.id for r in conn.execute(_INSERT, rows)}
    return [got[k] for k in keys]


def insert_attempts(conn: Connection, rows: list[dict], t: float, changes: Changes) -> list[int]:
    """Insert brokered attempts (complete job rows, state ``activated``, their decision as
    ``broker_info`` JSON text) in one statement, their decisions into ``job_decisions``,
    with their history ``defined → assigned → activated``; returns their ids in order."""
    infos = [row.pop("broker_info") for row in rows]
    ids = _insert_rows(conn, rows)
    conn.execute(insert(job_decisions),
                 [{"job_id": i, "info": info} for i, info in zip(ids, infos, strict=True)])
    history(conn, [(i, (J.DEFINED, J.ASSIGNED, J.ACTIVATED), t, "") for i in ids])
    for jid, row in zip(ids, rows, strict=True):
        changes.jobs.append(JobChange(jid, row["task_id"], row["job_index"], row["attempt"],
                                      row["site"], str(J.ACTIVATED)))
        changes.activated_sites.add(row["site"])
    return ids


#: Slots of a site's running pilots.
_SITE_SLOTS = (select(func.coalesce(func.sum(pilots.c.slots), 0))
               .where(pilots.c.site == bindparam("site"),
                      pilots.c.state == str(PilotState.RUNNING)))
#: Activated jobs per running slot that a site keeps for its other pilots before one
#: pilot may take jobs beyond what it can start now (:func:`spare`).
KEEP_PER_SLOT = 2


def spare(conn: Connection, site: str, n: int, extra: int, activated: int) -> int:
    """How many of the ``extra`` jobs a pilot asks for beyond the ``n`` it can start now
    it gets, with ``activated`` jobs of ``site`` ready: those that leave
    :data:`KEEP_PER_SLOT` activated jobs per slot of the site's running pilots.

    A pilot of short jobs saves a round trip per job by holding one job ahead, but a
    job held behind a running one is a job an idle pilot cannot take (PanDA's late
    binding).  While a site has jobs to spare none can idle for it; near a task's end,
    with fewer than that left, every pilot takes only what it starts, as without
    ``extra``.  Returns 0 to ``extra``; one statement (the site's slots) when asked."""
    if extra <= 0 or activated <= n:
        return 0
    slots = conn.execute(_SITE_SLOTS, {"site": site}).scalar_one()
    return max(0, min(extra, activated - n - KEEP_PER_SLOT * max(1, slots)))


def dispatch(conn: Connection, pilot_id: int, site: str, n: int, t: float,
             extra: int = 0) -> tuple[list[Row], dict[int, str]]:
    """Atomically move up to ``n`` activated jobs of ``site`` to ``sent`` for a pilot, by
    priority, then those whose input the pilot read last (:func:`.holders.pick`), then age;
    returns ``(rows, moved)``: (id, task_id, job_index, attempt, payload, walltime_s,
    cores, priority, data_key, access, read_from) rows in that order, and ``{job id: the
    site it waited at}`` for those taken from a core sibling's queue (below).  The pilot
    becomes the holder of what the jobs it got read.  Up to ``extra`` more while the site
    has jobs to spare (:func:`spare`).

    Sites whose pilots share one machine's cores (``shared_cores``, the embedded
    default on two cores) are one resource split three ways: a job waiting at one of
    them waits for the same cores as at the others.  So when ``site`` has fewer than
    ``n`` jobs this pilot may take (its own inputs or nobody's), it also takes from the
    queues of its core siblings (:func:`.sites.core_siblings`) whose pilots have no slot
    free (:func:`.sites.all_busy`) a job whose decision let ``site`` pass
    (:func:`~panda_lab.model.brokerage.passed_at`), one per acquisition: a pilot
    filling its queue ahead would otherwise hold what a sibling's pilot starts sooner
    (late binding).  The job's site becomes ``site`` and the move is kept with the
    decision (:func:`record_moves`).  Otherwise the site brokerage picked decides who
    runs a job, and with single-slot pilots the site left with the most jobs at an
    analysis's end ran them alone on one core while the other idled (0.5-0.8 s of a
    2.4-s first run of the benchmark's 32 jobs).  This is late binding (PanDA) within
    one machine: jobs are not re-brokered, no attempt is spent.

    The candidates are the first ``n + WINDOW`` in priority order (one index range scan);
    the update is a compare-and-set on ``activated``, so a job another pilot took in the
    meantime (PostgreSQL, concurrent transactions) is not handed out twice: this pilot gets
    fewer."""
    # the window, each job with the running pilot that holds its input
    window = holders.window(conn, site, n + extra + holders.WINDOW)
    own = len(window)
    info: dict[int, str] = {}
    if sum(r.holder in (None, pilot_id) for r in window) < n:
        theirs = holders.window_at(conn, site_rows.core_siblings(conn, site),
                                   n + holders.WINDOW)
        if theirs:
            # only queues whose own pilots cannot start them now: a job waiting at a
            # sibling with a free slot is that pilot's next, not this busy pilot's (one
            # asking just in time, ahead of its slot's end, would hold it behind its own)
            busy = set(site_rows.all_busy(conn, sorted({r.site for r in theirs})))
            best, info = _first_passing(conn, pilot_id, site,
                                        [r for r in theirs if r.site in busy])
            if best is not None:
                window += [best]  # a sibling's job: one per acquisition (late binding)
    if not window:
        return [], {}
    n += spare(conn, site, n, extra, own)
    held = {r.data_key: r.holder for r in window if r.holder is not None}
    chosen = (holders.pick(pilot_id, window, held, n, site) if held or own < len(window)
              else [r.id for r in window[:n]])
    # Lock what is still to be had, skipping rows another pilot's transaction holds
    # (PostgreSQL), then compare-and-set those.  SQLite's write transactions are serial:
    # nothing else holds a row, and the compare-and-set alone decides.
    if conn.dialect.name == "sqlite":
        picked = chosen
    else:
        picked = list(conn.execute(_LOCK_ACTIVATED, {"ids": chosen}).scalars())
    if not picked:
        return [], {}
    rows = conn.execute(_SEND, {"ids": picked, "pilot": pilot_id, "site": site,
                                "t": t}).all()
    holders.hold(conn, pilot_id, {r.data_key for r in rows if r.data_key}, t)
    order = {jid: i for i, jid in enumerate(chosen)}
    rows.sort(key=lambda r: order[r.id])
    sent = {r.id for r in rows}
    moved = {r.id: r.site for r in window[own:] if r.id in sent}
    if moved:
        record_moves(conn, moved, site, pilot_id, t, info)
    return rows, moved


def _first_passing(conn: Connection, pilot_id: int, site: str, theirs: list
                   ) -> tuple[Row | None, dict[int, str]]:
    """The core siblings' job (``theirs``, :func:`.holders.window_at` rows) that
    :func:`.holders.pick` would take first whose decision let ``site`` pass
    (:func:`~panda_lab.model.brokerage.passed_at`), and the decisions read on the way:
    ``(row or None, {job id: decision JSON})``.  Decisions are read for the first
    candidate, then, only if its decision keeps it where it is (a task naming its sites),
    for the rest at once: one small statement in the common case, not one parse per job
    of the window."""
    if not theirs:
        return None, {}
    held = {r.data_key: r.holder for r in theirs if r.holder is not None}
    order = holders.pick(pilot_id, theirs, held, len(theirs), site)
    by_id = {r.id: r for r in theirs}
    first = set(order)  # those no other running pilot holds the input of, by pick's rank
    rest = [by_id[i] for i in order] + [r for r in theirs if r.id not in first]
    info: dict[int, str] = {}
    for batch in (rest[:1], rest[1:]):
        info.update(decisions(conn, [r.id for r in batch]))
        for r in batch:
            if passed_at(loads(info.get(r.id)), site):
                return r, info
    return None, info


#: Why a job left its site's queue for a core sibling's pilot, kept with its decision.
MOVED_WHY = ("taken by a pilot of {site}, whose pilots share this machine's cores with "
             "{from_}'s and had no job of their own waiting")


def record_moves(conn: Connection, moved: dict[int, str], site: str, pilot_id: int,
                 t: float, info: dict[int, str] | None = None) -> None:
    """Keep with each moved job's decision (``info``, :func:`decisions`, read when not
    given) where it went: ``"moved": {"from", "to", "pilot", "at", "why"}``
    (:data:`MOVED_WHY`), read by :func:`panda_lab.model.explain.explain` and
    ``panda-lab job``."""
    if info is None or not set(moved) <= set(info):
        info = decisions(conn, list(moved))
    for jid, from_ in moved.items():
        d = loads(info.get(jid))
        d["moved"] = {"from": from_, "to": site, "pilot": pilot_id, "at": t,
                      "why": MOVED_WHY.format(site=site, from_=from_)}
        text_ = orjson.dumps(d).decode()
        done = conn.execute(_MOVE_DECISION, {"jid": jid, "text_": text_}).rowcount
        if not done:  # an attempt placed before decisions had a table of their own
            conn.execute(_MOVE_OLD_DECISION, {"jid": jid, "text_": text_})


def cancel_never_ran(conn: Connection, task_id: int, indices: list[int], t: float) -> list[Row]:
    """``waiting → cancelled`` for the logical jobs ``indices`` of which no attempt was
    ever handed to a pilot, in one compare-and-set; returns (id, job_index, attempt,
    site) rows by index."""
    other = jobs.alias("other")
    ran = exists().where(other.c.task_id == jobs.c.task_id,
                         other.c.job_index == jobs.c.job_index,
                         other.c.pilot_id.is_not(None))
    rows = conn.execute(
        update(jobs)
        .where(jobs.c.task_id == task_id, jobs.c.job_index.in_(sorted(set(indices))),
               jobs.c.state.in_(WAITING), ~ran)
        .values(state=str(J.CANCELLED), modified_at=t, ended_at=t,
                error_category=str(ErrorCategory.KILLED), error_message=CANCELLED_BY_CLIENT)
        .returning(jobs.c.id, jobs.c.job_index, jobs.c.attempt, jobs.c.site)
    ).all()
    rows.sort(key=lambda r: r.job_index)
    return rows


def decisions(conn: Connection, ids: list[int]) -> dict[int, str]:
    """The brokerage decisions (JSON text) of attempts, by id."""
    if not ids:
        return {}
    return dict(conn.execute(_DECISIONS, {"ids": ids}).all())


def lock_for_report(conn: Connection, ids: list[int]) -> dict[int, Row]:
    """The rows (no payload, no decision) of the jobs a report names, locked, by id."""
    return {r.id: r for r in conn.execute(_LOCK_FOR_REPORT, {"ids": ids})}


def unfinished(conn: Connection, *, task_id: int | None = None,
               ids: list[int] | None = None) -> list[Row]:
    """The attempts not final of a task, or among ``ids``, locked (a report in flight
    finishes first, and is then seen), by id: (id, state, task_id, job_index, attempt,
    site) rows."""
    q = select(jobs.c.id, jobs.c.state, jobs.c.task_id, jobs.c.job_index, jobs.c.attempt,
               jobs.c.site).where(jobs.c.state.not_in(FINAL))
    q = q.where(jobs.c.task_id == task_id) if task_id is not None else \
        q.where(jobs.c.id.in_(ids or []))
    return conn.execute(q.order_by(jobs.c.id).with_for_update()).all()


def cancel(conn: Connection, victims: list[Row], t: float, why: str, changes: Changes) -> None:
    """Cancel attempts (rows with id, task_id, job_index, attempt, site) not final."""
    if not victims:
        return
    conn.execute(update(jobs).where(jobs.c.id.in_([v.id for v in victims]),
                                    jobs.c.state.not_in(FINAL)).values(
        state=str(J.CANCELLED), modified_at=t, ended_at=t,
        error_category=str(ErrorCategory.KILLED), error_message=why))
    history(conn, [(v.id, (J.CANCELLED,), t, why) for v in victims])
    for v in victims:
        changes.jobs.append(JobChange(v.id, v.task_id, v.job_index, v.attempt, v.site,
                                      str(J.CANCELLED), str(ErrorCategory.KILLED), why))


def on_pilot(conn: Connection, ids: list[int]) -> list[Row]:
    """The attempts among ``ids`` still on a pilot, locked (rows without payload)."""
    return conn.execute(select(*NO_PAYLOAD).where(jobs.c.id.in_(ids),
                                                  jobs.c.state.in_(ON_PILOT))
                        .with_for_update()).all()


def held_by(conn: Connection, pilot_ids: list[int]) -> dict[int, list[int]]:
    """The attempts each pilot holds (on a pilot), by pilot id, in one query."""
    out: dict[int, list[int]] = {p: [] for p in pilot_ids}
    if pilot_ids:
        for jid, pid in conn.execute(select(jobs.c.id, jobs.c.pilot_id).where(
                jobs.c.pilot_id.in_(pilot_ids), jobs.c.state.in_(ON_PILOT))
                .order_by(jobs.c.id)):
            out[pid].append(jid)
    return out


def fail(conn: Connection, rows: list[Row], category: str, message: str, t: float,
         changes: Changes) -> None:
    """``→ failed`` for attempts on pilots (rows as read by :func:`on_pilot`)."""
    conn.execute(UPDATE, [{
        "b_id": r.id, "b_old": r.state, "b_state": str(J.FAILED), "b_time": t,
        "b_started": None, "b_ended": t, "b_cat": category, "b_msg": message,
        "b_tb": None, "b_exc": None, "b_out": None, "b_err": None,
        "b_rss": None, "b_cpu": None} for r in rows])
    history(conn, [(r.id, (J.FAILED,), t, message) for r in rows])
    for r in rows:
        changes.jobs.append(JobChange(r.id, r.task_id, r.job_index, r.attempt, r.site,
                                      str(J.FAILED), category, message))


def full_rows(conn: Connection, ids: list[int]) -> list[Row]:
    """Complete rows (payload included) of attempts, to make their next attempts from."""
    return conn.execute(select(*FULL).where(jobs.c.id.in_(ids))).all()


def activated_at(conn: Connection, site_names: list[str]) -> list[Row]:
    """Complete rows of the activated attempts at these sites, locked."""
    return conn.execute(select(*FULL).where(jobs.c.site.in_(site_names),
                                           jobs.c.state == str(J.ACTIVATED))
                        .with_for_update()).all()


def close(conn: Connection, rows: list[Row], t: float, category: str, why: str,
          changes: Changes) -> None:
    """``activated → closed``: the system ends attempts that never ran."""
    conn.execute(update(jobs).where(jobs.c.id.in_([r.id for r in rows]),
                                    jobs.c.state == str(J.ACTIVATED))
                 .values(state=str(J.CLOSED), modified_at=t, ended_at=t,
                         error_category=category, error_message=why))
    history(conn, [(r.id, (J.CLOSED,), t, why) for r in rows])
    for r in rows:
        changes.jobs.append(JobChange(r.id, r.task_id, r.job_index, r.attempt, r.site,
                                      str(J.CLOSED), category, why))


def latest(task_id: int | BindParameter):
    """The newest attempt of each logical job of a task, as a subquery of ids (``task_id``
    a bound parameter for a statement built once)."""
    return (select(func.max(jobs.c.id)).where(jobs.c.task_id == task_id)
            .group_by(jobs.c.job_index))


def retryable_latest(conn: Connection, task_id: int) -> list[Row]:
    """The newest attempts of a task that failed or were cancelled, except those its
    client cancelled before they ran (complete rows)."""
    return conn.execute(
        select(*FULL).where(jobs.c.id.in_(latest(task_id)), jobs.c.state.in_(RETRYABLE),
                           or_(jobs.c.error_message.is_(None),
                               jobs.c.error_message != CANCELLED_BY_CLIENT))).all()


def heartbeat(conn: Connection, pilot_id: int, held: list[int], t: float) -> None:
    """The jobs a pilot says it holds live (only those, and only if it holds them)."""
    conn.execute(_HEARTBEAT, {"ids": held, "pilot": pilot_id, "t": t})


def to_drop(conn: Connection, pilot_id: int, held: list[int]) -> list[int]:
    """The held jobs a pilot must kill or drop: final, another pilot's, or unknown."""
    rows = conn.execute(_HELD_STATES, {"ids": held}).all()
    known = {r.id for r in rows}
    drop = [r.id for r in rows if r.state in FINAL or r.pilot_id != pilot_id]
    return sorted(drop + [i for i in held if i not in known])


def refresh_on_pilot(conn: Connection, t: float) -> int:
    """Every job on a pilot heartbeats now; returns how many."""
    return conn.execute(update(jobs).where(jobs.c.state.in_(ON_PILOT))
                        .values(heartbeat_at=t)).rowcount


def lost(conn: Connection, heartbeat_before: float, sent_before: float) -> list[dict]:
    """Attempts on pilots whose heartbeat stopped, or stuck in ``sent`` too long:
    ``[{"id", "pilot", "state", "why"}]`` (``state``: ``sent`` for one never started)."""
    q = select(jobs.c.id, jobs.c.state, jobs.c.pilot_id, jobs.c.heartbeat_at,
               jobs.c.modified_at).where(jobs.c.state.in_(ON_PILOT))
    out = [{"id": r.id, "pilot": r.pilot_id, "state": r.state, "why": "lost heartbeat"}
           for r in conn.execute(q.where(jobs.c.heartbeat_at < heartbeat_before))]
    out += [{"id": r.id, "pilot": r.pilot_id, "state": r.state, "why": "stuck in sent"}
            for r in conn.execute(q.where(jobs.c.state == str(J.SENT),
                                          jobs.c.modified_at < sent_before,
                                          jobs.c.heartbeat_at >= heartbeat_before))]
    return out


def job_dict(r: Row) -> dict:
    """An attempt as the API shows it: no payload, the exception base64, the brokerage
    decision as a dict, what it read (``reads``) as a list."""
    d = dict(r._mapping)
    d.pop("payload", None)
    exc = d.pop("error_pickle", None)
    d["error_exception"] = base64.b64encode(exc).decode() if exc else None
    d["broker_info"] = loads(d.get("broker_info"))
    if d.get("reads"):  # what it read per endpoint, as its pilot reported it
        d["reads"] = loads(d["reads"])
    return d
