"""A pilot with nothing of its own to run takes the jobs waiting at the sites that share its
machine's cores. Both backends.

The kind of fault: work bound to one queue of a resource split into several, so a job
waits behind a busy single-slot pilot while another pilot on the same cores idles. The
embedded default on two cores is three sites of one pilot each, all on the same cores;
brokerage splits an analysis over them, and at its end the site left with the most jobs
ran them alone on one core while the other idled (0.5-0.8 s of a 2.4-s run). Members: an
idle sibling's pilot takes a waiting job, its site becomes the pilot's, and the move is
kept (history, decision, the sentence that explains it, the table of candidates); by
priority, and among equals its
own queue's before its siblings', of which one per acquisition (a pilot filling its queue
ahead took a whole map's waiting jobs, so none could be cancelled as never run); a job
whose decision did not let the pilot's site pass (the task names its sites, or an earlier
attempt failed there) stays; so do jobs of a site that shares no cores, jobs for a pilot
of a site that shares none, and jobs for or from a site that is offline; among the
siblings' jobs, those whose input the pilot read last come first; and a pilot with work of
its own does not look at its siblings' queues (one statement fewer per acquisition); and a
sibling whose own pilot has a slot free keeps its queue (that pilot starts the job now,
where a busy pilot asking just in time, ahead of its slot's end, would hold it behind its
own: a map's first result waited for its second, which waited for the first to be read),
taken once that pilot is busy.
"""

from __future__ import annotations

import json

from sqlalchemy import update

from panda_lab.client.brokerage import brokerage_frame
from panda_lab.model.explain import explain
from panda_lab.store.rows import sites as site_rows
from panda_lab.store.schema import job_decisions, jobs

SHARED = {"kind": "local", "provisioner": "local", "pilots": 1, "slots": 1,
          "shared_cores": 2}
SITES = [{"name": "GRID", **SHARED}, {"name": "CLOUD", **SHARED}, {"name": "HPC", **SHARED},
         {"name": "OWN", "kind": "local", "provisioner": "local", "pilots": 1, "slots": 1}]


def waiting_at(store, site: str, n: int, *, priority: int = 0, only: str | None = None,
               chunks: list[list[dict]] | None = None) -> list[int]:
    """``n`` jobs that accept every site (or only ``only``), brokered and then set to wait
    at ``site``: as if brokerage had drawn ``site`` for each."""
    _task, ids, _ = store.create_task(
        "t", [{"payload": b"x", "priority": priority}] * n, site=only, job_chunks=chunks)
    with store.tx() as conn:
        conn.execute(update(jobs).where(jobs.c.id.in_(ids)).values(site=site))
    return ids


def pilot(store, site: str) -> int:
    return store.register_pilot(site, "h", 1, 1, {})


def got(store, pilot_id: int, site: str, n: int = 1) -> list[int]:
    return [j["id"] for j in store.acquire(pilot_id, site, n)[0]]


def test_an_idle_sibling_takes_a_waiting_job_and_the_move_is_kept(store):
    ids = waiting_at(store, "GRID", 3)
    cloud = pilot(store, "CLOUD")
    (taken,) = got(store, cloud, "CLOUD")
    assert taken == ids[0]                      # the oldest of GRID's queue
    job = store.get_job(taken)
    assert job["site"] == "CLOUD" and job["state"] == "sent"
    assert job["history"][-1]["info"] == f"pilot {cloud} of CLOUD, from GRID's queue"
    moved = job["broker_info"]["moved"]
    assert (moved["from"], moved["to"], moved["pilot"]) == ("GRID", "CLOUD", cloud)
    sentence = explain(job["broker_info"])
    assert sentence.startswith("sent to ")     # the decision as brokerage made it
    assert sentence.endswith("then taken by a pilot of CLOUD, whose pilots share this "
                             "machine's cores with GRID's and had no job of their own waiting")
    # the table of candidates says it too, on each of the job's rows
    assert set(brokerage_frame([job])["moved_to"]) == {"CLOUD"}
    # the others still wait at GRID, and GRID's own pilot finds them there
    assert [store.get_job(i)["site"] for i in ids[1:]] == ["GRID", "GRID"]
    assert got(store, pilot(store, "GRID"), "GRID", 2) == ids[1:]
    assert all("moved" not in store.get_job(i)["broker_info"] for i in ids[1:])
    assert brokerage_frame([store.get_job(ids[1])])["moved_to"].isna().all()


def test_by_priority_then_its_own_queue_before_its_siblings(store):
    older = waiting_at(store, "GRID", 1)
    high = waiting_at(store, "HPC", 1, priority=5)
    own = waiting_at(store, "CLOUD", 1)
    cloud = pilot(store, "CLOUD")
    assert got(store, cloud, "CLOUD", 3) == high + own   # one of its siblings' at a time
    assert got(store, cloud, "CLOUD", 3) == older


def test_a_pilot_with_work_of_its_own_leaves_its_siblings_queues_alone(store):
    theirs = waiting_at(store, "GRID", 2, priority=9)
    own = waiting_at(store, "CLOUD", 2)
    cloud = pilot(store, "CLOUD")
    assert got(store, cloud, "CLOUD", 2) == own
    assert [store.get_job(i)["site"] for i in theirs] == ["GRID", "GRID"]


def test_a_job_whose_decision_did_not_let_the_site_pass_stays(store):
    named = waiting_at(store, "GRID", 1, only="GRID")        # the task names its site
    cloud = pilot(store, "CLOUD")
    assert got(store, cloud, "CLOUD") == []
    # an attempt that avoids CLOUD (an earlier one failed there) while others are left
    (retry,) = waiting_at(store, "GRID", 1)
    info = store.get_job(retry)["broker_info"]
    info["weights"].pop("CLOUD")
    info.setdefault("rejected", {})["CLOUD"] = "avoided"
    with store.tx() as conn:
        conn.execute(update(job_decisions).where(job_decisions.c.job_id == retry)
                     .values(info=json.dumps(info)))
    assert got(store, cloud, "CLOUD") == []
    assert got(store, pilot(store, "HPC"), "HPC", 2) == [retry]
    assert store.get_job(named[0])["site"] == "GRID"


def test_sites_that_share_no_cores_neither_take_nor_give(store):
    at_own = waiting_at(store, "OWN", 1)
    assert got(store, pilot(store, "CLOUD"), "CLOUD") == []   # OWN is no sibling
    at_grid = waiting_at(store, "GRID", 1)
    assert got(store, pilot(store, "OWN"), "OWN", 2) == at_own  # nor is GRID OWN's
    assert store.get_job(at_grid[0])["site"] == "GRID"


def test_an_offline_site_neither_takes_nor_gives(store):
    at_grid = waiting_at(store, "GRID", 1)
    cloud = pilot(store, "CLOUD")
    store.set_site_state("CLOUD", "offline", "maintenance")
    assert got(store, cloud, "CLOUD") == []
    store.set_site_state("CLOUD", "online")
    store.set_site_state("GRID", "offline", "maintenance")  # its jobs go to rebrokerage
    assert got(store, cloud, "CLOUD") == []
    store.set_site_state("GRID", "online")
    assert got(store, cloud, "CLOUD") == at_grid


def test_the_siblings_jobs_whose_input_the_pilot_read_come_first(store):
    def chunk(i: int) -> list[dict]:
        return [{"file_index": i, "path": f"/f{i}.root", "tree": "Events", "start": 0,
                 "stop": 10}]

    cloud = pilot(store, "CLOUD")
    first = waiting_at(store, "CLOUD", 1, chunks=[chunk(2)])
    assert got(store, cloud, "CLOUD") == first  # CLOUD's pilot now holds chunk 2's input
    again = waiting_at(store, "GRID", 3, chunks=[chunk(0), chunk(1), chunk(2)])
    assert got(store, cloud, "CLOUD") == [again[2]]


def test_core_siblings_are_the_other_online_sites_sharing_cores(store):
    with store.tx() as conn:
        assert site_rows.core_siblings(conn, "GRID") == ["CLOUD", "HPC"]
        assert site_rows.core_siblings(conn, "OWN") == []
    store.set_site_state("HPC", "offline", "x")
    with store.tx() as conn:
        assert site_rows.core_siblings(conn, "GRID") == ["CLOUD"]
        assert site_rows.core_siblings(conn, "HPC") == []


def test_a_sibling_whose_pilot_has_a_free_slot_keeps_its_queue(store):
    at_grid = waiting_at(store, "GRID", 2)
    grid = pilot(store, "GRID")                 # idle: GRID's jobs are its to start
    cloud = pilot(store, "CLOUD")
    assert got(store, cloud, "CLOUD") == []
    assert got(store, grid, "GRID") == at_grid[:1]   # now GRID's only slot is taken
    assert got(store, cloud, "CLOUD") == at_grid[1:]
    with store.tx() as conn:
        assert site_rows.all_busy(conn, ["GRID", "HPC", "CLOUD"]) == ["GRID", "HPC", "CLOUD"]
    store.end_pilot(grid)                       # no running pilot: nobody's slot is free
    with store.tx() as conn:
        assert site_rows.all_busy(conn, ["GRID"]) == ["GRID"]
