"""The store's small writes that move no job: settings, pilots, sites, datasets, merged
results, task options and leases.  Each is one transaction over the row repositories."""

from __future__ import annotations

import secrets

from panda_lab.model import PilotState, TaskState, lease
from panda_lab.store.base import Changes, now
from panda_lab.store.errors import DatasetExists, TaskNotFound, TaskStateError
from panda_lab.store.reads import Reads
from panda_lab.store.rows import beats as beat_rows
from panda_lab.store.rows import counts as count_rows
from panda_lab.store.rows import datasets as dataset_rows
from panda_lab.store.rows import jobs as job_rows
from panda_lab.store.rows import links as link_rows
from panda_lab.store.rows import meta
from panda_lab.store.rows import pilots as pilot_rows
from panda_lab.store.rows import results as result_rows
from panda_lab.store.rows import sites as site_rows
from panda_lab.store.rows import submissions as submission_rows
from panda_lab.store.rows import tasks as task_rows
from panda_lab.store.rows.submissions import SubmissionKey
from panda_lab.store.schema import jobs


class Admin(Reads):
    """Writes of the store that no job's path goes through."""

    def tokens(self) -> tuple[str, str]:
        """``(user token, pilot token)``, made once and kept with the data they protect."""
        with self.tx() as conn:
            user = meta.get_or_set(conn, "user_token", secrets.token_urlsafe(24))
            pilot = meta.get_or_set(conn, "pilot_token", secrets.token_urlsafe(24))
        return user, pilot

    # ---- pilots ----------------------------------------------------------------------------
    def register_pilot(self, site: str, host: str, pid: int, slots: int, info: dict) -> int:
        """A new running pilot of ``site``; returns its id.  Raises ``UnknownSite``."""
        with self.tx() as conn:
            site_rows.require(conn, site)
            return pilot_rows.insert_pilot(conn, site, host, pid, slots, info, now())

    def heartbeat(self, pilot_id: int, held: list[int],
                  usage: dict | None = None) -> list[int]:
        """Record that a pilot lives, using ``usage`` (``{"rss_mb", "cpu_s", "cpu_pct"}``,
        kept on its row), and the jobs it ``held``; return, sorted, the held jobs it must
        kill or drop (cancelled, failed by the watchdog, given to another attempt,
        unknown).  A pilot marked lost that heartbeats runs again.  Raises
        ``UnknownPilot``."""
        t = now()
        with self.tx() as conn:
            if pilot_rows.state(conn, pilot_id) == PilotState.LOST:
                # it came back: the watchdog was too quick, not the pilot
                pilot_rows.set_state(conn, [pilot_id], PilotState.RUNNING)
            pilot_rows.touch(conn, pilot_id, t, usage)
            if not held:
                return []
            job_rows.heartbeat(conn, pilot_id, held, t)
            return job_rows.to_drop(conn, pilot_id, held)

    def heartbeats(self, beats: list[tuple[int, float, dict | None, list[int]]]) -> None:
        """Record many pilots' heartbeats in one transaction (the server coalesces them):
        ``beats`` ``(pilot id, time heard, usage or None, held job ids)``, one per pilot.
        What :meth:`heartbeat` records, at each beat's own time (never moving a time
        back); a pilot marked lost runs again.  Unknown pilots change nothing."""
        with self.tx() as conn:
            beat_rows.apply(conn, beats)

    def held_to_drop(self, pilot_id: int, held: list[int]) -> list[int]:
        """The held jobs a pilot must kill or drop, sorted (as :meth:`heartbeat` returns
        them), reading only."""
        with self.tx() as conn:
            return job_rows.to_drop(conn, pilot_id, held)

    def end_pilot(self, pilot_id: int, state: str = PilotState.FINISHED) -> None:
        """A pilot said goodbye (or its provisioner ended it): ``state`` from now."""
        with self.tx() as conn:
            pilot_rows.set_state(conn, [pilot_id], state, now())

    def mark_lost_pilots(self, heartbeat_before: float) -> list[int]:
        """Running pilots silent since before ``heartbeat_before`` become lost; returns
        their ids."""
        with self.tx() as conn:
            ids = pilot_rows.silent(conn, heartbeat_before)
            if ids:
                pilot_rows.set_state(conn, ids, PilotState.LOST)
        return ids

    def grace_after_restart(self) -> int:
        """A server that was down heard no heartbeat: give every job on a pilot, and every
        pilot, a fresh start, so the watchdog judges them from the restart, not from before
        the outage.  Returns the number of jobs concerned."""
        t = now()
        with self.tx() as conn:
            n = job_rows.refresh_on_pilot(conn, t)
            pilot_rows.refresh_running(conn, t)
        return n

    # ---- sites ------------------------------------------------------------------------------
    def upsert_sites(self, configs: list[dict]) -> None:
        """Record the configured sites (dicts with name, kind, provisioner and the rest of
        their configuration); sites not given are kept."""
        with self.tx() as conn:
            site_rows.upsert(conn, configs)

    def declare_links(self, declared: list[dict]) -> None:
        """Record the declared links ``[{"endpoint", "site", "mbps", "latency_ms"}]``
        (sites.toml's ``[[links]]``); what was learned of every link is kept."""
        with self.tx() as conn:
            link_rows.declare(conn, declared)

    def links(self) -> list[dict]:
        """The (endpoint, site) links known, learned or declared, with what brokerage
        uses now (see :func:`panda_lab.store.rows.links.listing`)."""
        with self.tx() as conn:
            self._learn_now(conn)
            return link_rows.listing(conn, now(), self.link_window)

    def set_site_state(self, name: str, state: str, reason: str = "") -> None:
        """A site goes online or offline (a ``SiteState``), with the reason."""
        with self.tx() as conn:
            site_rows.set_state(conn, name, state, reason)

    # ---- datasets and merged results ------------------------------------------------------------
    def register_dataset(self, name: str, tree: str, files_: list[dict],
                         replace: bool = False, bad_files_: list[dict] | None = None,
                         owner: str | None = None) -> int:
        """Record a dataset and its files; returns its id.  Each file dict has path,
        tree, entries, size_bytes, clusters, branches and optional file_index and replicas
        [{endpoint, url}].  ``bad_files_`` [{path, reason, optional tree and file_index}]
        are the files given that cannot be used, kept with the reason so analyses can
        report them as skipped.  A ``file_index`` is the file's place in the list the user
        gave (good and bad together); without one, good files count from 0 and bad files
        follow them.  Raises ``DatasetExists`` when the name is taken and not
        ``replace``, and when ``owner`` is given and the name is another's (names are one
        namespace for the whole server: replacing another's dataset is never allowed)."""
        with self.tx() as conn:
            old = dataset_rows.find(conn, name)
            if old is not None:
                theirs = dataset_rows.owner_of(conn, name) or meta.get(conn, "server_owner")
                if owner is not None and theirs != owner:
                    raise DatasetExists(f"dataset name {name!r} is taken by another user; "
                                        "choose another name")
                if not replace:
                    raise DatasetExists(f"dataset {name!r} exists; pass replace=True to "
                                        "register it again")
                dataset_rows.delete_dataset(conn, old)
            return dataset_rows.insert_dataset(conn, name, tree, files_, bad_files_ or [],
                                               owner)

    def save_accumulator(self, task_id: int, data: bytes | None, merged: set[int],
                         events: int) -> None:
        """Persist the merged result and exactly the job indices it contains, together."""
        with self.tx() as conn:
            result_rows.save_accumulator(conn, task_id, data, merged, events)

    def write_result(self, task_id: int, job_id: int, data: bytes) -> str:
        """Write a large result to the result store; returns the reference the database
        keeps (a path relative to the result directory)."""
        return result_rows.write_result(self.result_dir, task_id, job_id, data)

    def write_output(self, task_id: int, job_id: int, stream: str, data: bytes) -> int:
        """Keep an attempt's full ``stream`` (UTF-8 bytes) next to its results; returns its
        size.  Raises :class:`TaskNotFound` when the job is not one of ``task_id``."""
        from sqlalchemy import select

        with self.tx() as conn:
            owner = conn.execute(select(jobs.c.task_id).where(jobs.c.id == job_id)).scalar()
        if owner != task_id:
            raise TaskNotFound(f"no job {job_id} in task {task_id}")
        result_rows.write_file(result_rows.output_path(self.result_dir, task_id, job_id,
                                                       stream), data)
        return len(data)

    # ---- task settings -------------------------------------------------------------------------
    def set_task_state(self, task_id: int, old: TaskState, new: TaskState) -> Changes:
        """Move a task ``old → new`` if it is still ``old`` and the model allows it;
        returns the changes (empty when it did not move)."""
        changes = Changes()
        with self.tx() as conn:
            task_rows.set_state(conn, task_id, old, new, changes)
        return changes

    def update_task_options(self, task_id: int, values: dict) -> None:
        """Add to a task's options (e.g. what its scouts measured), keeping the rest.
        Raises ``TaskNotFound``."""
        with self.tx() as conn:
            row = task_rows.task_row(conn, task_id)
            task_rows.add_options(conn, task_id, row.options, values)

    def reopen_task(self, task_id: int) -> None:
        """Let a task take jobs again and not end by itself (see ``close_task``)."""
        with self.tx() as conn:
            task_rows.set_open(conn, task_id, True, touch=False)

    # ---- client leases (the rule is panda_lab.model.lease) ------------------------------
    def renew_lease(self, task_id: int, lease_s: float) -> dict:
        """Extend an open task's client lease to ``lease_s`` seconds from now.

        Returns ``{"task", "lease_until", "lease_s"}``.  Raises ``TaskNotFound``, and
        ``TaskStateError`` when the task is closed (by its client, or by the watchdog
        because the lease lapsed: the message says which) or has no client lease."""
        t = now()
        with self.tx() as conn:
            row = task_rows.task_row(conn, task_id)
            if not row.open:
                why = f" ({row.message})" if row.message.startswith(lease.CLIENT_GONE) else ""
                raise TaskStateError(f"task {task_id} is closed{why}: its lease cannot be "
                                     "renewed")
            if row.lease_until is None:
                raise TaskStateError(f"task {task_id} is held open by the server, not by a "
                                     "client lease")
            until = t + lease_s
            if not task_rows.renew_lease(conn, task_id, until):
                # closed in between (PostgreSQL: another server process)
                raise TaskStateError(f"task {task_id} is closed: its lease cannot be renewed")
        return {"task": task_id, "lease_until": until, "lease_s": lease_s}

    def regrant_leases(self, lease_s: float) -> int:
        """At server start: every open lease runs a full ``lease_s`` from now, since no
        client could renew while the server was down.  Returns the leases re-granted."""
        t = now()
        with self.tx() as conn:
            rows = task_rows.open_leases(conn)
            for r in rows:
                task_rows.set_lease(conn, r.id, lease.regranted(r.lease_until, t, lease_s))
        return len(rows)

    # ---- a person and a client -----------------------------------------------------------
    def acknowledge_task(self, task_id: int) -> float:
        """A person saw the task's failed jobs: they leave the status bar's ``failed``
        until an attempt fails again (after a retry).  Returns the time recorded (Unix
        seconds).  Raises ``TaskNotFound``."""
        t = now()
        with self.tx() as conn:
            task_rows.task_row(conn, task_id)
            count_rows.acknowledge(conn, task_id, t)
        return t

    def submission(self, key: SubmissionKey) -> dict | None:
        """What an earlier request with the idempotency ``key`` made (``{"task", "jobs",
        "indices"}``, see :func:`panda_lab.store.rows.submissions.replay`), or ``None``.
        Raises ``IdempotencyKeyReused`` for a key sent before with another request."""
        with self.tx() as conn:
            return submission_rows.replay(conn, key)
