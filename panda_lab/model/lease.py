"""The client lease on an open task: what becomes of a task whose client went away.

An *open* task takes new jobs until its client closes it (an executor's ``shutdown``).
A client can vanish without closing it: a kernel restarted or killed, a laptop gone
off the network.  PanDA never leaves such work waiting on a person; it closes tasks by
rule.  The rule here is a lease, as in distributed locks and DHCP:

- the server grants a lease of ``lease_s`` seconds when a client opens a task, and the
  client renews it every third of that (so two renewals may be lost before it lapses);
- the watchdog closes every open task whose lease has lapsed, with the reason in the
  task's message (:func:`client_gone_message`);
- a closed task takes no new jobs, but the jobs already submitted run to completion,
  and the task then ends by the usual rule: ``done`` when every job finished,
  ``finished`` (partial) when some did, ``failed`` when none did.  A physicist who lost
  a kernel expects the work already sent to be done and its results readable from a
  new kernel (``lab.task(name).results()``), as with any task that outlives its kernel,
  rather than compute thrown away; ``lab.task(name).kill()`` remains for the rest.
- a server that was down heard no renewal: at start it re-grants every open lease a
  full period (:func:`regranted`), so clients that lived through the outage keep their
  tasks and the ones that died are closed one lease later.

Tasks the server itself holds open (an analysis task while its scouts run) have no
lease: the server closes them when it has made their jobs.
"""

from __future__ import annotations

import time

#: The start of the message of a task the watchdog closed because its lease lapsed.
CLIENT_GONE = "closed: client gone"

#: A client renews its lease this many times per lease period.
RENEWALS_PER_LEASE = 3


def renew_every(lease_s: float) -> float:
    """Seconds between two renewals of a ``lease_s``-second lease (a third of it)."""
    return lease_s / RENEWALS_PER_LEASE


def regranted(lease_until: float, now: float, lease_s: float) -> float:
    """A lease after a server start: a full period from ``now``, never shortened."""
    return max(lease_until, now + lease_s)


def client_gone_message(lease_until: float) -> str:
    """The reason a lapsed lease closed a task, with when it lapsed (UTC)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(lease_until))
    return f"{CLIENT_GONE} (lease expired at {when})"


def ended_message(previous: str, outcome: str) -> str:
    """A task's message when it ends: the ``outcome`` (e.g. "all 3 jobs finished"),
    after the reason it was closed if its lease lapsed (``previous``), so the end says
    both why no more jobs came and how the ones sent ended."""
    if previous.startswith(CLIENT_GONE):
        return f"{previous}; {outcome}"
    return outcome
