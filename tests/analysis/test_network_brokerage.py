"""Real transfers end to end: brokerage learns the network from what jobs read and moves
work to the fast path.

Two storage endpoints are served over HTTP on 127.0.0.1 by this test, one throttled to a
small fraction of the other's rate; two sites each read the replica at their own
endpoint.  A first small task measures both links; then the same workload runs with the
network term weighed (``network``), with sites taken in turn (``round-robin``) and with
the network term computed but not weighed (``passive``, PanDA's default).  The learned
throughput must send fewer jobs to the slow path, and the task must finish sooner with
``network`` than with the other two.  Brokerage's picks are seeded (``--broker-seed``),
so a run is reproducible; which seed is not tuned (it is 1).
"""

from __future__ import annotations

import time

import hist
import pytest
from harness import RangeFileServer, ServerProcess

from panda_lab.analysis.dimuon import MASS_AXIS, dimuon_mass
from panda_lab.analysis.sample import make_sample

#: Bytes per second the slow endpoint sends, over all its requests together.
SLOW_RATE = 100_000
FILES, EVENTS, BASKET = 4, 7_000, 3_500      # 8 jobs of 3,500 events (~200 kB of Muon)


def process(events):
    return {"mass": hist.Hist(MASS_AXIS).fill(dimuon_mass(events)), "n": len(events)}


SITES = """
[endpoints.disk-fast]
description = "unthrottled"
[endpoints.disk-slow]
description = "throttled"

[sites.FAST]
kind = "grid"
provisioner = "local"
pilots = 1
slots = 2
endpoint = "disk-fast"

[sites.SLOW]
kind = "grid"
provisioner = "local"
pilots = 1
slots = 1
endpoint = "disk-slow"
"""


@pytest.mark.slow
def test_learned_throughput_moves_jobs_to_the_fast_path(tmp_path):
    data = make_sample(tmp_path / "data", files=FILES, events=EVENTS, basket_events=BASKET,
                       compression=None)
    fast = RangeFileServer(data[0].parent)
    slow = RangeFileServer(data[0].parent, rate=SLOW_RATE)
    (tmp_path / "sites.toml").write_text(SITES)
    home = tmp_path / "home"
    home.mkdir()
    server = ServerProcess(home, extra=["--sites", str(tmp_path / "sites.toml"),
                                        "--broker-seed", "1"]).start()
    lab = server.lab()
    try:
        def dataset(name: str, files: list) -> str:
            # a distinct URL per dataset: no reader's cache serves another task's reads
            urls = {web: [f"{web.url}/{p.name}?{name}" for p in files] for web in (fast, slow)}
            lab.datasets.register(name, urls[fast], endpoint="disk-fast",
                                  replicas={"disk-slow": urls[slow]})
            return name

        def run(policy: str, files: list) -> tuple[float, dict]:
            ds = dataset(f"{policy}-{len(files)}", files)
            t0 = time.monotonic()
            task = lab.analyze(process, ds, name=ds, events_per_job=BASKET,
                               columns=["nMuon", "Muon"], policy=policy)
            result = task.result(timeout=120)
            took = time.monotonic() - t0
            assert result["n"] == EVENTS * len(files)
            sites = [j["site"] for j in lab.jobs(task.id)]
            return took, {s: sites.count(s) for s in ("FAST", "SLOW")}

        # the first jobs: one at each site measures its link
        _, first = run("round-robin", data[:1])
        assert first == {"FAST": 1, "SLOW": 1}
        links = lab.links()
        learned = links.loc[[("disk-fast", "FAST"), ("disk-slow", "SLOW")]]
        assert (learned["source"] == "learned").all() and (learned["observations"] >= 1).all()
        assert learned.loc[("disk-slow", "SLOW"), "mbps"] < SLOW_RATE / 1e6 * 1.2
        assert learned.loc[("disk-fast", "FAST"), "mbps"] > \
            5 * learned.loc[("disk-slow", "SLOW"), "mbps"]

        times, placed = {}, {}
        for policy in ("network", "round-robin", "passive"):
            times[policy], placed[policy] = run(policy, data)
        print("\nmakespan (s):", {p: round(t, 2) for p, t in times.items()},
              "jobs per site:", placed,
              "learned MB/s:", lab.links()["mbps"].round(3).to_dict())
        assert placed["network"]["SLOW"] < placed["round-robin"]["SLOW"]
        assert placed["network"]["SLOW"] < placed["passive"]["SLOW"]
        assert times["network"] < times["round-robin"]
        assert times["network"] < times["passive"]
        # each decision says why, with the links it weighed
        rows = lab.task(f"network-{FILES}").brokerage()
        slow_rows = rows[rows["site"] == "SLOW"]
        assert (slow_rows["read_s"] > 0).all() and (slow_rows["network"] < 1).all()
    finally:
        server.stop()
        fast.stop()
        slow.stop()
