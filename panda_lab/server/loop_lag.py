"""How late the server's event loop runs what is due: the time the server itself was deaf.

Every request is read and answered on the server's one event loop (``app.py``).  When
the loop is behind, by a long store call (a 100,000-job submission holds it for
seconds) or by more requests than it answers, a pilot's request waits unread in its
socket, and a timer due meanwhile (the watchdog's) runs before the requests read with
it.  Silence the server did not hear says nothing of the pilot: the heartbeat timeout is
counted on the pilot's side of the wire (PanDA's rule: a job is lost when its pilot
sent no heartbeat for the timeout, not when the server read none).  So the watchdog
extends its timeout by the loop's recent lag (:meth:`LoopLag.grace`), and a pilot that
really went silent is still declared lost once that lag has been caught up: within the
timeout plus one watchdog period on a loop that keeps up.

The lag is measured as asyncio's debug mode measures slow callbacks, without its cost:
a probe sleeps a fixed period and notes how late it woke (``note`` takes other such
measurements, the watchdog's own wake-ups).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque


class LoopLag:
    """The largest lateness of the event loop over the last ``window`` seconds.

    ``window`` (s): how long a lag is remembered (the heartbeat timeout: a word delayed
    by the lag may be the one that keeps a pilot alive within it); ``cap`` (s): the most
    :meth:`grace` gives, so that a loop always behind still declares silent pilots lost,
    later, rather than never.
    """

    def __init__(self, window: float, cap: float) -> None:
        self.window = window
        self.cap = cap
        self._lags: deque[tuple[float, float]] = deque()  # (monotonic time, lag s)

    def note(self, lag: float, at: float | None = None) -> None:
        """A callback due at ``at - lag`` ran at ``at`` (monotonic seconds; now if None)."""
        if lag <= 0:
            return
        at = time.monotonic() if at is None else at
        while self._lags and self._lags[-1][1] <= lag:
            self._lags.pop()   # a smaller or equal lag before a larger one never counts
        self._lags.append((at, lag))

    def grace(self, now: float | None = None) -> float:
        """Seconds to add to the heartbeat timeout now: the largest lag noted in the
        last ``window`` seconds, at most ``cap``; 0.0 on a loop that kept up."""
        now = time.monotonic() if now is None else now
        while self._lags and self._lags[0][0] < now - self.window:
            self._lags.popleft()
        return min(self._lags[0][1], self.cap) if self._lags else 0.0

    async def probe(self, period: float = 0.25) -> None:
        """Wake every ``period`` seconds and note how late each wake-up was; runs until
        cancelled (a background task of the server)."""
        while True:
            due = time.monotonic() + period
            await asyncio.sleep(period)
            now = time.monotonic()
            self.note(now - due, now)
