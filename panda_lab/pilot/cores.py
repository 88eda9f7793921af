"""One machine's cores, shared by the local pilots of several sites: at most N payloads run
at once, whichever pilot runs them.

Rule: a PanDA pilot runs as many payloads as its batch slot has cores (the job's and the
queue's ``corecount``).  Local pilots of several sites on one machine share that machine's
cores, so together they take no more than it has: three single-slot pilots on two cores
are otherwise three payloads on two cores, each about 1.6 times as slow, and the server,
the merger and the notebook starved besides.

How: each running payload holds one of ``N`` lock files (``core-0`` ... ``core-N-1`` in a
directory the pilots share) with ``flock``, which the kernel releases when the process
dies, so a killed pilot never keeps a core.  A pilot that wants a core and finds none free
queues: it holds a lock on a ticket file ``wait-<key>-<pid>`` (a dead waiter's ticket is
seen as unlocked and removed).  A free core goes to the ticket of least key first.  A
pilot that has held its core for a turn (:data:`TURN_S`) gives it back when its job ends
and another pilot waits, and takes it again only when no waiter comes before it, so the
sites' pilots take turns and their queues drain together instead of one site's finishing
last on one core.  The turn is a scheduler's time slice: short jobs run many to a turn,
so a hand-over is not paid per job.

Who comes first is fair share, not arrival: the key orders waiters by the core time each
pilot had lately (decayed with :data:`SHARE_TAU_S`, the rule of a fair-share batch
scheduler such as Slurm's, or Linux's CFS, at the scale of seconds), then by when it
queued; and a turn is over only for a waiter that had less core time than the holder.
By arrival alone, a pilot that waited through the first turn stayed a turn behind to the
end, and its site's last jobs ran alone on one core (the embedded default's first runs:
the last pilot ran alone for 0.3-0.6 s of 2.5).  A pilot with nothing left to run forgets its
share (:meth:`CoreSlots.forget`): the next task starts even.  The key of a
pilot that had ``S`` seconds of core at time ``t`` is ``t / tau + ln(S + 1 ms)``: while it
waits its share decays as everyone's does, so keys made at different times compare as
the shares would now.

A waiter is woken, not left to poll: each pilot has a FIFO, ``ring-<pid>-<k>``, named
in its ticket (``wait-<key>-<pid>-<k>``); a pilot that gives a core back writes a byte to
the first waiter's, and the waiter, which waits on its FIFO's descriptor
(:attr:`CoreSlots.bell`) with its workers' pipes, looks at once.  A core freed by a
pilot that died rings no one: waiters also look every :data:`POLL_S`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import math
import os
import time
from pathlib import Path

__all__ = ["POLL_S", "SHARE_TAU_S", "TURN_S", "CoreSlots"]

#: Seconds between two looks for a free core while waiting for one and not rung: how
#: long a core freed by a pilot that died may stay idle.
POLL_S = 0.05
#: Seconds over which a pilot's core time counts for its place among waiters (the decay
#: constant of its fair share).
SHARE_TAU_S = 60.0
#: Core time (seconds) that counts as none: a pilot that had none queues by arrival.
_SHARE_FLOOR_S = 1e-3

#: Seconds a pilot keeps a core for its next jobs before a waiting pilot gets it.  A
#: hand-over costs more than the scheduler's switch (the pilot that gives the core back
#: keeps its prefetched job waiting, and the taker's payload process starts cold); a
#: long turn leaves the pilot that waits first a turn behind, and a pilot runs one job at
#: a time, so it ends alone on one core.  With the sites' shares of an analysis even
#: (store/rows/sites.py, ``shared_speed``), the embedded default's first run over the
#: benchmark's 8 M events went at 3.26-3.41 M ev/s with turns of 0.3 s and 0.5 s (five
#: runs) against 2.96-3.08 with 1 s (three), alternating (benchmarks/README.md).
TURN_S = 0.5

_instances = itertools.count()  # several per process in tests: each its own bell


class CoreSlots:
    """This process's share of ``n`` cores whose lock files live in ``directory``.

    ``n`` must be at least 1 (:class:`ValueError` otherwise); ``directory`` is made if
    missing.  Not thread-safe: one pilot loop uses it."""

    def __init__(self, directory: str | Path, n: int) -> None:
        if n < 1:
            raise ValueError(f"shared cores: {n} is not a number of cores (at least 1)")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.n = n
        self._fds = [os.open(self.dir / f"core-{i}", os.O_RDWR | os.O_CREAT, 0o666)
                     for i in range(n)]
        self._held: list[int] = []       # indexes of the cores this process holds
        self._since: dict[int, float] = {}  # when each was taken (time.monotonic())
        #: Core seconds held lately (decayed, see SHARE_TAU_S), as of ``_share_at``.
        self._share = 0.0
        self._share_at = time.time()
        self._ticket: Path | None = None
        self._ticket_fd: int | None = None
        self._me = f"{os.getpid()}-{next(_instances)}"
        # Made and opened under another name first: a ring-* FIFO that nobody reads is
        # a dead pilot's (swept below), never one being made.
        draft = self.dir / f"draft-ring-{self._me}"
        draft.unlink(missing_ok=True)
        os.mkfifo(draft, 0o600)
        #: The descriptor to wait on, readable when a pilot gave a core back for this
        #: one (see :meth:`hear`).
        self.bell = os.open(draft, os.O_RDONLY | os.O_NONBLOCK)
        # held open so that the bell never reads as closed (a FIFO with no writer left is
        # readable for ever) once a ringer has come and gone
        self._keep = os.open(draft, os.O_WRONLY | os.O_NONBLOCK)
        self._ring = self.dir / f"ring-{self._me}"
        os.rename(draft, self._ring)  # replaces a dead pilot's, whose pid this one has now
        _sweep_rings(self.dir)

    @property
    def held(self) -> int:
        """Cores this process holds now."""
        return len(self._held)

    def take(self) -> bool:
        """Take one core if one is free and no waiter comes before this pilot; otherwise
        queue (a ticket) and return False.  Never blocks."""
        if self._older_waiting():
            self._queue()
            return False
        start = os.getpid() % self.n  # pilots try different files first
        for k in range(self.n):
            i = (start + k) % self.n
            if i in self._held:
                continue
            try:
                fcntl.flock(self._fds[i], fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            self._held.append(i)
            self._since[i] = time.monotonic()
            self._leave_queue()
            return True
        self._queue()
        return False

    def give(self) -> None:
        """Give back one core this process holds, the latest taken (no-op when it holds
        none)."""
        if self._held:
            i = self._held.pop()
            since = self._since.pop(i, None)
            if since is not None:
                self._add_share(time.monotonic() - since)
            fcntl.flock(self._fds[i], fcntl.LOCK_UN)
            self._ring_oldest()

    def share(self, t: float | None = None) -> float:
        """Core seconds this process held lately, decayed to time ``t`` (``time.time()``;
        default now) with :data:`SHARE_TAU_S`; the cores it holds count up to now."""
        t = time.time() if t is None else t
        now = time.monotonic()
        held = sum(now - since for since in self._since.values())
        return self._share * math.exp(-(t - self._share_at) / SHARE_TAU_S) + held

    def forget(self) -> None:
        """Start a new share from none: for a pilot with nothing left to run.  A share is
        fair within a stretch of work; carried into the next task, the pilot that ran the
        last jobs of one would wait longest at the start of the next."""
        self._share, self._share_at = 0.0, time.time()

    def _add_share(self, seconds: float) -> None:
        t = time.time()
        self._share = self._share * math.exp(-(t - self._share_at) / SHARE_TAU_S) + seconds
        self._share_at = t

    def _key(self) -> int:
        """This pilot's place among waiters now: less is sooner (module docstring)."""
        t = time.time()
        return int((t / SHARE_TAU_S + math.log(self.share(t) + _SHARE_FLOOR_S) + 100.0) * 1e9)

    def hear(self) -> None:
        """Empty the bell (after a wait on :attr:`bell`), so it waits again."""
        with contextlib.suppress(BlockingIOError):  # empty: nothing more to read
            while os.read(self.bell, 512):
                continue

    def _ring_oldest(self) -> None:
        """Wake the first waiter (least key), if one waits: it takes the core at once
        instead of at its next look (a lost ring costs it one :data:`POLL_S`)."""
        waiters = self._waiters(exclude_self=True)
        if not waiters:
            return
        who = waiters[0].split("-", 2)[2]
        try:
            fd = os.open(self.dir / f"ring-{who}", os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # gone, or not read by anyone (ENXIO): it will look by itself
            return
        try:
            with contextlib.suppress(OSError):  # full: it has been rung already
                os.write(fd, b"!")
        finally:
            os.close(fd)

    def turn_over(self, turn: float | None = None) -> bool:
        """Whether a core this process holds should go to a waiting pilot now: it has
        been held for ``turn`` seconds (default :data:`TURN_S`) and another pilot waits
        that had less core time lately than this one (its fair share: a pilot that
        waited through the first turns keeps its core until it caught up).  (The clock
        is read first: the queue is looked at once a turn, not after every short job.)"""
        if not self._held:
            return False
        oldest = min(self._since[i] for i in self._held)
        if time.monotonic() - oldest < (TURN_S if turn is None else turn):
            return False
        waiters = self._waiters(exclude_self=True)
        return bool(waiters) and _ticket_key(waiters[0]) < self._key()

    def others_waiting(self) -> bool:
        """Whether another live pilot waits for a core now."""
        return bool(self._waiters(exclude_self=True))

    def close(self) -> None:
        """Give back every core and leave the queue (also what the process's exit does)."""
        while self._held:
            self.give()
        self._leave_queue()
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        if self.bell >= 0:
            os.close(self.bell)
            os.close(self._keep)
            self.bell = -1
            self._ring.unlink(missing_ok=True)

    # ---- the queue of waiting pilots --------------------------------------------------------
    def _queue(self) -> None:
        if self._ticket is not None:
            return
        path = self.dir / f"wait-{self._key():020d}-{self._me}"
        # Locked under another name first: a ticket is never seen unlocked (and removed
        # as a dead waiter's) between its creation and its lock.
        draft = self.dir / f"draft-{self._me}"
        fd = os.open(draft, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(draft, path)
        self._ticket, self._ticket_fd = path, fd

    def leave(self) -> None:
        """Stop waiting (no-op when not waiting): for a pilot that no longer needs a core."""
        self._leave_queue()

    def _leave_queue(self) -> None:
        if self._ticket is None:
            return
        self._ticket.unlink(missing_ok=True)
        if self._ticket_fd is not None:
            os.close(self._ticket_fd)
        self._ticket = self._ticket_fd = None

    def _older_waiting(self) -> bool:
        mine = self._ticket.name if self._ticket is not None else None
        return any(mine is None or name < mine for name in self._waiters(exclude_self=True))

    def _waiters(self, *, exclude_self: bool) -> list[str]:
        """Names of the live tickets, first (least key) first; dead waiters' tickets are
        removed."""
        out = []
        for entry in os.scandir(self.dir):
            if not entry.name.startswith("wait-"):
                continue
            if exclude_self and self._ticket is not None and entry.name == self._ticket.name:
                continue
            if not _alive(entry.path):
                continue
            out.append(entry.name)
        return sorted(out)


def _sweep_rings(directory: Path) -> None:
    """Remove the FIFOs of pilots that died without :meth:`CoreSlots.close` (killed):
    a live pilot keeps its FIFO open for reading, so a FIFO no one reads (``ENXIO`` on a
    non-blocking open for writing) is a dead one's.  Without this, every killed pilot
    left one behind for good, and the directory every look scans grew with them."""
    for entry in os.scandir(directory):
        if not entry.name.startswith("ring-"):
            continue
        try:
            fd = os.open(entry.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            continue
        os.close(fd)


def _ticket_key(name: str) -> int:
    """The key in a ticket's name, ``wait-<key>-<pid>-<k>``."""
    return int(name.split("-", 2)[1])


def _alive(ticket: str) -> bool:
    """Whether the ticket's pilot still holds it; a ticket nobody holds is removed."""
    try:
        fd = os.open(ticket, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True  # its pilot holds it
    finally:
        os.close(fd)  # closing drops the shared lock if this call took it
    try:
        os.unlink(ticket)
    except FileNotFoundError:
        pass
    return False
