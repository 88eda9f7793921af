"""The simulator and the live server make the same brokerage decisions for the same state
and seed.

Both call :func:`panda_lab.model.brokerage.choose`, but each builds what it passes: the
server reads its site loads (queued jobs, readers per link) and links from the database
in the placing transaction and records every candidate; the simulator keeps its loads in
memory, carried from one placement to the next, and records nothing.  Kind tested: the
two drifting apart.  Members: the site loads after each placement (a count the database
does not give back as the model counted it, e.g. the readers of a link), the declared
links, the seeded draws (a record made with or without the candidates), a request
restricted to some sites.
"""

from __future__ import annotations

from panda_lab.model.brokerage import SiteLoad
from panda_lab.sim import parse
from panda_lab.sim.engine import Job, Simulation, TaskRun
from panda_lab.store import Store
from panda_lab.store.base import DefaultBroker
from panda_lab.store.rows import sites as site_rows
from panda_lab.store.rows.datasets import input_request

SEED = 11
MB = 1_000_000
#: name, slots, endpoint
SHAPE = [("A", 4, "disk-a"), ("B", 2, "disk-b"), ("C", 3, "")]
SITES = [{"name": n, "kind": "grid", "provisioner": "local", "pilots": 1, "slots": k,
          **({"endpoint": e} if e else {})} for n, k, e in SHAPE]
#: endpoint, site, MB/s, ms: the links sites.toml would declare
LINKS = [("disk-a", "B", 5.0, 40.0), ("disk-a", "C", 80.0, 10.0), ("disk-b", "A", 20.0, 20.0)]


def chunks(task: int, n: int, endpoints: tuple[str, ...], mb: int) -> list[list[dict]]:
    """``n`` jobs of one chunk each, of ``mb`` MB, with replicas at ``endpoints``."""
    return [[{"file_index": i, "path": f"t{task}/f{i}.root", "tree": "Events", "start": 0,
              "stop": 10_000 * (1 + i % 3), "bytes": mb * MB * (1 + i % 2),
              "replicas": [{"endpoint": e, "url": f"http://{e}/t{task}/f{i}.root"}
                           for e in endpoints]}] for i in range(n)]


#: (chunks of each job, the sites the task accepts)
SEQUENCE = [(chunks(0, 8, ("disk-a",), 200), "ANY"),
            (chunks(1, 6, ("disk-b",), 50), "ANY"),
            (chunks(2, 5, ("disk-a", "disk-b"), 400), "ANY"),
            (chunks(3, 4, ("disk-a",), 100), ["B", "C"]),
            (chunks(4, 9, (), 0), "ANY")]


def simulation() -> Simulation:
    scenario = parse({
        "seed": SEED, "policies": ["network"],
        "sites": {n: {"slots": k, "speed": 1e4, **({"endpoint": e} if e else {})}
                  for n, k, e in SHAPE},
        "datasets": {"d": {"files": 1, "file_mb": 1, "events_per_file": 10,
                           "replicas": {"disk-a": 1.0}}},
        "links": [{"endpoint": e, "site": s, "mbps": m, "latency_ms": ms, "declared": True}
                  for e, s, m, ms in LINKS],
        "tasks": [{"dataset": "d", "events_per_job": 10}]})
    return Simulation(scenario, "network")


def state(loads: list[SiteLoad]) -> list[tuple]:
    """What brokerage weighs of each site (its kind and reason aside)."""
    return [(s.name, s.state, s.capacity, s.queued, s.running, s.endpoint, s.slot_rate,
             s.failure_rate, s.cached, s.mean_job_s, {k: v for k, v in s.readers.items() if v},
             s.cache_bytes) for s in loads]


def test_the_simulator_and_the_server_pick_the_same_sites(db_url, tmp_path):
    live = Store(db_url, tmp_path / "results", broker=DefaultBroker(SEED))
    try:
        live.upsert_sites(SITES)
        live.declare_links([{"endpoint": e, "site": s, "mbps": m, "latency_ms": ms}
                            for e, s, m, ms in LINKS])
        sim = simulation()
        with live.tx() as conn:
            assert state(site_rows.loads_(conn)) == state(sim.loads)
        for k, (job_chunks, sites) in enumerate(SEQUENCE):
            _, ids, _ = live.create_task(f"t{k}", [{"payload": b"x"}] * len(job_chunks),
                                            site=sites, job_chunks=job_chunks)
            served = [live.get_job(i) for i in ids]
            # the simulator's own placement path, on the requests the server weighed
            run = TaskRun(None, [], {})
            jobs = [Job(run, i, cs, 0, {}, [], request=input_request(
                        cs, ("ANY",) if sites == "ANY" else tuple(sites)))
                    for i, cs in enumerate(job_chunks)]
            sim._broker(jobs)
            assert [j.site for j in jobs] == [j["site"] for j in served], f"task {k}"
            assert [j.read_from for j in jobs] == [j["read_from"] for j in served]
            assert len({j.site for j in jobs}) > 1 or k == 3, "a sequence that decides"
            with live.tx() as conn:  # the loads each goes on from are the same
                assert state(site_rows.loads_(conn)) == state(sim.loads), f"after task {k}"
    finally:
        live.close()
