"""The monitor's task page: the scouting result, the merged histograms drawn on the
server, and the network links of the task's sites, from a store filled through the real
verbs (scouts created, taken and reported by a pilot, the rest sized by the model's
``size_from_scouts`` and added as the analysis service adds it, links declared).

Kind tested: a task-page section that shows something else than the task's own (another
site's links, a scout's wrong events, a sizing not the one kept, a drawing of nothing),
or that costs a drawing on every refresh of a live page.
"""

from __future__ import annotations

import pickle
import time

import hist
import pytest
from fastapi.testclient import TestClient
from test_monitor_api import run

from panda_lab.model import TaskState
from panda_lab.model.splitter import size_from_scouts
from panda_lab.server.app import Server, create_app
from panda_lab.server.config import ServerConfig

GRID, HPC = "LOCAL-GRID", "LOCAL-HPC"


def chunk(start: int, stop: int) -> list[dict]:
    return [{"file_index": 0, "path": "root://eos.example//f0.root", "tree": "Events",
             "start": start, "stop": stop}]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    server = Server(ServerConfig(home=tmp_path_factory.mktemp("task-page"), provision=False))
    store = server.store
    store.declare_links([{"endpoint": "root://eos.example", "site": GRID, "mbps": 80.0,
                          "latency_ms": 12.0},
                         {"endpoint": "root://eos.example", "site": HPC, "mbps": 5.0}])
    ana, _, _ = store.create_task("ana", [{"payload": b"x"}] * 2, owner="alice", site=GRID,
                                  options={"kind": "analysis"}, state=TaskState.SCOUTING,
                                  job_chunks=[chunk(0, 1000), chunk(1000, 3000)],
                                  open_=True)
    run(store, GRID, ["finished", "finished"])
    sizing = size_from_scouts([{"events": 1000, "seconds": 2.0, "rss_mb": 150.0, "site": GRID},
                               {"events": 2000, "seconds": 5.0, "rss_mb": 120.0,
                                "site": GRID}], target_job_seconds=60)
    store.add_jobs(ana, [{"payload": b"x"}], job_chunks=[chunk(3000, 10000)],
                   advance=(TaskState.SCOUTING, TaskState.RUNNING),
                   options={"scouting": sizing.as_dict()})
    h = hist.Hist.new.Reg(30, 60, 120, name="mass", label="m [GeV]").Double()
    h.fill([91.0] * 50 + [70.0] * 5)
    store.save_accumulator(ana, pickle.dumps({"dimuon": {"mass": h}, "n": 3}), {0, 1}, 3000)
    plain, _, _ = store.create_task("plain", [{"payload": b"x"}], owner="alice", site=HPC)
    app = create_app(server)
    with TestClient(app) as c:
        c.headers["Authorization"] = f"Bearer {server.user_token}"
        yield c, {"ana": ana, "plain": plain, "sizing": sizing.as_dict()}
    server.close()


def test_the_scouting_result_and_the_size_it_gave(page):
    client, ids = page
    t = client.get(f"/monitor/api/tasks/{ids['ana']}").json()
    scouts = t["scouting"]["scouts"]
    assert [(s["job_index"], s["events"], s["site"], s["state"]) for s in scouts] == \
        [(0, 1000, GRID, "finished"), (1, 2000, GRID, "finished")]   # not the sized job
    for s in scouts:
        assert s["wall_s"] > 1.0 and s["events_per_s"] == pytest.approx(s["events"] / s["wall_s"])
    assert t["scouting"]["sizing"] == ids["sizing"]
    assert t["scouting"]["sizing"]["per_site"] == {GRID: 450.0}   # median of 500 and 400
    assert t["scouting"]["sizing"]["events_per_job"] == 450 * 60
    plain = client.get(f"/monitor/api/tasks/{ids['plain']}").json()
    assert plain["scouting"] == {"scouts": [], "sizing": None}


def test_the_links_are_those_of_the_tasks_sites(page):
    client, ids = page
    links = client.get(f"/monitor/api/tasks/{ids['ana']}").json()["links"]
    assert list(links) == [GRID]                       # HPC's link is not this task's
    (link,) = links[GRID]
    assert link["endpoint"] == "root://eos.example" and link["mbps"] == 80.0
    assert link["latency_ms"] == 12.0 and link["source"] == "declared"
    # the other task's job went to HPC: its page shows HPC's link, and only that one
    plain = client.get(f"/monitor/api/tasks/{ids['plain']}").json()["links"]
    assert list(plain) == [HPC] and [lk["mbps"] for lk in plain[HPC]] == [5.0]


def test_the_merged_histograms_are_drawn_once_per_merged_state(page):
    client, ids = page
    plots = client.app.state.monitor_plots
    drawn = []
    real = plots._draw

    def counting(*args):
        drawn.append(args)
        return real(*args)

    plots._draw = counting
    plots._kept.clear()                                # drawn by an earlier test's GET
    try:
        t0 = time.monotonic()
        first = client.get(f"/monitor/api/tasks/{ids['ana']}").json()["histograms"]
        cold = time.monotonic() - t0
        again = client.get(f"/monitor/api/tasks/{ids['ana']}").json()["histograms"]
    finally:
        del plots._draw
    assert len(drawn) == 1 and again == first, "a refresh drew it again"
    (h,) = first                                       # "n", an int, is not a histogram
    assert h["name"] == "dimuon.mass" and h["events"] == 3000 and h["final"] is False
    svg = h["svg"]
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "</svg>" in svg
    assert "m [GeV]" in svg and "partial" in svg and "dimuon.mass" in svg
    assert svg.count("<path") >= 30 or svg.count("<use") >= 30   # bins and error bars
    assert client.get(f"/monitor/api/tasks/{ids['plain']}").json()["histograms"] == []
    print(f"first drawing {cold * 1000:.0f} ms")
