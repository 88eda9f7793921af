"""A pilot's state follows when its words were heard, not when they were written.  Both
backends.

The kind of fault: the server holds pilots' heartbeats in memory and writes them together
up to a second later (server/heartbeats.py), and a heartbeat of a pilot marked lost brings
it back (the watchdog was too quick).  So a beat heard just before a pilot's process was
seen to end, written just after, revived a dead pilot: it showed as running, and its slots
counted for the site, until the watchdog found it silent again.  Members: a pilot seen
ended is not revived by a beat heard before (with or without the jobs it held); one the
watchdog marked lost is revived by a beat heard after its last word, and by a direct
heartbeat; a pilot that said goodbye is never revived.
"""

from __future__ import annotations

import time

SITES = [{"name": "A", "kind": "local", "provisioner": "local", "pilots": 1, "slots": 1}]


def state(store, pilot: int) -> str:
    return store.pilot(pilot)["state"]


def test_a_beat_heard_before_the_process_was_seen_to_end_does_not_revive_it(store):
    pilot = store.register_pilot("A", "host", 101, 1, {})
    (job,) = store.create_task("t", [{"payload": b"x"}], site="A")[1]
    assert [j["id"] for j in store.acquire(pilot, "A", 1)[0]] == [job]
    heard = time.time()                          # held in memory by the server...
    time.sleep(0.01)
    store.pilots_gone("A", "host", [(101, -9)])  # ...while the provisioner sees it end
    assert state(store, pilot) == "lost"
    store.heartbeats([(pilot, heard, None, [job])])  # ...and written after
    assert state(store, pilot) == "lost"
    store.heartbeats([(pilot, heard, {"rss_mb": 50.0, "cpu_s": 1.0, "cpu_pct": 3.0}, [])])
    assert state(store, pilot) == "lost"


def test_a_pilot_the_watchdog_found_silent_comes_back_when_heard_again(store):
    pilot = store.register_pilot("A", "host", 102, 1, {})
    assert store.mark_lost_pilots(time.time() + 1) == [pilot]
    assert state(store, pilot) == "lost"
    store.heartbeats([(pilot, time.time() + 0.01, None, [])])
    assert state(store, pilot) == "running"
    assert store.mark_lost_pilots(time.time() + 1) == [pilot]
    store.heartbeat(pilot, [])                   # a heartbeat of its own, not coalesced
    assert state(store, pilot) == "running"


def test_a_pilot_that_said_goodbye_stays_finished(store):
    pilot = store.register_pilot("A", "host", 103, 1, {})
    store.end_pilot(pilot)
    store.heartbeats([(pilot, time.time() + 1, None, [])])
    assert state(store, pilot) == "finished"
