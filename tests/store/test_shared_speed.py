"""Local sites that share the machine's cores are weighed at one speed.  Both backends.

The kind of fault: sites that are one resource measured as several, so the noise of a few
jobs becomes a difference brokerage acts on.  The embedded default's three sites run on
the same cores, taking turns; learned apart, their speeds differed by up to 30 % after a
warm-up, an analysis of 32 jobs split 13/10/9, and the site with the most jobs ran alone
on one core at the end.  Members: the group's speed is the mean of its members' measured
ones, and a member not measured yet gets it too; a site outside the group keeps its own;
failure rates stay each site's own (a site that fails is not its neighbours' fault); a
group of one, or with nothing measured, changes nothing; and, through brokerage, a bulk
over the group splits evenly although its members measured twice apart, while the same
two sites, not sharing cores, split by their speeds.
"""

from __future__ import annotations

from collections import Counter

import pytest

from panda_lab.store.rows import sites as site_rows

SHARED = {"kind": "local", "provisioner": "local", "pilots": 1, "slots": 1,
          "shared_cores": 2}
SITES = [{"name": "GRID", **SHARED}, {"name": "CLOUD", **SHARED}, {"name": "HPC", **SHARED},
         {"name": "OWN", "kind": "local", "provisioner": "local", "pilots": 1, "slots": 1}]


def measure(store, site: str, seconds: float, state: str = "finished", n: int = 1) -> None:
    """``n`` warm jobs of 10,000 events at ``site``, each taking ``seconds``."""
    ids = store.create_task("m", [{"payload": b"x"}] * n, site=site)[1]
    pilot = store.register_pilot(site, "h", 1, 1, {})
    for job_id in ids:
        got, _ = store.acquire(pilot, site, 1)
        assert [j["id"] for j in got] == [job_id]
        store.apply_updates(pilot, [{"id": job_id, "attempt": 1, "state": "running"}])
        fields = ({"result": b"r", "events": 10_000, "seconds": seconds} if state == "finished"
                  else {"error": {"category": "system", "message": "worker died"}})
        store.apply_updates(pilot, [{"id": job_id, "attempt": 1, "state": state, **fields}])
    store.flush_learning()


def loads(store) -> dict:
    with store.tx() as conn:
        return {s.name: s for s in site_rows.loads_(conn)}


def test_the_group_is_weighed_at_the_mean_of_its_measured_speeds(store):
    measure(store, "GRID", 1.0)     # 10,000 events/s
    measure(store, "CLOUD", 2.0)    # 5,000
    measure(store, "OWN", 0.5)      # 20,000, not in the group
    measure(store, "HPC", 1.0, state="failed")  # measured failing, not its speed
    got = loads(store)
    for name in ("GRID", "CLOUD", "HPC"):
        assert got[name].slot_rate == pytest.approx(7_500)
        assert got[name].mean_job_s == pytest.approx(1.5)
    assert got["OWN"].slot_rate == pytest.approx(20_000)
    assert got["HPC"].failure_rate > 0 and got["GRID"].failure_rate == 0.0


def test_nothing_measured_or_a_group_of_one_changes_nothing():
    assert site_rows.shared_speed({}, ["GRID", "CLOUD"]) == {}
    assert site_rows.shared_speed({"GRID": (None, 0.0, None)}, ["GRID", "CLOUD"]) == {}
    assert site_rows.shared_speed({"GRID": (10.0, 0.0, 1.0)}, ["GRID"]) == {}
    assert site_rows.shared_speed({"GRID": (10.0, 0.0, 1.0)}, ["GRID", "CLOUD"]) == {
        "GRID": (10.0, 1.0), "CLOUD": (10.0, 1.0)}


def _shares(store, sites: str, n: int = 30) -> Counter:
    chunk = [{"file_index": 0, "path": "f.root", "tree": "Events", "start": 0,
              "stop": 10_000}]
    _, ids, _ = store.create_task("bulk", [{"payload": b"x"}] * n, site=sites,
                                  job_chunks=[chunk] * n)
    return Counter(store.get_job(i)["site"] for i in ids)


def test_a_bulk_over_the_group_splits_evenly_though_its_members_measured_apart(store):
    measure(store, "GRID", 1.0, n=3)
    measure(store, "CLOUD", 4.0, n=3)
    shares = _shares(store, "GRID,CLOUD", n=60)
    # weighed apart (four times as fast): about 40/20, a bulk's share growing as the
    # square root of the weight (model/brokerage.py); at one speed: even, up to the
    # spread of brokerage's weighted random draws
    assert abs(shares["GRID"] - shares["CLOUD"]) <= 4, shares


def test_sites_not_sharing_cores_keep_splitting_by_their_speeds(store):
    """The control: the same measurements on sites outside a group still weigh."""
    measure(store, "OWN", 1.0, n=3)
    measure(store, "GRID", 4.0, n=3)  # a member, but the only one measured: its own speed
    with store.tx() as conn:
        stats_rates = {s.name: s.slot_rate for s in site_rows.loads_(conn)}
    assert stats_rates["OWN"] == pytest.approx(10_000)
    shares = _shares(store, "OWN,GRID")
    assert shares["OWN"] > shares["GRID"] + 3, shares
