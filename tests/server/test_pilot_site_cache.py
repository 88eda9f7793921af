"""A pilot's requests do not read its row to learn its site: the site is read once.

Kind tested: a store transaction on every request of a pilot that answers something
that never changes (a pilot's site), which at 1,000 pilots is a transaction per request
the server need not make.  Members: acquire, report, heartbeat, end.  And the rule the
read served still holds: a pilot of another site's token is refused (403), an unknown
pilot is a 404, a pilot acquiring at another site than its own a 409, also for a pilot
registered before the server started (its site read once from the store).
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from panda_lab.server.app import Server, create_app
from panda_lab.server.config import ServerConfig


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("pilot-site-cache")
    before = Server(ServerConfig(home=home, provision=False))
    older = before.store.register_pilot("LOCAL-HPC", "h", 1, 1, {})  # before this server
    before.close()
    server = Server(ServerConfig(home=home, provision=False))
    reads = []
    real = server.store.pilot
    server.store.pilot = lambda pilot_id: reads.append(pilot_id) or real(pilot_id)
    with TestClient(create_app(server)) as client:
        yield server, client, reads, older
    server.close()


def _h(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_a_pilots_requests_read_no_pilot_row(served):
    server, client, reads, _ = served
    grid = _h(server.site_tokens["LOCAL-GRID"])
    pid = client.post("/api/pilot/register", headers=grid, json={
        "site": "LOCAL-GRID", "host": "h", "pid": 1, "slots": 1, "info": {}}).json()["pilot"]
    reads.clear()
    for path, body in [
            ("acquire", {"pilot": pid, "site": "LOCAL-GRID", "n": 1, "wait": 0, "held": []}),
            ("heartbeat", {"pilot": pid, "held": []}),
            ("update", {"pilot": pid, "held": [], "updates": []}),
            ("end", {"pilot": pid, "state": "finished"})]:
        r = client.post(f"/api/pilot/{path}", headers=grid, json=body)
        assert r.status_code == 200, (path, r.text)
    assert reads == []
    (row,) = server.db_from_thread(server.store.list_pilots, ids=[pid])
    assert row["state"] == "finished"   # the requests did their work


def test_the_site_rules_still_hold(served):
    server, client, reads, older = served
    grid, cloud = _h(server.site_tokens["LOCAL-GRID"]), _h(server.site_tokens["LOCAL-CLOUD"])
    pid = client.post("/api/pilot/register", headers=grid, json={
        "site": "LOCAL-GRID", "host": "h", "pid": 2, "slots": 1, "info": {}}).json()["pilot"]
    r = client.post("/api/pilot/heartbeat", headers=cloud, json={"pilot": pid, "held": []})
    assert r.status_code == 403 and "LOCAL-CLOUD" in r.text
    r = client.post("/api/pilot/heartbeat", headers=grid, json={"pilot": 10**9, "held": []})
    assert r.status_code == 404
    own = _h(server.pilot_token)   # any site's
    r = client.post("/api/pilot/acquire", headers=own, json={
        "pilot": pid, "site": "LOCAL-CLOUD", "n": 1, "wait": 0, "held": []})
    assert r.status_code == 409 and "LOCAL-GRID" in r.text
    # registered before this server ran: read once, then known
    reads.clear()
    hpc = _h(server.site_tokens["LOCAL-HPC"])
    for _ in range(3):
        r = client.post("/api/pilot/heartbeat", headers=hpc, json={"pilot": older, "held": []})
        assert r.status_code == 200, r.text
    r = client.post("/api/pilot/heartbeat", headers=grid, json={"pilot": older, "held": []})
    assert r.status_code == 403
    assert reads == [older]
