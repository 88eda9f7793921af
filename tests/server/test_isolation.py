"""Isolation between users of one server, through every route of the API.

Kind: every route that reads or acts on owned work (a task, its jobs, results, events,
a dataset) answers another user's work as it answers missing work (404), lets an admin
through, and keeps a read-only identity to reading (403 for anything else); every pilot
route keeps a site's pilot token to that site (403).  The routes are enumerated from the
app, so a route added without a rule here fails :func:`test_every_route_has_a_rule`.
"""

from __future__ import annotations

import base64
import re

import pytest
from fastapi.testclient import TestClient
from test_auth import _routes

from panda_lab.server.app import Server, create_app
from panda_lab.server.config import ServerConfig

B64 = base64.b64encode(b"payload").decode()

# What each client route touches: "any" (not owned: sites, states...), "task", "job",
# "dataset", "list" (filtered to one's own), "new" (owned by whoever makes it), "kill"
# (job ids in the body), "events" (checked here with ?tasks=, the stream in
# test_identities_live).  "/api/counts" (the status bar's) and "/api/sites" count the
# caller's own jobs ("list"): test_counts_and_sites_count_ones_own_jobs.
CLIENT = {
    ("GET", "/api/info"): "any", ("GET", "/api/states"): "any",
    ("GET", "/api/links"): "any", ("GET", "/api/counts"): "list",
    ("POST", "/api/tasks/{task}/acknowledge"): "task",
    ("GET", "/api/sites"): "list", ("GET", "/api/pilots"): "any",
    ("GET", "/api/openapi.json"): "any",
    ("POST", "/api/tasks"): "new", ("GET", "/api/tasks"): "list",
    ("POST", "/api/tasks/{task}/jobs"): "task", ("POST", "/api/tasks/{task}/lease"): "task",
    ("POST", "/api/tasks/{task}/close"): "task", ("GET", "/api/tasks/{task}"): "task",
    ("GET", "/api/tasks/{task}/jobs"): "task", ("GET", "/api/tasks/{task}/results"): "task",
    ("GET", "/api/tasks/{task}/failures"): "task", ("GET", "/api/tasks/{task}/wait"): "task",
    ("POST", "/api/tasks/{task}/kill"): "task", ("POST", "/api/tasks/{task}/retry"): "task",
    ("POST", "/api/tasks/{task}/cancel"): "task",
    ("GET", "/api/tasks/{task_id}/partial"): "task",
    ("GET", "/api/tasks/{task_id}/report"): "task",
    ("POST", "/api/jobs/kill"): "kill", ("GET", "/api/jobs/{job_id}"): "job",
    ("GET", "/api/jobs/{job_id}/output"): "job", ("GET", "/api/events"): "events",
    ("POST", "/api/datasets"): "new", ("GET", "/api/datasets"): "list",
    ("GET", "/api/datasets/{name}"): "dataset", ("POST", "/api/analyses"): "dataset",
    ("POST", "/api/tasks/{task}/shares"): "task", ("GET", "/api/tasks/{task}/shares"): "task",
    ("POST", "/api/tasks/{task}/shares/revoke"): "task",
}
PILOT = {"/api/pilot/register", "/api/pilot/acquire", "/api/pilot/update",
         "/api/pilot/heartbeat", "/api/pilot/end", "/api/pilot/results/{task_id}/{job_id}",
         "/api/pilot/output/{task_id}/{job_id}", "/api/pilot/tasks/{task_id}/common"}
OTHER = {("GET", "/metrics"): "metrics"}
#: The web monitor's views: each filtered by who asks (tested below).
MONITOR = "/monitor/"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A server with alice and bob (users), boss (admin), mon (read-only) and a pilot
    token of LOCAL-GRID; alice and bob each own a task and a dataset, bob's task pinned
    to LOCAL-CLOUD, whose pilot is registered with the server's own pilot token."""
    home = tmp_path_factory.mktemp("isolation-home")
    server = Server(ServerConfig(home=home, provision=False))
    tokens = {name: server.store.add_user(name, role) for name, role in
              (("alice", "user"), ("bob", "user"), ("boss", "admin"), ("mon", "read-only"))}
    tokens["grid"] = server.store.add_user("pilot@LOCAL-GRID", "pilot", "LOCAL-GRID")
    app = create_app(server)
    with TestClient(app) as client:
        def as_(who):
            return {"Authorization": f"Bearer {tokens[who]}"}

        owned = {}
        for who, site in (("alice", "LOCAL-GRID"), ("bob", "LOCAL-CLOUD")):
            r = client.post("/api/tasks", headers=as_(who), json={
                "name": f"t-{who}", "owner": "someone-else", "site": site,
                "jobs": [{"payload": B64}, {"payload": B64}]})
            assert r.status_code == 201, r.text
            task = r.json()
            r = client.post("/api/datasets", headers=as_(who),
                            json={"name": f"ds-{who}", "tree": "Events"})
            assert r.status_code == 201, r.text
            owned[who] = {"task": task["task"], "job": task["jobs"][0], "ds": f"ds-{who}"}
        pilot = {"Authorization": f"Bearer {server.pilot_token}"}
        r = client.post("/api/pilot/register", headers=pilot,
                        json={"site": "LOCAL-CLOUD", "host": "h", "pid": 1})
        owned["cloud_pilot"] = r.json()["pilot"]
        yield client, as_, owned, server
    server.close()


def _request(method, template, target, owned):
    """(path, params, json) for a request of ``template`` aimed at ``target``'s work."""
    mine = owned[target]
    path = (template.replace("{task}", str(mine["task"]))
            .replace("{task_id}", str(mine["task"]))
            .replace("{job_id}", str(mine["job"])).replace("{name}", mine["ds"]))
    params, body = {}, None
    if template.endswith("/wait"):
        params = {"timeout": 0}
    if template == "/api/events":
        params = {"tasks": str(mine["task"])}
    if template.endswith("/jobs") and method == "POST":
        body = {"jobs": [{"payload": B64}]}
    if template.endswith("/cancel"):
        body = {"indices": [1]}
    if template == "/api/jobs/kill":
        body = {"ids": [mine["job"]]}
    if template == "/api/analyses":
        body = {"name": "ana", "dataset": mine["ds"], "processor": B64}
    if template == "/api/tasks":
        body = {"name": "new", "jobs": []}
    if template == "/api/datasets" and method == "POST":
        body = {"name": f"new-{target}", "tree": "Events"}
    return path, params, body


def test_every_route_has_a_rule(world):
    client = world[0]
    for method, _, template in _routes(client.app):
        assert ((method, template) in CLIENT or template in PILOT
                or (method, template) in OTHER or template.startswith(MONITOR)), \
            f"no isolation rule for {method} {template}"


def test_every_monitor_route_answers_a_user_and_the_seers(world):
    """No monitor route is closed to a user (each view filters instead), none is open
    without a token; the views' contents are checked below."""
    client, as_, owned, _ = world
    checked = 0
    for method, _, template in _routes(client.app):
        if not template.startswith(MONITOR):
            continue
        path, _, _ = _request(method, template.replace("{name}", "monitor.js"), "bob", owned)
        assert client.request(method, path).status_code == 401, template
        for who in ("bob", "boss", "mon"):
            r = client.request(method, path, headers=as_(who))
            assert r.status_code == 200, (who, method, template, r.text[:200])
        checked += 1
    assert checked >= 10


def _monitor(client, headers, view: str, **params):
    r = client.get(f"/monitor/api/{view}", params=params, headers=headers)
    assert r.status_code == 200, (view, params, r.text)
    return r.json()


def test_the_monitor_shows_a_user_their_own_work_only(world):
    """Kind: a monitor view that shows another user's work.  Members: the task and job
    listings (rows and facets), the errors' groups, a task's page and a job's page (404,
    the same words as missing work, as page and as JSON), and the owner filter (403 for
    another user's name)."""
    client, as_, owned, _ = world
    for me, other in (("alice", "bob"), ("bob", "alice")):
        h = as_(me)
        tasks = _monitor(client, h, "tasks")
        assert {t["owner"] for t in tasks["tasks"]} == {me}, tasks
        assert tasks["total"] == 1 and sum(tasks["facets"]["state"].values()) == 1
        jobs = _monitor(client, h, "jobs")
        assert {j["task_id"] for j in jobs["jobs"]} == {owned[me]["task"]}, jobs
        assert jobs["total"] == 2 and sum(jobs["facets"]["state"].values()) == 2
        # asking for the other's task's jobs by id finds none of them
        assert _monitor(client, h, "jobs", task=owned[other]["task"])["total"] == 0
        assert _monitor(client, h, "errors", days=1)["by_task"] == []
        for path in (f"tasks/{owned[other]['task']}", f"jobs/{owned[other]['job']}",
                     f"tasks/t-{other}"):
            for url, params in ((f"/monitor/api/{path}", {}), (f"/monitor/{path}", {"json": ""})):
                r = client.get(url, params=params, headers=h)
                assert r.status_code == 404 and ("no task" in r.text or "no job" in r.text), \
                    (me, url, r.status_code, r.text)
        for path in (f"tasks/{owned[me]['task']}", f"jobs/{owned[me]['job']}", f"tasks/t-{me}"):
            assert _monitor(client, h, path)["id"] == (owned[me]["job"] if "jobs" in path
                                                       else owned[me]["task"])
        for view in ("tasks", "jobs", "errors"):
            r = client.get(f"/monitor/api/{view}", params={"owner": other}, headers=h)
            assert r.status_code == 403 and "user" in r.text, (me, view, r.text)
        # one's own name as the filter is the same listing
        assert [t["id"] for t in _monitor(client, h, "tasks", user=me)["tasks"]] == \
            [owned[me]["task"]]
        assert _monitor(client, h, "jobs", owner=me)["total"] == 2


def test_the_monitor_shows_the_seers_everyones_work_filterable(world):
    client, as_, owned, _ = world
    for seer in ("boss", "mon"):
        h = as_(seer)
        owners = {t["owner"] for t in _monitor(client, h, "tasks", per_page=500)["tasks"]}
        assert {"alice", "bob"} <= owners, (seer, owners)
        only = _monitor(client, h, "tasks", owner="bob")["tasks"]
        assert [t["id"] for t in only] == [owned["bob"]["task"]]
        jobs = _monitor(client, h, "jobs", user="alice")["jobs"]
        assert {j["task_id"] for j in jobs} == {owned["alice"]["task"]}
        for who in ("alice", "bob"):
            assert _monitor(client, h, f"tasks/{owned[who]['task']}")["owner"] == who
            assert _monitor(client, h, f"jobs/{owned[who]['job']}")["task"]["owner"] == who


def test_a_share_link_opens_its_task_page_and_no_other_route(world):
    """Walks every route with a share link's token (``panda-lab share``): only its task's
    page, that page's JSON and the assets answer; the other task is a 404; every other
    route, of every router, a 403.  The real-process test is test_share.py."""
    client, as_, owned, _ = world
    r = client.post(f"/api/tasks/{owned['alice']['task']}/shares", headers=as_("alice"),
                    json={"expires_s": 60})
    assert r.status_code == 201, r.text
    link = {"Authorization": f"Bearer {r.json()['token']}"}
    opened = {"/monitor/tasks/{task}", "/monitor/api/tasks/{task}", "/monitor/static/{name}"}
    checked = 0
    for method, _, template in _routes(client.app):
        for target in ("alice", "bob") if "{task" in template else ("alice",):
            path, params, body = _request(method, template.replace("{name}", "monitor.js")
                                          if template.startswith(MONITOR) else template,
                                          target, owned)
            r = client.request(method, path, params=params, json=body, headers=link)
            if template in opened and template != "/monitor/static/{name}" \
                    and target == "bob":
                assert r.status_code == 404 and "no task" in r.text, (template, r.text)
            elif template in opened:
                assert r.status_code == 200, (method, template, r.status_code, r.text)
            else:
                assert r.status_code == 403, (method, template, target, r.status_code)
            checked += 1
    assert checked >= 70


def test_owner_is_the_identity_not_what_the_client_says(world):
    client, as_, owned, server = world
    task = client.get(f"/api/tasks/{owned['alice']['task']}", headers=as_("alice")).json()
    assert task["owner"] == "alice"
    ds = client.get("/api/datasets/ds-bob", headers=as_("bob")).json()
    assert ds["owner"] == "bob"
    # the server's own token is the server owner, an admin
    legacy = {"Authorization": f"Bearer {server.user_token}"}
    r = client.post("/api/tasks", headers=legacy, json={"name": "mine", "jobs": []})
    own = client.get(f"/api/tasks/{r.json()['task']}", headers=legacy).json()
    assert own["owner"] == server.owner_name
    assert client.get(f"/api/tasks/{own['id']}", headers=as_("alice")).status_code == 404


def test_a_user_gets_404_for_the_other_users_work_on_every_route(world):
    client, as_, owned, _ = world
    checked = 0
    for method, _, template in _routes(client.app):
        kind = CLIENT.get((method, template))
        if kind not in ("task", "job", "dataset", "kill", "events"):
            continue
        for me, other in (("alice", "bob"), ("bob", "alice")):
            path, params, body = _request(method, template, other, owned)
            r = client.request(method, path, params=params, json=body, headers=as_(me))
            assert r.status_code == 404, (me, method, template, r.status_code, r.text)
            # the same words as for work that does not exist: nothing to learn from it
            assert "no task" in r.text or "no job" in r.text or "no dataset" in r.text
            checked += 1
            # and one's own is served (a read; actions are checked for the admin below)
            if method == "GET" and kind != "events":
                path, params, body = _request(method, template, me, owned)
                r = client.request(method, path, params=params, headers=as_(me))
                assert r.status_code == 200, (me, method, template, r.status_code, r.text)
    assert checked >= 2 * 17


def test_lists_hold_only_ones_own_and_admins_see_all_filterable(world):
    client, as_, owned, _ = world
    for path, key, of in (("/api/tasks", "id", lambda w: owned[w]["task"]),
                          ("/api/datasets", "name", lambda w: owned[w]["ds"])):
        for me, other in (("alice", "bob"), ("bob", "alice")):
            got = {x[key] for x in client.get(path, headers=as_(me)).json()}
            assert of(me) in got and of(other) not in got, (path, me, got)
            r = client.get(path, params={"user": other}, headers=as_(me))
            assert r.status_code == 403 and "user" in r.text
        for seer in ("boss", "mon"):
            got = {x[key] for x in client.get(path, headers=as_(seer)).json()}
            assert {of("alice"), of("bob")} <= got, (path, seer, got)
            only = client.get(path, params={"user": "bob"}, headers=as_(seer)).json()
            assert {x[key] for x in only} == {of("bob")}, (path, seer, only)
    # a task name is looked up among one's own tasks only
    assert client.get("/api/tasks/t-bob", headers=as_("alice")).status_code == 404
    assert client.get("/api/tasks/t-alice", headers=as_("alice")).status_code == 200


def test_counts_and_sites_count_ones_own_jobs(world):
    """Alice's two jobs wait at LOCAL-GRID, Bob's two at LOCAL-CLOUD (the fixture)."""
    client, as_, _, _ = world

    def get(path, who, **params):
        r = client.get(path, headers=as_(who), params=params)
        assert r.status_code == 200, (path, who, r.text)
        return r.json()

    def queued(who, **params):
        return {s["name"]: s["queued"] for s in get("/api/sites", who, **params)}

    assert get("/api/counts", "alice")["waiting"] == 2
    assert get("/api/counts", "bob")["waiting"] == 2
    assert queued("alice")["LOCAL-GRID"] == 2 and queued("alice")["LOCAL-CLOUD"] == 0
    assert queued("bob")["LOCAL-GRID"] == 0 and queued("bob")["LOCAL-CLOUD"] == 2
    for seer in ("boss", "mon"):
        assert get("/api/counts", seer)["waiting"] >= 4
        assert queued(seer)["LOCAL-GRID"] >= 2 and queued(seer)["LOCAL-CLOUD"] >= 2
        assert get("/api/counts", seer, user="bob") == get("/api/counts", "bob")
        assert queued(seer, user="alice") == queued("alice")
    # the pilots of a site are no one's work: everyone sees them
    pilots = {s["name"]: s["pilots"] for s in get("/api/sites", "alice")}
    assert pilots["LOCAL-CLOUD"] >= 1
    for path in ("/api/counts", "/api/sites"):
        r = client.get(path, params={"user": "bob"}, headers=as_("alice"))
        assert r.status_code == 403 and "user" in r.text


def test_a_dataset_name_of_another_user_cannot_be_replaced(world):
    client, as_, _, _ = world
    r = client.post("/api/datasets", headers=as_("alice"),
                    json={"name": "ds-bob", "tree": "Events", "replace": True})
    assert r.status_code == 409 and "another user" in r.text
    assert client.get("/api/datasets/ds-bob", headers=as_("bob")).status_code == 200


def test_read_only_reads_everything_and_acts_on_nothing(world):
    client, as_, owned, _ = world
    checked = 0
    for method, _, template in _routes(client.app):
        kind = CLIENT.get((method, template))
        if kind is None or kind == "events":
            continue
        path, params, body = _request(method, template, "bob", owned)
        r = client.request(method, path, params=params, json=body, headers=as_("mon"))
        if method == "GET":
            assert r.status_code == 200, (method, template, r.status_code, r.text)
        else:
            assert r.status_code == 403 and "read-only" in r.text, (method, template, r.text)
        checked += 1
    assert checked >= 25
    assert client.get("/metrics", headers=as_("mon")).status_code == 200
    assert client.get("/metrics", headers=as_("alice")).status_code == 403


def test_a_sites_pilot_token_serves_that_site_only(world):
    client, as_, owned, server = world
    grid = as_("grid")
    cloud_pilot, bob = owned["cloud_pilot"], owned["bob"]
    refused = {
        ("POST", "/api/pilot/register"): {"site": "LOCAL-CLOUD", "host": "h", "pid": 2},
        ("POST", "/api/pilot/acquire"): {"pilot": cloud_pilot, "site": "LOCAL-CLOUD"},
        ("POST", "/api/pilot/update"): {"pilot": cloud_pilot, "updates": []},
        ("POST", "/api/pilot/heartbeat"): {"pilot": cloud_pilot},
        ("POST", "/api/pilot/end"): {"pilot": cloud_pilot},
        ("PUT", f"/api/pilot/results/{bob['task']}/{bob['job']}"): None,
        ("PUT", f"/api/pilot/output/{bob['task']}/{bob['job']}"): None,
        ("GET", f"/api/pilot/tasks/{bob['task']}/common"): None,
    }
    assert {re.sub(r"/\d+", "/{}", p) for _, p in refused} == {
        re.sub(r"\{[^}]+\}", "{}", p) for p in PILOT}
    for (method, path), body in refused.items():
        r = client.request(method, path, json=body, headers=grid)
        assert r.status_code == 403 and "LOCAL-GRID" in r.text, (method, path, r.text)
    # acquire for its own site but as another site's pilot: refused too
    r = client.post("/api/pilot/acquire", headers=grid,
                    json={"pilot": cloud_pilot, "site": "LOCAL-GRID"})
    assert r.status_code == 403
    # its own site: registered, and it takes alice's job (pinned to LOCAL-GRID), not bob's
    mine = client.post("/api/pilot/register", headers=grid,
                       json={"site": "LOCAL-GRID", "host": "h", "pid": 3}).json()["pilot"]
    r = client.post("/api/pilot/acquire", headers=grid,
                    json={"pilot": mine, "site": "LOCAL-GRID", "n": 10})
    assert r.status_code == 200
    assert [j["task"] for j in r.json()["jobs"]] == [owned["alice"]["task"]] * 2
    # the server's own pilot token still serves every site (the embedded local sites)
    r = client.post("/api/pilot/heartbeat", json={"pilot": cloud_pilot},
                    headers={"Authorization": f"Bearer {server.pilot_token}"})
    assert r.status_code == 200


def test_the_admin_sees_and_acts_on_both(world):
    client, as_, owned, _ = world
    checked = 0
    for method, _, template in _routes(client.app):
        kind = CLIENT.get((method, template))
        if kind not in ("task", "job", "dataset", "kill"):
            continue
        for target in ("alice", "bob"):
            path, params, body = _request(method, template, target, owned)
            r = client.request(method, path, params=params, json=body, headers=as_("boss"))
            # served, or refused for the state of the work (409), never hidden or forbidden
            assert r.status_code in (200, 201, 409), (method, template, r.status_code, r.text)
            checked += 1
    assert checked >= 2 * 17


def test_a_revoked_token_is_refused_at_the_next_request(world):
    """Issued and revoked on the database by another process's store, as
    `panda-lab users` does while the server runs: no restart, no cache to wait out."""
    from panda_lab.store import Store

    client, _, _, server = world
    outside = Store(server.config.database_url, server.config.result_dir)
    try:
        token = outside.add_user("carol", "user")
        headers = {"Authorization": f"Bearer {token}"}
        assert client.get("/api/tasks", headers=headers).status_code == 200
        outside.revoke_user("carol")
        r = client.get("/api/tasks", headers=headers)
        assert r.status_code == 401 and r.json()["detail"] == "wrong token"
    finally:
        outside.close()
