"""The provisioner interface (PanDA's Harvester): submit, watch and cancel pilots.

One small interface, in the shape of Parsl's providers: ``submit`` starts pilots and
returns handles, ``status`` says which still live, ``cancel`` stops them.  The loop that
keeps a site's pilots alive is common to every provisioner and lives here.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from panda_lab.model.scaling import Decision, Mode, ScalingPolicy, Snapshot
from panda_lab.model.states import SiteState
from panda_lab.provisioners.config import SiteConfig

log = logging.getLogger("panda_lab.provisioners")


class ProvisionerError(RuntimeError):
    """The resource refused to start or report pilots (batch system down, bad partition)."""


#: The longest pause (seconds) between two looks at a site whose provisioner keeps
#: failing unexpectedly.
MAX_BACKOFF = 60.0


def backoff(interval: float, failures: int) -> float:
    """Seconds until the next look at a site: ``interval`` after a look that worked (or
    failed as the resource refusing, ``failures == 0``), doubled for each unexpected
    failure in a row, at most :data:`MAX_BACKOFF` (never less than ``interval``)."""
    if failures <= 0:
        return interval
    return max(interval, min(MAX_BACKOFF, interval * 2 ** min(failures, 32)))


def crash_reason(label: str, exc: BaseException) -> str:
    """A site's offline reason for an unexpected exception of its provisioner: the
    provisioner, the exception's type and its message, on one line."""
    what = " ".join(str(exc).split()) or "(no message)"
    return f"the {label} provisioner failed unexpectedly: {type(exc).__name__}: {what}"


@dataclass
class PilotSpec:
    """What a provisioner needs to start a pilot that finds its way back."""

    server_url: str
    pilot_token: str
    site: SiteConfig

    def command(self) -> list[str]:
        """The pilot's command line (this Python, ``-m panda_lab.pilot``, its arguments)."""
        return [sys.executable, "-m", "panda_lab.pilot", "--server", self.server_url,
                "--site", self.site.name, "--slots", str(self.site.slots)]


class Provisioner(ABC):
    """Keeps a site's pilots alive.  Its blocking calls (``submit``, ``status``, ``step``,
    ``adopt``...) run on a worker thread; the server's callbacks (``on_health``,
    ``on_gone``, ``demand``) are only ever called on the event loop's thread, so they may
    use the store, which belongs to the loop."""

    label: str = "base"
    #: Seconds between two looks at the pilots.
    polling_interval: float = 1.0

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
        #: Jobs queued and running at the site now, told by the server; read on the loop
        #: before each look (:meth:`refresh_demand`) into ``queued``.
        self.demand: Callable[[], int] | None = None
        self.queued: int | None = None
        #: How many pilots the site wants: kept at ``site.pilots`` unless a provisioner
        #: says otherwise.
        self.policy = ScalingPolicy(Mode.FIXED, 0, spec.site.pilots)

    @classmethod
    def for_site(cls, spec: PilotSpec, home: Path, known_pilots: list[dict]) -> Provisioner:
        """The provisioner of a site: ``home`` is the server's runtime directory,
        ``known_pilots`` the pilots the store holds as running (to adopt)."""
        return cls(spec)

    @abstractmethod
    def submit(self, n: int) -> list:
        """Start ``n`` pilots; return a handle for each (at most ``n``).  Raises
        :class:`ProvisionerError` when the resource refuses."""

    @abstractmethod
    def status(self, handles: list) -> list[bool]:
        """Whether each pilot still lives, one bool per handle, in order.  Raises
        :class:`ProvisionerError` when the resource cannot tell."""

    @abstractmethod
    def cancel(self, handles: list) -> None:
        """Stop these pilots (they hand back their jobs on the way out); returns
        nothing, raises nothing for pilots already gone."""

    def adopt(self) -> list:
        """Handles of this site's pilots left running by an earlier server process (none
        by default).  May raise :class:`ProvisionerError`; the site then starts afresh."""
        return []

    def strays(self) -> list:
        """Pilots alive on the resource under this site's name that :attr:`handles` does
        not hold (a submission that timed out after the resource took it); read from the
        last :meth:`status`.  They count towards the site's bounds.  None by default."""
        return []

    def exit_info(self, handle: Any) -> tuple[int, int | None] | None:
        """``(pid, exit code)`` of a pilot that ended, where this provisioner can tell
        which registered pilot the handle was (local processes); else ``None``."""
        return None

    @property
    def reads_demand(self) -> bool:
        """Whether this site's scaling looks at its queue: only then is the demand read
        (a query of the store each ``polling_interval``; a fixed site needs none)."""
        return self.policy.mode is Mode.QUEUE

    def refresh_demand(self) -> int | None:
        """Read the site's demand (jobs queued and running) into ``queued``; called on the
        event loop, never on a worker thread.  Returns it; ``None`` when not told, or when
        the site's scaling does not look at its queue (:attr:`reads_demand`)."""
        wanted = self.demand is not None and self.reads_demand
        self.queued = self.demand() if wanted else None
        return self.queued

    def snapshot(self) -> Snapshot:
        """What the scaling policy looks at now: the demand last read, the pilots held."""
        return Snapshot(demand=self.queued, current=len(self.handles),
                        slots=self.spec.site.slots)

    def decide(self) -> Decision:
        """The scaling policy's decision for the site as it is now."""
        return self.policy.decide(self.snapshot())

    def target(self) -> int:
        """Pilots wanted now (see :mod:`panda_lab.model.scaling`): ``site.pilots``, or
        for a site that follows its queue enough for its queued and running jobs, within
        its bounds.  Idle pilots are not cancelled: they leave by themselves
        (``idle_exit``), so a site that just emptied stays warm for the next task."""
        return self.decide().target

    def step(self) -> None:
        """One look at the site: sweep up pilots that ended, start the ones missing.
        Runs on a worker thread; raises :class:`ProvisionerError` when the resource
        refuses."""
        alive = self.status(self.handles)
        dead = [h for h, ok in zip(self.handles, alive, strict=True) if not ok]
        if dead:
            log.info("%s: %d pilot(s) ended", self.spec.site.name, len(dead))
            self.gone += [e for e in map(self.exit_info, dead) if e is not None]
        self.handles = [h for h, ok in zip(self.handles, alive, strict=True) if ok]
        strays = [h for h in self.strays() if h not in self.handles]
        if strays:
            log.warning("%s: %d pilot(s) on the resource not held, counted from now",
                        self.spec.site.name, len(strays))
            self.handles += strays
        missing = self.decide().start
        if missing > 0 and not self.closing:
            self.handles += self.submit(missing)

    async def keep_alive(self) -> None:
        """Look at the site every ``polling_interval``; a provisioner that fails marks the
        site offline until it works again.  Provisioner calls (``sbatch``, a Dask
        scheduler) block, so they run in a thread and never stall the server.

        A failure that is not a :class:`ProvisionerError` (a bug, a library's own
        exception, the store unreachable for the demand) must not end this loop, or the
        site would never get pilots again: the site goes offline with a reason that names
        the exception, its traceback is logged once, and the looks go on with a growing
        pause (:func:`backoff`) until one works, which brings the site back online."""
        try:
            self.handles = await asyncio.to_thread(self.adopt)
        except ProvisionerError:
            self.handles = []
        except Exception:  # adopting is a courtesy: start afresh
            log.exception("%s: adopting running pilots failed; starting afresh",
                          self.spec.site.name)
            self.handles = []
        if self.handles:
            log.info("%s: adopted %d running pilot(s)", self.spec.site.name, len(self.handles))
        failures = 0
        while not self.closing:
            try:
                self.refresh_demand()  # on the loop: the store is the loop's
                await asyncio.to_thread(self.step)
                self._health(True, "")
                failures = 0
                if self.gone and self.on_gone is not None:
                    gone, self.gone = self.gone, []
                    self.on_gone(self.spec.site.name, gone)
            except ProvisionerError as exc:
                if self.healthy or str(exc) != self.reason:  # say it once, not every look
                    log.error("%s: %s", self.spec.site.name, exc)
                self._tell_health(False, str(exc))
            except Exception as exc:  # the loop outlives any one look
                reason = crash_reason(self.label, exc)
                if self.healthy or reason != self.reason:  # the traceback once
                    log.exception("%s: %s", self.spec.site.name, reason)
                self._tell_health(False, reason)
                failures += 1
            await asyncio.sleep(backoff(self.polling_interval, failures))

    def _health(self, ok: bool, reason: str) -> None:
        """Tell the server the site is online or offline (``reason``) when that changed;
        what was told is remembered only once the server took it (``on_health`` may
        raise: the store unreachable), so a failed telling is tried again."""
        if ok == self.healthy and reason == self.reason:
            return
        if self.on_health is not None:
            self.on_health(self.spec.site.name,
                           SiteState.ONLINE if ok else SiteState.OFFLINE, reason)
        self.healthy, self.reason = ok, reason

    def _tell_health(self, ok: bool, reason: str) -> None:
        """:meth:`_health` after a failed look: its own failure is logged, not raised
        (the loop must go on), and it is told again at the next look."""
        try:
            self._health(ok, reason)
        except Exception as exc:  # the store unreachable: tried again next look
            log.warning("%s: the site's state (%s) not recorded now: %s",
                        self.spec.site.name, reason or "online", exc)

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
