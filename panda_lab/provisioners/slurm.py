"""Pilots as Slurm batch jobs: ``sbatch`` a generated script, watch with ``squeue``,
stop with ``scancel`` (Slurm sends SIGTERM first, so a pilot hands back its jobs).

A thin class in the way of dask-jobqueue's ``SLURMJob``: the commands are class
attributes, the script is a header of ``#SBATCH`` lines over one command line.
One allocation runs up to ``jobs_per_pilot`` jobs, and a pilot asked to stop drains.
The number of batch jobs follows the site's queue, between ``min_jobs`` and ``max_jobs``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from panda_lab.model.scaling import Mode, ScalingPolicy
from panda_lab.provisioners.base import PilotSpec, Provisioner, ProvisionerError
from panda_lab.provisioners.config import SlurmSite, provisioner, walltime_seconds


@provisioner("slurm", SlurmSite)
class SlurmProvisioner(Provisioner):
    """Pilot batch jobs, as many as the site's queue needs within ``[min_jobs, max_jobs]``."""

    label = "slurm"
    submit_command = "sbatch"
    cancel_command = "scancel"
    status_command = "squeue"
    polling_interval = 2.0
    #: Slurm's final job states (``squeue --help``, JOB STATE CODES).  Any other state
    #: ``squeue`` lists (``PENDING``, ``RUNNING``, ``COMPLETING``, ``REQUEUED``, ...) holds
    #: or will hold an allocation, so it counts towards ``max_jobs``.
    final_states = frozenset({"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL",
                              "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY",
                              "REVOKED", "SPECIAL_EXIT"})

    def __init__(self, spec: PilotSpec, home: Path) -> None:
        super().__init__(spec)
        self.dir = home / "slurm" / spec.site.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.token_file = self.dir / "pilot.token"
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(spec.pilot_token)
        self.job_name = f"panda-{spec.site.name}"
        self.cfg: SlurmSite = spec.site.settings  # type: ignore[assignment]
        self.policy = ScalingPolicy(Mode.QUEUE, self.cfg.min_jobs, spec.site.pilots)
        self._seen: dict[str, str] = {}

    @classmethod
    def for_site(cls, spec: PilotSpec, home: Path, known_pilots: list[dict]) -> SlurmProvisioner:
        return cls(spec, home)

    # ---- the script ------------------------------------------------------------------
    def header(self) -> list[str]:
        """The ``#SBATCH`` lines of the pilot script, from the site's keys."""
        cfg = self.cfg
        lines = [f"--job-name={self.job_name}", f"--output={self.dir}/pilot-%j.log",
                 f"--cpus-per-task={self.spec.site.slots}", "--ntasks=1"]
        for value, opt in ((cfg.partition, "--partition"), (cfg.account, "--account"),
                           (cfg.walltime, "--time")):
            if value:
                lines.append(f"{opt}={value}")
        if cfg.memory:
            lines.append(f"--mem={cfg.memory}M")
        lines += cfg.extra_directives
        return [f"#SBATCH {line}" for line in lines]

    def job_script(self) -> str:
        """The whole batch script: the header over one ``exec`` of the pilot."""
        cfg = self.cfg
        idle_exit = int(cfg.idle_exit) if cfg.idle_exit.is_integer() else cfg.idle_exit
        cmd = [*self.spec.command(), "--token-file", str(self.token_file),
               "--idle-exit", str(idle_exit)]
        if cfg.jobs_per_pilot:
            cmd += ["--max-jobs", str(cfg.jobs_per_pilot)]
        if cfg.walltime:
            cmd += ["--walltime", str(walltime_seconds(cfg.walltime))]
        env = "unset MALLOC_TRIM_THRESHOLD_"
        return "\n".join(["#!/bin/bash", *self.header(), "", env, "exec " + shlex.join(cmd),
                          ""])

    # ---- submit, status, cancel ------------------------------------------------------
    def _run(self, *cmd: str) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ProvisionerError(f"{cmd[0]} failed: {exc}") from exc
        if out.returncode != 0:
            raise ProvisionerError(f"{' '.join(cmd[:2])} failed: "
                                   f"{(out.stderr or out.stdout).strip()[:500]}")
        return out.stdout

    def submit(self, n: int) -> list:
        script = self.dir / "pilot.sh"
        script.write_text(self.job_script())
        ids = []
        for _ in range(n):
            out = self._run(self.submit_command, "--parsable", str(script))
            ids.append(out.strip().split(";")[0])
        return ids

    def listing(self) -> dict[str, str]:
        """``{batch job id: state}`` of this user's batch jobs named for the site, as
        ``squeue -n NAME --me`` shows them: the same view a person has of the queue.

        By name, not ``-j ID,...``: ``squeue -j`` fails when every id given has left
        slurmctld's memory (``MinJobAge``), which would hold a site offline for good."""
        out = self._run(self.status_command, "-h", "--me", "-o", "%i %T", "-n",
                        self.job_name)
        pairs = (line.split(None, 1) for line in out.splitlines() if line.strip())
        return {job: state.strip() for job, state in pairs}

    def alive(self, state: str | None) -> bool:
        """Whether a batch job in ``state`` (``None``: not listed) holds or will hold an
        allocation."""
        return state is not None and state not in self.final_states

    def status(self, handles: list) -> list[bool]:
        self._seen = self.listing()
        return [self.alive(self._seen.get(h)) for h in handles]

    def strays(self) -> list:
        """Batch jobs of the site's name alive but not held: an ``sbatch`` that timed out
        after slurmctld took the job.  Counted, so the site never holds more than
        ``max_jobs``."""
        held = set(self.handles)
        return [job for job, state in self._seen.items()
                if self.alive(state) and job not in held]

    def cancel(self, handles: list) -> None:
        if handles:
            try:
                self._run(self.cancel_command, *handles)
            except ProvisionerError:
                pass  # already gone

    def adopt(self) -> list:
        try:
            seen = self.listing()
        except ProvisionerError:
            return []
        return [job for job, state in seen.items() if self.alive(state)]
