"""The panel's jupyter_server extension, through a real Jupyter server and a real
panda-lab server: Jupyter's auth on every endpoint, the answers, the server down."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from harness import JupyterServer, ServerProcess, wait_for

from panda_lab.jupyter.server_extension import ROUTES
from panda_lab.model import vocabulary


def flaky(i):
    if i == 2:
        raise ValueError("two is bad")
    return i


def nap(t):
    time.sleep(t)
    return t


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    work = tmp_path_factory.mktemp("work")
    panda = ServerProcess(home).start()
    jupyter = JupyterServer(home, work, app="jupyter_server").start()
    yield panda, jupyter
    jupyter.stop()
    panda.stop()


def client(jupyter, token: bool = True) -> httpx.Client:
    headers = {"Authorization": f"token {jupyter.token}"} if token else {}
    return httpx.Client(base_url=f"{jupyter.url}/panda-lab", headers=headers, timeout=30)


def concrete(pattern: str) -> str:
    """A URL for a route pattern: ids become 1, a choice its first option."""
    path = pattern.replace(r"(\d+)", "1")
    return re.sub(r"\(([a-z]+)\|[^)]*\)", r"\1", path)


def test_every_endpoint_refuses_a_request_without_jupyter_auth(setup):
    """Each method each route serves: 403 without Jupyter's token, and something else
    with it (so the 403 is the missing auth, not the route)."""
    import tornado.web

    _, jupyter = setup
    served = [(m, pattern) for pattern, handler in ROUTES for m in ("GET", "POST")
              if getattr(handler, m.lower()) is not getattr(tornado.web.RequestHandler,
                                                             m.lower())]
    assert len(served) == len(ROUTES) >= 9
    with client(jupyter, token=False) as anonymous, client(jupyter) as user:
        for method, pattern in served:
            if pattern == "/events":
                continue  # a stream: checked below without reading it to the end
            r = anonymous.request(method, concrete(pattern))
            assert r.status_code == 403, (method, pattern, r.status_code, r.text[:200])
            r = user.request(method, concrete(pattern))
            assert r.status_code not in (403, 405), (method, pattern, r.status_code)
        with anonymous.stream("GET", "/events") as r:
            assert r.status_code == 403


def test_the_panel_api_answers_from_the_panda_server(setup):
    panda, jupyter = setup
    lab = panda.lab()
    task = lab.submit(flaky, [(i,) for i in range(4)], name="ext-task", retries=0)
    lab.wait(task, timeout=30)
    with client(jupyter) as c:
        status = c.get("/status").json()
        assert status["running"] and status["url"] == panda.info["url"]
        tasks = c.get("/tasks").json()
        mine = next(t for t in tasks if t["id"] == task)
        assert mine["name"] == "ext-task" and mine["sites"]
        assert set(mine["sites"]) <= {"LOCAL-GRID", "LOCAL-CLOUD", "LOCAL-HPC"}
        detail = c.get(f"/tasks/{task}").json()
        assert detail["state"] == "finished"
        assert sum(sum(s.values()) for s in detail["jobs_by_site"].values()) == 4
        assert sorted(j["job_index"] for j in detail["jobs"]) == [0, 1, 2, 3]
        # every attempt, for the task stream: where and when it ran
        assert len(detail["attempts"]) == 4 and detail["report"] is None
        assert all(a["pilot_id"] and a["started_at"] <= a["ended_at"]
                   for a in detail["attempts"])
        assert {j["attempts"] for j in detail["jobs"]} == {1}
        # what each attempt's payload used, and each pilot's memory and CPU in words
        assert all(a["peak_rss_mb"] > 5 and a["cpu_s"] is not None
                   for a in detail["attempts"])
        assert {p["id"] for p in detail["pilots"]} == {a["pilot_id"] for a in detail["attempts"]}
        assert all(p["rss_mb"] and "jobs here: peak " in p["usage"] for p in detail["pilots"])
        (group,) = detail["errors"]
        assert group["count"] == 1 and "two is bad" in group["message"]
        job = c.get(f"/jobs/{group['example_job']}").json()
        assert job["state"] == "failed" and "two is bad" in job["error_traceback"]
        # where brokerage sent it, or, taken by a pilot of a site sharing the cores
        # (the embedded default's three sites), moved from there to where it ran
        info = job["broker_info"]
        moved = info.get("moved")
        assert ((moved["from"], moved["to"]) == (info["picked"], job["site"]) if moved
                else info["picked"] == job["site"])
        assert job["usage"].startswith("peak memory ") and ", CPU " in job["usage"]
        # the model's sentence for the decision, where it words one
        from panda_lab.jupyter.server_extension import explain_brokerage

        assert job["explanation"] == (explain_brokerage(job["broker_info"])
                                      if explain_brokerage is not None else None)
        sites = c.get("/sites").json()
        assert {s["name"] for s in sites} == {"LOCAL-GRID", "LOCAL-CLOUD", "LOCAL-HPC"}
        assert c.get("/states").json() == vocabulary()  # the panel's state sets
        counts = c.get("/counts").json()         # the server's SQL, passed through
        assert counts == panda.lab().api.get("/api/counts")
        assert counts["failed"] >= 1 and counts["failed_tasks"] >= 1
        assert {"running", "prefetched", "waiting"} <= set(counts)
        assert c.post(f"/tasks/{task}/acknowledge").status_code == 200
        after = c.get("/counts").json()
        assert (after["failed"], after["failed_tasks"]) == (
            counts["failed"] - 1, counts["failed_tasks"] - 1)
        assert c.get("/tasks/99999").status_code == 404
        assert c.get("/tasks", params={"limit": "many"}).status_code == 400


def bins_by_run(events):
    """10 bins for the first file, 20 for the second: results that cannot be merged."""
    import hist
    import numpy as np

    bins = 10 if int(events.run[0]) == 1000 else 20
    return {"mass": hist.Hist(hist.axis.Regular(bins, 0, 150)).fill(np.asarray(events.nMuon))}


def test_the_panel_lists_a_merge_error_first(setup, tmp_path):
    """The panel shows a task's ``errors``: results that cannot be merged come first there."""
    from panda_lab.analysis.sample import make_sample

    panda, jupyter = setup
    lab = panda.lab()
    files = make_sample(tmp_path, files=2, events=1_000, basket_events=500)
    lab.datasets.register("ext-merge", [str(f) for f in files], replace=True)
    task = lab.analyze(bins_by_run, "ext-merge", events_per_job=1_000, name="ext-merge")
    lab.wait(task.id, timeout=60)
    error = lab.task_info(task.id)["options"]["merge_error"]
    with client(jupyter) as c:
        detail = c.get(f"/tasks/{task.id}").json()
        assert detail["state"] == "failed"
        group = detail["errors"][0]
        assert (group["category"], group["count"]) == ("merge", 1)
        assert group["message"] == error["message"] and "histograms differ" in group["message"]
        job = c.get(f"/jobs/{group['example_job']}").json()
        assert job["job_index"] == error["job_index"] and job["state"] == "finished"


def test_kill_and_retry_go_through_to_the_server(setup):
    panda, jupyter = setup
    lab = panda.lab()
    task = lab.submit(nap, [(5.0,)] * 4, name="ext-kill", retries=0)
    with client(jupyter) as c:
        r = c.post(f"/tasks/{task}/kill")
        assert r.status_code == 200 and r.json()["task"] == task
        wait_for(lambda: lab.task_info(task)["state"] == "aborted", 10, what="aborted")
        r = c.post(f"/tasks/{task}/retry")            # an aborted task stays aborted
        assert r.status_code == 409


def test_the_event_stream_is_passed_through(setup):
    panda, jupyter = setup
    lab = panda.lab()
    seen = []
    with client(jupyter) as c, c.stream("GET", "/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        task = None
        for line in r.iter_lines():
            if line.startswith("data:"):
                seen.append(line)
                if task is None:                      # the stream is open: make news
                    task = lab.submit(nap, [(0.0,)], name="ext-events")
                elif f'"task":{task}' in line.replace(" ", ""):
                    break
    assert seen[0].startswith('data: {"hello":true')


def test_with_the_server_down_the_panel_is_told_and_can_start_it(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    jupyter = JupyterServer(home, work, app="jupyter_server").start()
    try:
        with client(jupyter) as c:
            r = c.get("/status")
            assert r.status_code == 503
            assert r.json()["running"] is False and "no panda-lab server" in r.json()["message"]
            assert c.get("/tasks").status_code == 503
            r = c.post("/start", timeout=90)
            assert r.status_code == 200 and r.json()["running"]
            status = c.get("/status").json()
            assert status["running"] and status["database"].startswith("sqlite")
    finally:
        jupyter.stop()
        from panda_lab.cli.main import main as cli

        cli(["--home", str(home), "server", "stop"])
