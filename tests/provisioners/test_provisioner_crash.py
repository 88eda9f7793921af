"""A provisioner crashing: the loop that keeps a site's pilots alive outlives it.

Kind (an exception that is not a ``ProvisionerError`` ending a site's loop, so that the
site silently never gets pilots again): a bug in a provisioner's ``step`` (here a
``KeyError``, as a library raises it), a failing ``adopt``, the server's own callbacks
failing (the store unreachable when the demand is read or the site's state recorded).
Each time the site goes offline with a reason that names the exception, the traceback is
logged once, the looks go on with a growing pause, and the site comes back online when a
look works.  The real-process member (the pilot's Python missing) is in
tests/server/test_fault_provisioner.py.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from panda_lab.model.scaling import Mode, ScalingPolicy
from panda_lab.provisioners.base import (
    MAX_BACKOFF,
    PilotSpec,
    Provisioner,
    backoff,
    crash_reason,
)
from panda_lab.provisioners.config import SiteConfig


class Flaky(Provisioner):
    """Pilots are integers; ``status`` raises ``errors`` (one per look) before it works."""

    label = "flaky"
    polling_interval = 0.001

    def __init__(self, errors: list[Exception], adopt_error: Exception | None = None) -> None:
        super().__init__(PilotSpec("http://server", "token", SiteConfig(name="FLAKY")))
        self.errors = list(errors)
        self.adopt_error = adopt_error
        self.looks = 0

    def adopt(self) -> list:
        if self.adopt_error is not None:
            raise self.adopt_error
        return []

    def submit(self, n: int) -> list:
        return list(range(n))

    def status(self, handles: list) -> list[bool]:
        self.looks += 1
        if self.errors:
            raise self.errors.pop(0)
        return [True] * len(handles)

    def cancel(self, handles: list) -> None:
        pass


def run_until_online(prov: Flaky, told: list) -> list[float]:
    """Run the site's loop until it is told online after a failure; the pauses it took."""
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        await real_sleep(0)

    async def run() -> None:
        asyncio.sleep = sleep
        try:
            task = asyncio.create_task(prov.keep_alive())
            while not (told and told[-1][1] == "online"):
                await real_sleep(0.001)
                assert not task.done(), "the site's loop ended"
            prov.closing = True
            await task
        finally:
            asyncio.sleep = real_sleep

    asyncio.run(asyncio.wait_for(run(), 10))
    return pauses


def test_an_unexpected_exception_takes_the_site_offline_and_back_with_backoff(caplog):
    prov = Flaky([KeyError("slots"), KeyError("slots"), KeyError("slots")])
    told: list[tuple[str, str, str]] = []
    prov.on_health = lambda name, state, reason: told.append((name, str(state), reason))
    with caplog.at_level(logging.INFO, "panda_lab.provisioners"):
        pauses = run_until_online(prov, told)
    why = "the flaky provisioner failed unexpectedly: KeyError: 'slots'"
    assert told == [("FLAKY", "offline", why), ("FLAKY", "online", "")]
    assert prov.handles == [0] and prov.looks >= 4  # it looked on, and started its pilot
    assert pauses[:3] == [0.002, 0.004, 0.008]     # doubling while it fails
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and why in tracebacks[0].getMessage()  # once, not per look


def test_a_failing_adopt_starts_afresh_and_a_failing_store_is_told_again(caplog):
    prov = Flaky([], adopt_error=ValueError("bad pilot record"))
    told: list[tuple[str, str, str]] = []
    down = ["store down"]  # recording the site's state fails once, as with the store away

    def on_health(name: str, state: str, reason: str) -> None:
        if down:
            raise ConnectionError(down.pop())
        told.append((name, str(state), reason))

    unreachable = 2  # the store unreachable for the first two demands

    def demand() -> int:
        nonlocal unreachable
        if unreachable:
            unreachable -= 1
            raise ConnectionError("database unreachable")
        return 1

    prov.on_health, prov.demand = on_health, demand
    prov.policy = ScalingPolicy(Mode.QUEUE, 0, 1)  # a site that reads its queue each look
    with caplog.at_level(logging.INFO, "panda_lab.provisioners"):
        run_until_online(prov, told)
    assert "adopting running pilots failed" in caplog.text
    assert "not recorded now: store down" in caplog.text
    # told offline once it could be, naming the store's failure, then online
    assert told == [("FLAKY", "offline", "the flaky provisioner failed unexpectedly: "
                                         "ConnectionError: database unreachable"),
                    ("FLAKY", "online", "")]


@pytest.mark.parametrize(("failures", "pause"), [(0, 1.0), (1, 2.0), (5, 32.0), (6, MAX_BACKOFF),
                                                 (10_000, MAX_BACKOFF)])
def test_the_pause_doubles_per_failure_up_to_its_bound(failures, pause):
    assert backoff(1.0, failures) == pause
    assert backoff(120.0, 3) == 120.0  # never shorter than the site's own interval


def test_the_reason_is_one_line_with_the_exception_named():
    assert crash_reason("slurm", OSError(2, "No such file or directory\n  x")) == (
        "the slurm provisioner failed unexpectedly: FileNotFoundError: "
        "[Errno 2] No such file or directory x")
    assert crash_reason("local", RuntimeError()).endswith("RuntimeError: (no message)")
