"""The web monitor's JSON views, on SQLite and on PostgreSQL, against a store filled
through the real verbs (pilots acquire and report: successes, failures, a retry, two
sites).

Kind tested: a listing parameter that is accepted and ignored, or computed in Python
where it must be in SQL.  Members: every filter (owner/user, state, site, name glob,
time window, task, category, attempt) changes what the listing holds; sorting and
paging give disjoint, ordered pages whose total is the filter's count; facets count the
whole filter, not the page; a bad value of each parameter is a 422 naming it.
"""

from __future__ import annotations

import time
from unittest import mock

import pytest
from fastapi.testclient import TestClient

from panda_lab.server.app import Server, create_app
from panda_lab.server.config import ServerConfig

GRID, CLOUD = "LOCAL-GRID", "LOCAL-CLOUD"


def run(store, site: str, outcomes: list[str]) -> None:
    """A pilot at ``site`` takes jobs and reports ``outcomes`` for them, in order."""
    pilot = store.register_pilot(site, "host-" + site, 4000, len(outcomes), {})
    # the jobs were handed out and started 2 s ago (a start is never before its job's
    # dispatch, nor an end after its report: tests/store/test_event_times.py)
    began = time.time() - 2.0
    with mock.patch("panda_lab.store.workflow.now", lambda: began):
        got, _ = store.acquire(pilot, site, len(outcomes))
    assert len(got) == len(outcomes)
    updates = []
    for job, outcome in zip(got, outcomes, strict=True):
        store.apply_updates(pilot, [{"id": job["id"], "attempt": job["attempt"],
                                     "state": "running", "started_at": began}])
        u = {"id": job["id"], "attempt": job["attempt"], "state": outcome,
             "stdout": f"out of job {job['index']}\n"}
        if outcome == "finished":  # measured by the pilot (a lost node measures nothing)
            u.update(result=b"r", peak_rss_mb=150.0, cpu_s=1.5)
        else:
            u["error"] = {"category": "system", "message": "worker node lost",
                          "traceback": "Traceback: node lost"}
        updates.append(u)
    store.apply_updates(pilot, updates, usage={"rss_mb": 300.0, "cpu_s": 4.0, "cpu_pct": 50.0})


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def client(request, tmp_path_factory):
    home = tmp_path_factory.mktemp("monitor-api")
    db = None if request.param == "sqlite" else \
        request.getfixturevalue("postgres").new_database()
    server = Server(ServerConfig(home=home, db_url=db, provision=False))
    store = server.store
    alpha, _, _ = store.create_task("alpha_1", [{"payload": b"x"}] * 4, owner="alice",
                                    site=GRID)
    run(store, GRID, ["finished", "finished", "failed", "finished"])  # the failure retried
    run(store, GRID, ["finished"])
    beta, _, _ = store.create_task("beta-2", [{"payload": b"x"}] * 2, owner="bob",
                                   site=CLOUD)
    run(store, CLOUD, ["finished", "failed"])
    store.create_task("gamma%3", [{"payload": b"x"}], owner="alice", site=CLOUD)
    tokens = {name: store.add_user(name, "user") for name in ("alice", "bob")}
    app = create_app(server)
    with TestClient(app) as c:
        c.headers["Authorization"] = f"Bearer {server.user_token}"
        c.ids = {"alpha": alpha, "beta": beta}
        c.tokens = tokens
        yield c
    server.close()


def get(client, path: str, **params) -> dict:
    r = client.get(f"/monitor/api/{path}", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_tasks_listing_aggregates_and_filters(client):
    out = get(client, "tasks")
    assert out["total"] == 3 and [t["name"] for t in out["tasks"]] == \
        ["gamma%3", "beta-2", "alpha_1"]
    alpha = out["tasks"][2]
    assert alpha["owner"] == "alice" and alpha["state"] == "done"
    assert alpha["done"] == 4 and alpha["progress"] == 1.0 and alpha["failures"] == 1
    assert alpha["sites"] == [GRID] and alpha["attempts"] == {"finished": 4, "failed": 1}
    assert alpha["duration"] >= 0 and alpha["age"] >= 0
    assert out["facets"]["state"] == {"done": 1, "running": 1, "ready": 1}
    assert [t["name"] for t in get(client, "tasks", owner="alice")["tasks"]] == \
        ["gamma%3", "alpha_1"]
    assert [t["name"] for t in get(client, "tasks", user="bob")["tasks"]] == ["beta-2"]
    assert [t["name"] for t in get(client, "tasks", site=CLOUD)["tasks"]] == \
        ["gamma%3", "beta-2"]                         # gamma's job is brokered there
    assert [t["name"] for t in get(client, "tasks", state="done")["tasks"]] == ["alpha_1"]
    # wildcards are "*"; "%" and "_" are literal characters of a name
    assert [t["name"] for t in get(client, "tasks", name="*a_*")["tasks"]] == ["alpha_1"]
    assert [t["name"] for t in get(client, "tasks", name="*%*")["tasks"]] == ["gamma%3"]
    assert get(client, "tasks", name="a%")["total"] == 0
    assert get(client, "tasks", hours=1)["total"] == 3


def test_tasks_sort_and_pages(client):
    names = [t["name"] for t in get(client, "tasks", sort="name")["tasks"]]
    assert names == sorted(names)
    assert [t["name"] for t in get(client, "tasks", sort="-name")["tasks"]] == names[::-1]
    seen = []
    for page in (1, 2, 3):
        out = get(client, "tasks", sort="-id", per_page=1, page=page)
        assert out["total"] == 3 and out["pages"] == 3 and len(out["tasks"]) == 1
        seen += [t["id"] for t in out["tasks"]]
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == 3
    assert get(client, "tasks", sort="-id", per_page=1, page=4)["tasks"] == []


def test_jobs_listing_has_facets_over_the_whole_filter(client):
    out = get(client, "jobs", per_page=2, sort="id")
    assert out["total"] == 9 and len(out["jobs"]) == 2
    assert out["facets"]["state"] == {"finished": 5, "failed": 2, "activated": 2}
    assert out["facets"]["attempt"] == {"1": 7, "2": 2}
    assert out["facets"]["error_category"]["system"] == 2
    assert out["facets"]["site"][GRID] == 5
    failed = get(client, "jobs", state="failed")["jobs"]
    assert len(failed) == 2 and {j["error_message"] for j in failed} == {"worker node lost"}
    assert get(client, "jobs", attempt=2)["total"] == 2
    assert get(client, "jobs", task=client.ids["beta"], category="system")["total"] == 1
    assert get(client, "jobs", owner="bob", site=CLOUD)["total"] == 3
    assert get(client, "jobs", name="alpha*", state="finished,failed")["total"] == 5


def test_task_view_distributions_progress_and_brokerage(client):
    t = get(client, f"tasks/{client.ids['alpha']}")
    assert t["jobs_by_site"] == {GRID: {"finished": 4}}
    wall = t["distributions"]["walltime_s"]
    assert len(wall["edges"]) == 21 and sum(wall["groups"][GRID]["counts"]) == 4
    assert wall["groups"][GRID]["n"] == 4 and wall["groups"][GRID]["min"] > 1.0
    assert t["distributions"]["events_per_s"] == {"edges": [], "groups": {}}
    # each finished attempt's measured peak memory, per site
    memory = t["distributions"]["memory_mb"]["groups"][GRID]
    assert memory["n"] == 4 and memory["min"] == memory["max"] == 150.0
    assert t["progress"]["done"][-1] == 4 and t["progress"]["done"] == \
        sorted(t["progress"]["done"])
    assert t["brokerage"]["sampled"] == 5 and t["brokerage"]["picked"] == {GRID: 5}
    assert get(client, "tasks/alpha_1")["id"] == client.ids["alpha"]


def test_job_view_has_attempts_pilot_and_output(client):
    failed = get(client, "jobs", state="failed", task=client.ids["alpha"])["jobs"][0]
    job = get(client, f"jobs/{failed['id']}")
    assert job["error_traceback"] == "Traceback: node lost"
    assert job["stdout_tail"].startswith("out of job")
    assert [a["attempt"] for a in job["attempt_rows"]] == [1, 2]
    assert [a["state"] for a in job["attempt_rows"]] == ["failed", "finished"]
    assert job["pilot"]["host"] == "host-" + GRID and job["task"]["name"] == "alpha_1"
    assert [h["state"] for h in job["history"]][-1] == "failed"
    assert job["broker_info"]["picked"] == GRID
    # what it used, in words: a lost node measured nothing, which is not 0 MB
    assert job["usage"] == "memory and CPU not measured" and job["peak_rss_mb"] is None
    assert job["pilot"]["usage"] == "300 MB, CPU 50 %, 4.00 s CPU in all"
    retried = get(client, f"jobs/{job['attempt_rows'][1]['id']}")
    assert retried["usage"].startswith("peak memory 150 MB, CPU 1.50 s (")
    assert client.get("/monitor/api/jobs/999999").status_code == 404


def test_errors_grouped_by_message_site_task_and_time(client):
    out = get(client, "errors")
    assert out["total"] == 2
    assert out["by_message"] == [{"category": "system", "message": "worker node lost",
                                  "n": 2, "sites": 2, "tasks": 2,
                                  "last": out["by_message"][0]["last"]}]
    assert out["by_site"] == {GRID: {"system": 1}, CLOUD: {"system": 1}}
    assert {t["name"]: t["n"] for t in out["by_task"]} == {"alpha_1": 1, "beta-2": 1}
    assert sum(out["over_time"]["groups"]["system"]["counts"]) == 2
    assert get(client, "errors", site=CLOUD)["total"] == 1


def test_a_users_errors_and_facets_are_their_own(client):
    """The grouped views count a user's own failures only (the listings' rows are
    checked in test_isolation): every group of the errors view and every facet."""
    for me, task, site, n_jobs in (("alice", "alpha_1", GRID, 6), ("bob", "beta-2", CLOUD, 3)):
        h = {"Authorization": f"Bearer {client.tokens[me]}"}
        out = client.get("/monitor/api/errors", headers=h).json()
        assert out["total"] == 1 and out["by_site"] == {site: {"system": 1}}, (me, out)
        assert [t["name"] for t in out["by_task"]] == [task]
        assert out["by_message"][0]["n"] == 1 and out["by_message"][0]["tasks"] == 1
        assert sum(out["over_time"]["groups"]["system"]["counts"]) == 1
        jobs = client.get("/monitor/api/jobs", headers=h).json()
        assert jobs["total"] == n_jobs and sum(jobs["facets"]["state"].values()) == n_jobs
        assert jobs["facets"]["error_category"]["system"] == 1
        tasks = client.get("/monitor/api/tasks", headers=h).json()
        assert {t["owner"] for t in tasks["tasks"]} == {me}


def test_sites_pilots_and_failure_rate(client):
    sites = {s["name"]: s for s in get(client, "sites")["sites"]}
    assert sites[GRID]["failure_rate"] == pytest.approx(1 / 5)
    assert sites[CLOUD]["failure_rate"] == pytest.approx(1 / 2)
    assert sites["LOCAL-HPC"]["failure_rate"] is None
    assert sites[GRID]["n_pilots"] == {"running": 2}
    assert all(p["heartbeat_age"] >= 0 for p in sites[GRID]["pilots"])
    assert sites[CLOUD]["queued"] == 2 and sites[GRID]["kind"] == "grid"


def test_pages_answer_json_when_asked(client):
    a = client.get("/monitor/tasks?json&owner=bob").json()
    b = client.get("/monitor/tasks", params={"owner": "bob"},
                   headers={"Accept": "application/json"}).json()
    assert [t["name"] for t in a["tasks"]] == [t["name"] for t in b["tasks"]] == ["beta-2"]
    html = client.get("/monitor/tasks", headers={"Accept": "text/html"})
    assert html.status_code == 200 and "<html" in html.text


BAD = [
    ("tasks", {"state": "nonsense"}, "state"),
    ("tasks", {"sort": "colour"}, "sort"),
    ("tasks", {"days": "-1"}, "days"),
    ("tasks", {"days": "1", "hours": "1"}, "hours"),
    ("tasks", {"page": "0"}, "page"),
    ("tasks", {"per_page": "100000"}, "per_page"),
    ("tasks", {"owner": "a", "user": "b"}, "user"),
    ("tasks", {"name": "a\x00b"}, "name"),
    ("jobs", {"state": "done"}, "state"),          # a task state, not a job state
    ("jobs", {"category": "boredom"}, "category"),
    ("jobs", {"attempt": "x"}, "attempt"),
    ("jobs", {"task": "0"}, "task"),
    ("jobs", {"sort": "-"}, "sort"),
    ("errors", {"hours": "nan"}, "hours"),
    ("sites", {"days": "x"}, "days"),
]


def test_a_bad_parameter_is_a_422_naming_it(client):
    for path, params, param in BAD:
        for url, extra in ((f"/monitor/api/{path}", {}), (f"/monitor/{path}", {"json": ""})):
            r = client.get(url, params={**params, **extra})
            assert r.status_code == 422, (url, params, r.text)
            assert param in [d["loc"][-1] for d in r.json()["detail"]], r.json()
        # asked for as a page, the URL is still the page, which shows the view's 422
        page = client.get(f"/monitor/{path}", params=params, headers={"Accept": "text/html"})
        assert page.status_code == 200 and 'id="login"' in page.text, (path, params)
