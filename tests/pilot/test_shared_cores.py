"""The machine's cores shared by the local pilots of several sites (panda_lab/pilot/cores.py).

The kind of fault: more payloads running on one machine than it has cores, because each
site's pilots count only their own slots (three single-slot pilots on two cores).  Its
members, each tested here: too many payloads at once over several pilots; one site's
pilots keeping the cores while another site's jobs wait (its queue then drains last, on
one core); a pilot killed while it holds a core, or while it waits for one, keeping it
or its place (or its bell's FIFO, left in the directory) for good; a core given back
left idle until the waiter's next look (the waiter is rung: the first only, and a dead
waiter's bell costs the giver nothing); a pilot that waited through the first turns kept
a turn behind to the end (waiters now go by their core time lately, then by arrival);
and a limit that is no number.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import select
import signal
import time

import pytest
from harness import ServerProcess

from panda_lab.pilot.cores import SHARE_TAU_S, TURN_S, CoreSlots
from panda_lab.resources import Resources, plan_local


def test_no_more_than_n_at_once_and_the_waiter_with_least_core_time_goes_first(tmp_path):
    a, b, c = (CoreSlots(tmp_path, 2) for _ in range(3))
    assert a.take() and b.take()
    assert not c.take()  # both cores held: c waits
    time.sleep(0.2)
    a.give()
    # a's job ended and it has another: c has had no core, so a does not get it back
    assert not a.take()
    assert c.take() and (a.held, b.held, c.held) == (0, 1, 1)
    assert a.others_waiting() is False and c.others_waiting() is True  # a waits now
    assert a.share() == pytest.approx(0.2, abs=0.05) and c.share() < 0.05
    b.give()
    assert not c.take()  # c may not take a core past a waiter without queueing ...
    # ... and then it comes first: it had 0.2 s less of a core than a lately
    assert not a.take()
    assert c.take() and (a.held, b.held, c.held) == (0, 0, 2)
    c.give()
    assert a.take()      # ... and a gets the next
    for s in (a, b, c):
        s.close()


def test_among_waiters_the_least_core_time_lately_goes_first_then_the_first_queued(
        tmp_path):
    a, b, c, d = (CoreSlots(tmp_path, 1) for _ in range(4))
    assert a.take()
    time.sleep(0.3)
    a.give()                 # a had 0.3 s of the core
    assert b.take()
    assert not a.take()      # a queues first ...
    time.sleep(0.01)
    assert not c.take()      # ... c, with no core time, after it
    time.sleep(0.01)
    assert not d.take()      # ... and d, also none, after c
    b.give()
    assert not a.take() and not d.take() and c.take()   # c: none, and first of those
    c.give()
    assert not a.take() and d.take()
    d.give()
    # a's share decays: core time SHARE_TAU_S ago counts e times less
    now = time.time()
    assert a.share(now) == pytest.approx(0.3, abs=0.05)
    assert a.share(now + SHARE_TAU_S) == pytest.approx(a.share(now) / math.e)
    assert a.take()
    for s in (a, b, c, d):
        s.close()


def rung(slots: CoreSlots) -> bool:
    return bool(select.select([slots.bell], [], [], 0)[0])


def test_a_core_given_back_rings_the_oldest_waiter_only(tmp_path):
    a, b, c = (CoreSlots(tmp_path, 1) for _ in range(3))
    assert a.take()
    assert not b.take()
    time.sleep(0.001)  # tickets are ordered by their time in ns
    assert not c.take()
    assert not (rung(a) or rung(b) or rung(c))
    a.give()
    assert rung(b) and not rung(c) and not rung(a)
    b.hear()
    assert not rung(b)  # heard: it waits again
    assert b.take()
    b.give()  # b's job ended with nothing queued: c, waiting, is rung
    assert rung(c)
    for s in (a, b, c):
        s.close()
    assert not list(tmp_path.glob("ring-*"))


def test_a_waiter_that_leaves_holds_no_place(tmp_path):
    a, b = CoreSlots(tmp_path, 1), CoreSlots(tmp_path, 1)
    assert a.take()
    assert not b.take()
    b.leave()  # its queue emptied: it no longer needs a core
    a.give()
    assert a.take()


def _hold_then_sleep(directory: str, n: int, take: bool, ready) -> None:
    s = CoreSlots(directory, n)
    if take:
        assert s.take()
    else:
        assert not s.take()  # queued behind the parent
    ready.set()
    time.sleep(60)


@pytest.mark.parametrize("take", [True, False], ids=["holding a core", "waiting for one"])
def test_a_killed_pilot_keeps_neither_a_core_nor_its_place(tmp_path, take):
    mine = CoreSlots(tmp_path, 1)
    if not take:
        assert mine.take()  # the child will queue behind this
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_hold_then_sleep, args=(str(tmp_path), 1, take, ready))
    child.start()
    try:
        assert ready.wait(30)
        if take:
            assert not mine.take()  # the child holds the only core
        else:
            mine.give()
            assert not mine.take()  # the child waited longer
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert mine.take()  # the kernel dropped its lock; its ticket is seen dead
        assert not list(tmp_path.glob("wait-*"))
        mine.give()  # the dead child's bell is left, with no one to hear it: no error
        assert mine.take()
        # the next pilot to start sweeps the dead one's FIFO, and no live one's
        later = CoreSlots(tmp_path, 1)
        assert sorted(tmp_path.glob("ring-*")) == sorted([mine._ring, later._ring])
        later.close()
    finally:
        if child.is_alive():
            child.kill()
        mine.close()


def test_a_limit_that_is_no_number_of_cores_is_refused(tmp_path):
    with pytest.raises(ValueError, match="shared cores: 0"):
        CoreSlots(tmp_path, 0)


def test_the_embedded_default_shares_the_cores_only_when_it_has_more_workers():
    two = plan_local(Resources(2, 1536 * 2**20, 64, 2**40))
    assert (two.sites, two.slots, two.shared_cores) == (3, 1, 2)
    assert "2 job(s) at once over all of them" in two.note
    eight = plan_local(Resources(8, 16384 * 2**20, 64, 2**40))
    assert (eight.sites, eight.slots, eight.shared_cores) == (3, 2, 0)
    one_site = plan_local(Resources(2, 1024 * 2**20, 64, 2**40))
    assert (one_site.sites, one_site.shared_cores) == (1, 0)


SITES = """
[sites.A]
kind = "grid"
shared_cores = 2
[sites.B]
kind = "cloud"
shared_cores = 2
[sites.C]
kind = "hpc"
shared_cores = 2
"""


def nap(i: int) -> tuple[float, float]:
    """0.4 s without using the CPU; when it ran, as wall-clock seconds."""
    import time

    t0 = time.time()
    time.sleep(0.4)
    return t0, time.time()


def test_three_single_slot_pilots_on_two_shared_cores_take_turns(tmp_path):
    """Three sites of one single-slot pilot, sharing two cores: never three jobs at
    once, two at once most of the time, every site's first job starts within the first
    round of turns (when the jobs of a turn, :data:`TURN_S` of 0.4-s jobs, have run).
    Without turns, one site's jobs would wait until another's queue is empty, after its
    six jobs and more."""
    (tmp_path / "sites.toml").write_text(SITES)
    home = tmp_path / "home"
    home.mkdir()
    server = ServerProcess(home, extra=["--sites", str(tmp_path / "sites.toml")]).start()
    try:
        lab = server.lab()
        # The first task teaches the pilots the jobs' duration, so they ask for their next
        # job just before the current one ends: a pilot then always has one waiting, and
        # only the turns keep it from taking its core straight back.
        for name in ("warm", "turns"):
            t = lab.submit(nap, [(i,) for i in range(18)], name=name)
            assert lab.wait(t, timeout=90)["state"] == "done"
        spans = lab.results(t)
        sites = {j["job_index"]: j["site"] for j in lab.jobs(t)}
    finally:
        server.stop()
    assert sorted(set(sites.values())) == ["A", "B", "C"]
    edges = sorted([(t0, 1) for t0, _ in spans.values()] + [(t1, -1) for _, t1 in spans.values()],
                   key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    running, most = 0, 0
    for _, step in edges:
        running += step
        most = max(most, running)
    assert most == 2, f"{most} jobs ran at once on two shared cores"
    order = [sites[i] for i in sorted(spans, key=lambda i: spans[i][0])]
    t0 = min(t for t, _ in spans.values())
    first = {s: min(spans[i][0] for i in spans if sites[i] == s) - t0 for s in "ABC"}
    turn = math.ceil(TURN_S / 0.4) * 0.4  # a turn ends with the job that ends past it
    assert max(first.values()) <= turn + 0.3, f"a site waited for another's queue: {order}"


def test_the_pilot_command_refuses_shared_cores_without_their_directory(capsys):
    from panda_lab.cli.main import EXIT_USAGE, main

    base = ["pilot", "--server", "http://127.0.0.1:9", "--site", "A", "--token", "t"]
    assert main([*base, "--shared-cores", "2"]) == EXIT_USAGE
    assert main([*base, "--shared-cores", "-1", "--cores-dir", "/tmp"]) == EXIT_USAGE
    assert "--shared-cores" in capsys.readouterr().err


def test_a_turn_is_over_when_held_long_enough_and_another_waits(tmp_path):
    a, b = CoreSlots(tmp_path, 1), CoreSlots(tmp_path, 1)
    assert a.take()
    assert not a.turn_over(turn=0.0)     # no one waits: keep it
    assert not b.take()
    assert not a.turn_over(turn=60.0)    # b waits, but a's turn is not over
    assert a.turn_over(turn=0.0)
    a.close()
    b.close()


def test_a_turn_is_over_only_for_a_waiter_that_had_less_core_time(tmp_path):
    """Fair share: a pilot that waited through the first turns keeps its core past its
    turn while the waiter had more of it lately, and gives it once it caught up."""
    a, b = CoreSlots(tmp_path, 1), CoreSlots(tmp_path, 1)
    assert a.take()
    time.sleep(0.4)
    a.give()
    assert b.take()          # b had none: its core since now
    assert not a.take()      # a waits, having had 0.4 s
    time.sleep(0.1)
    assert not b.turn_over(turn=0.0)   # b had 0.1 s: a had more, b keeps it
    time.sleep(0.35)
    assert b.turn_over(turn=0.0)       # b had 0.45 s: a goes first now
    b.give()
    b.forget()               # nothing left to run: b's next work starts even
    assert b.share() == 0.0 and a.take()
    assert not b.take()      # a holds it; b queues with no core time ...
    a.give()
    assert b.take()          # ... and is served first
    a.close()
    b.close()


def _pilot(tmp_path, monkeypatch, turn: float):
    from collections import deque

    from panda_lab.pilot import cores
    from panda_lab.pilot.pilot import Pilot, PilotOptions

    monkeypatch.setattr(cores, "TURN_S", turn)
    p = Pilot(PilotOptions(server="http://127.0.0.1:9", site="A", token="t",
                           shared_cores=1, cores_dir=str(tmp_path)))
    p.queue = deque([{"id": 1}, {"id": 2}])
    assert p.cores.take()  # the core of the job that just ended (no worker is busy)
    return p


@pytest.mark.parametrize("turn,waiting,kept", [
    (60.0, True, 1),    # short jobs run many to a turn: the core stays for the next
    (0.0, False, 1),    # turn over, but no one waits
    (0.0, True, 0),     # turn over and another pilot waits: it goes back
])
def test_a_pilot_keeps_its_core_for_queued_jobs_until_its_turn_is_over(
        tmp_path, monkeypatch, turn, waiting, kept):
    p = _pilot(tmp_path, monkeypatch, turn)
    other = CoreSlots(tmp_path, 1)
    if waiting:
        assert not other.take()
    try:
        p._give_back_cores()
        assert p.cores.held == kept
        p.queue.clear()
        p._give_back_cores()
        assert p.cores.held == 0  # nothing queued: nothing kept
    finally:
        p.cores.close()
        other.close()
        import shutil
        shutil.rmtree(p.spool, ignore_errors=True)
