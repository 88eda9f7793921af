"""The provisioner interface (PanDA's Harvester): submit, watch and cancel pilots.

One small interface, in the shape of Parsl's providers: ``submit`` starts pilots and
returns handles, ``status`` says which still live, ``cancel`` stops them.  The loop that
keeps a site's pilots alive is common to every provisioner and lives here.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from panda_lab.server.config import SiteConfig

log = logging.getLogger("panda_lab.provisioners")


class ProvisionerError(RuntimeError):
    """The resource refused to start or report pilots (batch system down, bad partition)."""


@dataclass
class PilotSpec:
    """What a provisioner needs to start a pilot that finds its way back."""

    server_url: str
    pilot_token: str
    site: SiteConfig

    def command(self) -> list[str]:
        return [sys.executable, "-m", "panda_lab.pilot", "--server", self.server_url,
                "--site", self.site.name, "--slots", str(self.site.slots)]


class Provisioner(ABC):
    label: str = "base"
    #: Seconds between two looks at the pilots.
    polling_interval: float = 1.0
    #: Whether the number of pilots follows the site's queue (batch sites, where an
    #: idle allocation costs) or stays at ``site.pilots`` (local processes).
    elastic: bool = False

    def __init__(self, spec: PilotSpec) -> None:
        self.spec = spec
        self.handles: list = []
        #: Told ``(site, state, reason)`` when the provisioner starts or stops working, so
        #: the server can mark the site offline (brokerage then avoids it) and back.
        self.on_health: Callable[[str, str, str], None] | None = None
        #: Told of pilots seen to end here, as ``(site, [(pid, exit code), ...])``: the
        #: server fails the jobs they held at once, not a heartbeat timeout later.
        self.on_gone: Callable[[str, list[tuple[int, int | None]]], None] | None = None
        self.gone: list[tuple[int, int | None]] = []
        self.healthy = True
        self.reason = ""
        #: Set when the server stops: no pilot or cluster is started after it.
        self.closing = False
        #: Jobs queued and running at the site now, told by the server; an elastic
        #: provisioner sizes its pilots by it.
        self.demand: Callable[[], int] | None = None
        #: Pilots an elastic site keeps even when its queue is empty (warm slots).
        self.min_pilots = 0

    @abstractmethod
    def submit(self, n: int) -> list:
        """Start ``n`` pilots; return a handle for each."""

    @abstractmethod
    def status(self, handles: list) -> list[bool]:
        """Whether each pilot still lives."""

    @abstractmethod
    def cancel(self, handles: list) -> None:
        """Stop these pilots (they hand back their jobs on the way out)."""

    def adopt(self) -> list:
        """Pilots of this site left running by an earlier server process."""
        return []

    def exit_info(self, handle: Any) -> tuple[int, int | None] | None:
        """``(pid, exit code)`` of a pilot that ended, where this provisioner can tell
        which registered pilot the handle was (local processes); else ``None``."""
        return None

    def target(self) -> int:
        """Pilots wanted now: ``site.pilots``, or for an elastic site enough for its queued
        and running jobs, between ``min_pilots`` and ``site.pilots``.  Idle pilots of an
        elastic site are not cancelled: they leave by themselves (``idle_exit``), so a
        site that just emptied stays warm for the next task."""
        site = self.spec.site
        if not self.elastic or self.demand is None:
            return site.pilots
        need = math.ceil(self.demand() / max(site.slots, 1))
        return min(site.pilots, max(self.min_pilots, need))

    def step(self) -> None:
        """One look at the site: sweep up pilots that ended, start the ones missing."""
        alive = self.status(self.handles)
        dead = [h for h, ok in zip(self.handles, alive, strict=True) if not ok]
        if dead:
            log.info("%s: %d pilot(s) ended", self.spec.site.name, len(dead))
            self.gone += [e for e in map(self.exit_info, dead) if e is not None]
        self.handles = [h for h, ok in zip(self.handles, alive, strict=True) if ok]
        missing = self.target() - len(self.handles)
        if missing > 0 and not self.closing:
            self.handles += self.submit(missing)

    async def keep_alive(self) -> None:
        """Look at the site every ``polling_interval``; a provisioner that fails marks the
        site offline until it works again.  Provisioner calls (``sbatch``, a Dask
        scheduler) block, so they run in a thread and never stall the server."""
        try:
            self.handles = await asyncio.to_thread(self.adopt)
        except ProvisionerError:
            self.handles = []
        if self.handles:
            log.info("%s: adopted %d running pilot(s)", self.spec.site.name, len(self.handles))
        while not self.closing:
            try:
                await asyncio.to_thread(self.step)
                self._health(True, "")
                if self.gone and self.on_gone is not None:
                    gone, self.gone = self.gone, []
                    self.on_gone(self.spec.site.name, gone)
            except ProvisionerError as exc:
                if self.healthy or str(exc) != self.reason:  # say it once, not every look
                    log.error("%s: %s", self.spec.site.name, exc)
                self._health(False, str(exc))
            await asyncio.sleep(self.polling_interval)

    def _health(self, ok: bool, reason: str) -> None:
        if ok == self.healthy and reason == self.reason:
            return
        self.healthy, self.reason = ok, reason
        if self.on_health is not None:
            self.on_health(self.spec.site.name, "online" if ok else "offline", reason)

    async def stop(self, timeout: float = 10.0) -> None:
        """Ask the pilots to stop (they hand back their jobs), kill what lingers, then
        release whatever the provisioner holds (a cluster it started)."""
        self.closing = True
        try:
            await asyncio.to_thread(self.cancel, self.handles)
            deadline = asyncio.get_running_loop().time() + timeout
            while any(await asyncio.to_thread(self.status, self.handles)):
                if asyncio.get_running_loop().time() > deadline:
                    await asyncio.to_thread(self.kill, self.handles)
                    break
                await asyncio.sleep(0.05)
        except ProvisionerError as exc:
            log.warning("%s: stopping pilots: %s", self.spec.site.name, exc)
        finally:
            self.handles = []
            await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Release what the provisioner holds beyond its pilots; nothing by default."""
        return None

    def kill(self, handles: list) -> None:
        """Last resort after ``cancel`` timed out; the default is another cancel."""
        self.cancel(handles)
