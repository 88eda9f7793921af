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

    def __init__(self, spec: PilotSpec) -> None:
        self.spec = spec
        self.handles: list = []
        #: Told ``(site, state, reason)`` when the provisioner starts or stops working, so
        #: the server can mark the site offline (brokerage then avoids it) and back.
        self.on_health: Callable[[str, str, str], None] | None = None
        self.healthy = True

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

    async def keep_alive(self) -> None:
        """Keep ``site.pilots`` pilots alive: replace the dead, never exceed the target."""
        self.handles = self.adopt()
        if self.handles:
            log.info("%s: adopted %d running pilot(s)", self.spec.site.name, len(self.handles))
        while True:
            try:
                alive = self.status(self.handles)
                dead = [h for h, ok in zip(self.handles, alive, strict=True) if not ok]
                if dead:
                    log.warning("%s: %d pilot(s) ended; replacing", self.spec.site.name,
                                len(dead))
                self.handles = [h for h, ok in zip(self.handles, alive, strict=True) if ok]
                missing = self.spec.site.pilots - len(self.handles)
                if missing > 0:
                    self.handles += self.submit(missing)
                self._health(True, "")
            except ProvisionerError as exc:
                log.error("%s: %s", self.spec.site.name, exc)
                self._health(False, str(exc))
            await asyncio.sleep(self.polling_interval)

    def _health(self, ok: bool, reason: str) -> None:
        if ok == self.healthy:
            return
        self.healthy = ok
        if self.on_health is not None:
            self.on_health(self.spec.site.name, "online" if ok else "offline", reason)

    async def stop(self, timeout: float = 10.0) -> None:
        self.cancel(self.handles)
        deadline = asyncio.get_running_loop().time() + timeout
        while any(self.status(self.handles)):
            if asyncio.get_running_loop().time() > deadline:
                self.kill(self.handles)
                break
            await asyncio.sleep(0.05)
        self.handles = []

    def kill(self, handles: list) -> None:
        """Last resort after ``cancel`` timed out; the default is another cancel."""
        self.cancel(handles)
