"""The database schema, in SQLAlchemy Core, portable between SQLite and PostgreSQL.

Times are float seconds since the epoch (portable, cheap to compare); structured
fields are JSON text.  Counts of events and bytes are ``BigInteger``: PostgreSQL's INTEGER
is 32-bit, and one real file has more than 2**31 bytes (a dataset, more than 2**31 events).
Each job row is one *attempt*: a retry inserts a new row with
the same ``(task_id, job_index)`` and ``attempt + 1``, so finished or failed attempts
are never rewritten.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

from panda_lab.model.states import SiteState

SCHEMA_VERSION = 1

metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

sites = Table(
    "sites",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("provisioner", String(32), nullable=False),
    Column("config", Text, nullable=False, default="{}"),
    Column("state", String(16), nullable=False, default=str(SiteState.ONLINE)),
    Column("reason", Text, nullable=False, default=""),
    Column("updated_at", Float, nullable=False),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(256), nullable=False),
    Column("owner", String(128), nullable=False, default=""),
    Column("state", String(16), nullable=False),
    Column("site", Text, nullable=False, default="ANY"),
    Column("options", Text, nullable=False, default="{}"),
    # The part of the payload shared by every job (e.g. the function of an ``ex.map``).
    Column("common", LargeBinary, nullable=True),
    Column("open", Boolean, nullable=False, default=False),
    # An open task's client lease (model/lease.py): the watchdog closes the task after
    # this time unless its client renews it.  NULL: no lease (the server holds it open).
    Column("lease_until", Float, nullable=True),
    Column("n_jobs", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("modified_at", Float, nullable=False),
    Column("ended_at", Float, nullable=True),
    Column("message", Text, nullable=False, default=""),
    # JEDI's task diagnostics: how many candidate sites each brokerage filter removed
    # over the task's placements, JSON {filter: count}.
    Column("brokerage", Text, nullable=True),
)
Index("ix_tasks_name", tasks.c.name)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", Integer, ForeignKey("tasks.id"), nullable=False),
    Column("job_index", Integer, nullable=False),
    Column("attempt", Integer, nullable=False, default=1),
    Column("state", String(16), nullable=False),
    Column("site", String(128), nullable=True),
    Column("pilot_id", Integer, nullable=True),
    Column("priority", Integer, nullable=False, default=0),
    Column("cores", Integer, nullable=False, default=1),
    Column("memory_mb", Integer, nullable=False, default=0),
    Column("walltime_s", Float, nullable=False, default=0.0),
    Column("max_attempts", Integer, nullable=False, default=3),
    Column("payload", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("modified_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=True),
    Column("started_at", Float, nullable=True),
    Column("ended_at", Float, nullable=True),
    Column("error_category", String(16), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("error_traceback", Text, nullable=True),
    # The pickled exception of a user error, so a client can re-raise its original type.
    Column("error_pickle", LargeBinary, nullable=True),
    Column("stdout_tail", Text, nullable=True),
    Column("stderr_tail", Text, nullable=True),
    Column("broker_info", Text, nullable=False, default="{}"),
    Column("retry_of", Integer, nullable=True),
    # What an analysis job reads (a digest of its chunks): dispatch prefers the pilot
    # that read it last (``data_holders``); NULL for other jobs.
    Column("data_key", String(32), nullable=True),
    # How the attempt reads its input (model/staging.py: local, remote, stage-in, cache)
    # and the endpoint it reads from: brokerage counts the readers sharing each link.
    Column("access", String(16), nullable=True),
    Column("read_from", String(256), nullable=True),
    # What the attempt read, as its pilot reported it: JSON [{"endpoint", "bytes",
    # "seconds", "requests"}] ("(cache)": from its site's stage-in cache).
    Column("reads", Text, nullable=True),
    # resource use: what the payload used (panda_lab/pilot/usage.py), as its pilot
    # measured it: peak resident memory during the job (MB) and CPU seconds; NULL when
    # not measured (the worker died, or an older pilot).  ``memory_mb`` is the request.
    Column("peak_rss_mb", Float, nullable=True),
    Column("cpu_s", Float, nullable=True),
)
# Dispatch reads a site's activated jobs by priority, highest first, then by id
# (store/rows/jobs.py: dispatch): the index is in that order, priority descending, so
# the first n are one range scan.  In ascending order (the index before, still on
# older databases: ix_jobs_dispatch) SQLite sorted every activated job of the site of
# equal priority on each acquire: 55 ms at 50,000 queued jobs (benchmarks/README.md).
Index("ix_jobs_dispatch_order", jobs.c.site, jobs.c.state, jobs.c.priority.desc(), jobs.c.id)
Index("ix_jobs_task", jobs.c.task_id, jobs.c.job_index, jobs.c.attempt)
Index("ix_jobs_task_state", jobs.c.task_id, jobs.c.state)
Index("ix_jobs_state_hb", jobs.c.state, jobs.c.heartbeat_at)
Index("ix_jobs_pilot", jobs.c.pilot_id, jobs.c.state)
# The web monitor's (store/rows/monitor.py), covering, so that no view reads job rows
# but the page it shows: the job listing's total and facets in one index-only scan in the
# index's order (state, site, error category, attempt; any time window too), which also
# holds what the errors view groups failures by; and a task page's per-site histograms.
Index("ix_jobs_facets", jobs.c.state, jobs.c.site, jobs.c.error_category, jobs.c.attempt,
      jobs.c.modified_at, jobs.c.task_id, jobs.c.started_at, jobs.c.ended_at,
      jobs.c.read_from)
Index("ix_jobs_task_site", jobs.c.task_id, jobs.c.state, jobs.c.site, jobs.c.started_at,
      jobs.c.ended_at, jobs.c.peak_rss_mb)

job_status = Table(
    "job_status",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("time", Float, nullable=False),
    Column("info", Text, nullable=False, default=""),
)
Index("ix_job_status_job", job_status.c.job_id)

# One row per *logical* job: the primary key is what guarantees that a result is
# never counted twice, whatever the number of attempts.
results = Table(
    "results",
    metadata,
    Column("task_id", Integer, primary_key=True),
    Column("job_index", Integer, primary_key=True),
    Column("job_id", Integer, nullable=False),
    Column("inline", LargeBinary, nullable=True),
    Column("ref", Text, nullable=True),
    Column("size", BigInteger, nullable=False),
)

pilots = Table(
    "pilots",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("site", String(128), nullable=False),
    Column("host", String(256), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("slots", Integer, nullable=False, default=1),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("jobs_done", Integer, nullable=False, default=0),
    Column("info", Text, nullable=False, default="{}"),
    # resource use: the pilot's and its workers' resident memory (MB), their CPU seconds
    # since it started and CPU % of one core since its previous report, as its latest
    # heartbeat or report said; NULL before the first
    Column("rss_mb", Float, nullable=True),
    Column("cpu_s", Float, nullable=True),
    Column("cpu_pct", Float, nullable=True),
)
Index("ix_pilots_site_state", pilots.c.site, pilots.c.state)

# ---- data: datasets, files, replicas (PanDA's Rucio ideas) --------------------------------

datasets = Table(
    "datasets",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(256), nullable=False, unique=True),
    Column("tree", String(256), nullable=False),
    Column("n_files", Integer, nullable=False),
    Column("n_events", BigInteger, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
    # The identity that registered it (users table); NULL: registered before identities,
    # the server owner's.
    Column("owner", String(128), nullable=True),
)

files = Table(
    "files",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dataset_id", Integer, ForeignKey("datasets.id"), nullable=False),
    Column("file_index", Integer, nullable=False),
    Column("path", Text, nullable=False),
    Column("tree", String(256), nullable=False),
    Column("entries", BigInteger, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    # Entry numbers where every branch starts a basket: the only places a job may cut.
    Column("clusters", Text, nullable=False),
    Column("branches", Text, nullable=False, default="[]"),
)
Index("ix_files_dataset", files.c.dataset_id, files.c.file_index, unique=True)

replicas = Table(
    "replicas",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("file_id", Integer, ForeignKey("files.id"), nullable=False),
    Column("endpoint", String(256), nullable=False),
    Column("url", Text, nullable=False),
)
Index("ix_replicas_file", replicas.c.file_id)

# Files given to a dataset's registration that could not be used (missing, not ROOT, no such
# tree, ...), with the reason: registered with ``skip_bad_files``, kept to say what was skipped.
bad_files = Table(
    "bad_files",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dataset_id", Integer, ForeignKey("datasets.id"), nullable=False),
    Column("file_index", Integer, nullable=False),
    Column("path", Text, nullable=False),
    Column("tree", String(256), nullable=False),
    Column("reason", Text, nullable=False),
)
Index("ix_bad_files_dataset", bad_files.c.dataset_id, bad_files.c.file_index)

# ---- analysis tasks: their input chunks and the merged result -----------------------------

# One row per input range of a job (a job of ``files_per_job`` has several).
chunks = Table(
    "chunks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", Integer, nullable=False),
    Column("job_index", Integer, nullable=False),
    Column("file_index", Integer, nullable=False),
    Column("path", Text, nullable=False),
    Column("tree", String(256), nullable=False),
    Column("start", BigInteger, nullable=False),
    Column("stop", BigInteger, nullable=False),
    Column("scout", Boolean, nullable=False, default=False),
)
Index("ix_chunks_task", chunks.c.task_id, chunks.c.job_index)

# The merged result of an analysis task with the job indices it contains, written in one
# transaction: after a crash, exactly the results not in ``merged`` are merged again.
accumulators = Table(
    "accumulators",
    metadata,
    Column("task_id", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=True),
    Column("merged", Text, nullable=False, default="[]"),
    Column("events", BigInteger, nullable=False, default=0),
    Column("updated_at", Float, nullable=False),
)

# The status bar's "failed": a person acknowledged a task's failed jobs at ``time``; jobs
# that fail after it (a retry's new attempts) need attention again.
task_acks = Table(
    "task_acks",
    metadata,
    Column("task_id", Integer, primary_key=True),
    Column("time", Float, nullable=False),
)

# ---- network-aware brokerage: the (endpoint, site) links ----------------------------------

# One row per link a site reads a storage endpoint over: its declared throughput and
# latency (sites.toml's [[links]]), and the estimate learned from what jobs measured
# (exponentially smoothed, with the count of observations and the time of the last).
links = Table(
    "links",
    metadata,
    Column("endpoint", String(256), primary_key=True),
    Column("site", String(128), primary_key=True),
    Column("declared_mbps", Float, nullable=True),
    Column("declared_latency_ms", Float, nullable=True),
    Column("mbps", Float, nullable=True),
    Column("latency_ms", Float, nullable=True),
    Column("observations", Integer, nullable=False, default=0),
    Column("observed_at", Float, nullable=True),
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("seconds", Float, nullable=False, default=0.0),
)

# What each site's finished attempts measured, smoothed (FTS-style, alpha 0.1): events per
# second per slot (compute only: read time taken off), mean job seconds, and the share of
# attempts that failed for reasons of the site (PanDA's site classes).
site_stats = Table(
    "site_stats",
    metadata,
    Column("site", String(128), primary_key=True),
    Column("slot_rate", Float, nullable=True),
    Column("rate_samples", Integer, nullable=False, default=0),
    Column("mean_job_s", Float, nullable=True),
    Column("failure_rate", Float, nullable=False, default=0.0),
    Column("outcomes", Integer, nullable=False, default=0),
    Column("updated_at", Float, nullable=False),
    #: Rate samples from warm jobs (not their task's first in a new worker process); once
    #: there is one, cold samples no longer move the rate.  NULL: none yet.
    Column("warm_samples", Integer, nullable=True),
)

# ---- read affinity: which pilot last read an analysis job's input ---------------------------

# One row per input (``jobs.data_key``): the pilot that was last handed a job reading it,
# whose worker's cache of read arrays likely still holds it (see store/rows/holders.py).
data_holders = Table(
    "data_holders",
    metadata,
    Column("data_key", String(32), primary_key=True),
    Column("pilot_id", Integer, nullable=False),
    Column("at", Float, nullable=False),
)

# ---- identities: per-user and per-site tokens, issued and revoked by an admin -------------

# A token is kept as the SHA-256 of its text, never the text: it is shown once, when made.
users = Table(
    "users",
    metadata,
    Column("name", String(128), primary_key=True),
    # "admin", "user", "read-only", or "pilot" (then ``site`` names the pilot's site)
    Column("role", String(16), nullable=False),
    Column("site", String(128), nullable=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
)

# ---- stage-in caches: the input files each site's cache holds (model/staging.py) -----------

# One row per (site, file): what the site's pilots staged in and have not evicted, as
# they report it; brokerage counts these files as local at the site.
site_cache = Table(
    "site_cache",
    metadata,
    Column("site", String(128), primary_key=True),
    Column("path", Text, primary_key=True),
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("used_at", Float, nullable=False),
)

# ---- share links: read-only, expiring links to one task's monitor page --------------------

# One row per link made by ``panda-lab share``: the hash of its token (never the token),
# the one task it opens, who made it, when it expires and, once revoked, when.
shares = Table(
    "shares",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("task_id", Integer, nullable=False, index=True),
    Column("created_by", String(128), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
)

# ---- idempotent submission: a request's Idempotency-Key and the work it made ---------------

# One row per (owner, key) sent with ``POST /api/tasks`` or ``POST /api/tasks/{id}/jobs``
# (the IETF draft "The Idempotency-Key HTTP Header Field", as Stripe's API keeps them):
# written in the transaction that makes the task or the jobs, so a request repeated after
# a lost answer or a server crash finds the work of the first, or nothing, never half.
# ``fingerprint`` (SHA-256 of the request) tells a repeat from another request reusing a key.
submissions = Table(
    "submissions",
    metadata,
    Column("owner", String(128), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("task_id", Integer, nullable=False, index=True),
    Column("first_index", Integer, nullable=False),
    Column("n_jobs", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)

# ---- brokerage decisions: one row per attempt, apart from the job row ----------------------

# The brokerage decision of an attempt (JSON, as ``model.brokerage.choose`` gives it, with
# the sites, data and network term it was weighed by): written once when the attempt is
# placed and never updated.  Kept apart from ``jobs`` because a job row is rewritten at
# every step of its life (sent, running, finished, heartbeats): with the decision in it
# (about 1 KB for three sites) each of those updates moved three times the bytes, and
# dispatch and reports slowed with it.  Attempts placed before this table existed keep
# theirs in ``jobs.broker_info`` (``store/rows/jobs.py`` reads either).
job_decisions = Table(
    "job_decisions",
    metadata,
    Column("job_id", Integer, primary_key=True, autoincrement=False),
    Column("info", Text, nullable=False),
)
