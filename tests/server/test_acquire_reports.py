"""An acquisition carries the pilot's reports: applied first, then jobs handed out, in one
round trip.

The kind of fault: a report that travels with another request is treated differently from
one sent alone. Members: a finished job's report in an acquisition ends the job (its result
kept, its task's progress counted) before the next job is handed out, with the reply saying
what was ignored and what the pilot is to drop, as ``/update``'s does; a stale report (an
old attempt) is ignored and named, the rest applied; a report naming a result never
uploaded refuses the whole request (422) and neither applies the others nor hands out a
job; the jobs the report ends are not counted held, so a ``lost_check`` in the same request
does not fail them as lost; and the last job's report, carried by the long poll of a pilot
with nothing left, ends the task at once rather than after the poll.
"""

from __future__ import annotations

import base64
import threading
import time

import pytest
from fastapi.testclient import TestClient

from panda_lab.server.app import Server, create_app
from panda_lab.server.config import ServerConfig

B64 = base64.b64encode(b"x").decode()


@pytest.fixture
def app(tmp_path):
    """A real app and SQLite store, no pilots: ``(client, server, user, pilot headers)``."""
    server = Server(ServerConfig(home=tmp_path / "home", provision=False))
    with TestClient(create_app(server)) as client:
        yield (client, server, {"Authorization": f"Bearer {server.user_token}"},
               {"Authorization": f"Bearer {server.pilot_token}"})
    server.close()


def _task(client, user, site: str, n: int) -> int:
    r = client.post("/api/tasks", headers=user, json={
        "name": "t", "site": site, "jobs": [{"payload": B64}] * n,
        "options": {"max_attempts": 1}})
    assert r.status_code == 201, r.text
    return r.json()["task"]


def _setup(app, n: int):
    client, server, user, pilot = app
    site = server.config.sites[0].name
    task = _task(client, user, site, n)
    p = client.post("/api/pilot/register", headers=pilot,
                    json={"site": site, "host": "h", "pid": 1}).json()["pilot"]
    return client, user, pilot, site, task, p


def _acquire(client, pilot, body: dict):
    return client.post("/api/pilot/acquire", headers=pilot, json=body)


def test_the_report_is_applied_before_the_next_job_is_handed_out(app):
    client, user, pilot, site, task, p = _setup(app, 2)
    (first,) = _acquire(client, pilot, {"pilot": p, "site": site}).json()["jobs"]
    r = _acquire(client, pilot, {"pilot": p, "site": site, "held": [], "updates": [
        {"id": first["id"], "attempt": 1, "state": "finished", "result": B64}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ignored"] == [] and body["drop"] == []
    (second,) = body["jobs"]
    assert second["id"] != first["id"]
    job = client.get(f"/api/jobs/{first['id']}", headers=user).json()
    assert job["state"] == "finished"
    assert client.get(f"/api/tasks/{task}", headers=user).json()["n_done"] == 1
    # an acquisition without reports answers as it always did
    assert set(_acquire(client, pilot, {"pilot": p, "site": site}).json()) == {"jobs"}


def test_a_stale_report_is_ignored_and_named_the_rest_applied(app):
    client, user, pilot, site, _task, p = _setup(app, 3)
    a, b = _acquire(client, pilot, {"pilot": p, "site": site, "n": 2}).json()["jobs"]
    r = _acquire(client, pilot, {"pilot": p, "site": site, "held": [b["id"]], "updates": [
        {"id": a["id"], "attempt": 1, "state": "finished", "result": B64},
        {"id": b["id"], "attempt": 5, "state": "running"}]})
    body = r.json()
    assert [i["id"] for i in body["ignored"]] == [b["id"]]
    assert len(body["jobs"]) == 1
    assert client.get(f"/api/jobs/{a['id']}", headers=user).json()["state"] == "finished"
    assert client.get(f"/api/jobs/{b['id']}", headers=user).json()["state"] == "sent"


def test_a_result_never_uploaded_refuses_all_and_hands_out_nothing(app):
    client, user, pilot, site, task, p = _setup(app, 3)
    a, b = _acquire(client, pilot, {"pilot": p, "site": site, "n": 2}).json()["jobs"]
    r = _acquire(client, pilot, {"pilot": p, "site": site, "updates": [
        {"id": a["id"], "attempt": 1, "state": "finished", "result": B64},
        {"id": b["id"], "attempt": 1, "state": "finished", "result_ref": f"{task}/{b['id']}.pkl"}]})
    assert r.status_code == 422 and "never uploaded" in r.json()["detail"]
    assert client.get(f"/api/jobs/{a['id']}", headers=user).json()["state"] == "sent"
    waiting = client.get(f"/api/tasks/{task}/jobs", headers=user).json()
    assert sum(j["state"] == "activated" for j in waiting) == 1


def test_a_lost_check_does_not_fail_the_jobs_the_report_ends(app):
    client, user, pilot, site, _task, p = _setup(app, 3)
    a, b = _acquire(client, pilot, {"pilot": p, "site": site, "n": 2}).json()["jobs"]
    # ``a`` is reported (so not held); ``b`` is neither: its answer was lost
    r = _acquire(client, pilot, {"pilot": p, "site": site, "held": [], "lost_check": True,
                                 "updates": [{"id": a["id"], "attempt": 1,
                                              "state": "finished", "result": B64}]})
    assert r.status_code == 200, r.text
    assert client.get(f"/api/jobs/{a['id']}", headers=user).json()["state"] == "finished"
    lost = client.get(f"/api/jobs/{b['id']}", headers=user).json()
    assert lost["state"] == "failed" and "never got it" in lost["error_message"]


def test_the_last_report_in_a_long_poll_ends_the_task_at_once(app):
    client, user, pilot, site, task, p = _setup(app, 1)
    (job,) = _acquire(client, pilot, {"pilot": p, "site": site}).json()["jobs"]
    ended: dict = {}

    def wait() -> None:
        ended["task"] = client.get(f"/api/tasks/{task}/wait", headers=user,
                                   params={"timeout": 10}).json()
        ended["at"] = time.monotonic()

    waiter = threading.Thread(target=wait)
    waiter.start()
    t0 = time.monotonic()
    r = _acquire(client, pilot, {"pilot": p, "site": site, "wait": 3.0, "updates": [
        {"id": job["id"], "attempt": 1, "state": "finished", "result": B64}]})
    waiter.join(10)
    assert r.json()["jobs"] == []
    assert ended["task"]["state"] == "done"
    assert ended["at"] - t0 < 2.0   # not after the 3-s poll the report came with


def test_an_ignored_report_is_answered_at_once_not_after_the_poll(app):
    client, _user, pilot, site, _task, p = _setup(app, 1)
    (job,) = _acquire(client, pilot, {"pilot": p, "site": site}).json()["jobs"]
    t0 = time.monotonic()
    r = _acquire(client, pilot, {"pilot": p, "site": site, "wait": 3.0, "updates": [
        {"id": job["id"], "attempt": 9, "state": "finished", "result": B64}]})
    assert [i["id"] for i in r.json()["ignored"]] == [job["id"]]
    assert time.monotonic() - t0 < 2.0
