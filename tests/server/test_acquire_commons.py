"""An acquisition carries the common payload part of the tasks it hands out jobs of.

The kind of fault: one piece of data reaching the pilot by two paths (carried in the
acquisition's answer, or fetched with ``GET /api/pilot/tasks/{id}/common``) that drift
apart, so a job runs without its task's function, or with another task's. Members: the
answer carries exactly the bytes the fetch serves, once per task however many of its jobs
it hands out, for every task among them that has a common part and that the pilot does
not say it holds; never for a task the pilot holds, a task without one, or a pilot that
does not say what it holds (it fetches, as before); a part larger than
``INLINE_COMMON`` is left to the fetch, which serves it whole, and so are the parts past
``INLINE_ANSWER`` bytes in one answer (many tasks at once). On the pilot, a part an
acquisition carried is the one its jobs run with, with no fetch; and a pilot names the
parts it holds only to a server that said at registration it carries them (an older
server refuses a field it does not know).
"""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from panda_lab.pilot.pilot import Pilot, PilotOptions
from panda_lab.server.app import Server, create_app
from panda_lab.server.config import ServerConfig
from panda_lab.store.rows.tasks import INLINE_ANSWER, INLINE_COMMON


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def app(tmp_path):
    """A real app and SQLite store, no pilots: ``(client, site, user headers, pilot
    headers, pilot id)``."""
    server = Server(ServerConfig(home=tmp_path / "home", provision=False))
    with TestClient(create_app(server)) as client:
        user = {"Authorization": f"Bearer {server.user_token}"}
        pilot = {"Authorization": f"Bearer {server.pilot_token}"}
        site = server.config.sites[0].name
        p = client.post("/api/pilot/register", headers=pilot,
                        json={"site": site, "host": "h", "pid": 1}).json()["pilot"]
        yield client, site, user, pilot, p
    server.close()


def _task(client, user, site: str, n: int, common: bytes | None) -> int:
    body = {"name": "t", "site": site, "jobs": [{"payload": b64(b"job")}] * n,
            "options": {"max_attempts": 1}}
    if common is not None:
        body["common"] = b64(common)
    r = client.post("/api/tasks", headers=user, json=body)
    assert r.status_code == 201, r.text
    return r.json()["task"]


def _acquire(client, pilot, p, site, n, **more) -> dict:
    r = client.post("/api/pilot/acquire", headers=pilot,
                    json={"pilot": p, "site": site, "n": n, **more})
    assert r.status_code == 200, r.text
    return r.json()


def _fetched(client, pilot, task: int) -> bytes:
    r = client.get(f"/api/pilot/tasks/{task}/common", headers=pilot)
    assert r.status_code == 200, r.text
    return r.content


def test_the_answer_carries_each_tasks_part_once_as_the_fetch_serves_it(app):
    client, site, user, pilot, p = app
    a = _task(client, user, site, 3, b"function of a")
    b = _task(client, user, site, 2, b"function of b")
    got = _acquire(client, pilot, p, site, 5, commons=[])
    assert sorted(j["task"] for j in got["jobs"]) == [a, a, a, b, b]
    assert set(got["commons"]) == {str(a), str(b)}
    for task in (a, b):
        assert base64.b64decode(got["commons"][str(task)]) == _fetched(client, pilot, task)
    assert all(j["common"] for j in got["jobs"])
    assert not any("common_payload" in j for j in got["jobs"])


def test_a_task_the_pilot_holds_is_not_carried(app):
    client, site, user, pilot, p = app
    a = _task(client, user, site, 1, b"function of a")
    b = _task(client, user, site, 1, b"function of b")
    got = _acquire(client, pilot, p, site, 2, commons=[a])
    assert set(got["commons"]) == {str(b)}


def test_no_part_for_a_task_without_one_nor_for_a_pilot_that_does_not_say(app):
    client, site, user, pilot, p = app
    _task(client, user, site, 1, None)
    got = _acquire(client, pilot, p, site, 1, commons=[])
    assert "commons" not in got and got["jobs"][0]["common"] is False
    a = _task(client, user, site, 1, b"function of a")
    got = _acquire(client, pilot, p, site, 1)  # a pilot that names none: it fetches
    assert "commons" not in got and got["jobs"][0]["task"] == a
    assert _fetched(client, pilot, a) == b"function of a"


def test_a_part_past_the_bound_is_left_to_the_fetch(app):
    client, site, user, pilot, p = app
    big = bytes(range(256)) * (INLINE_COMMON // 256) + b"!"
    small = b"x" * INLINE_COMMON  # at the bound: carried
    a = _task(client, user, site, 1, big)
    b = _task(client, user, site, 1, small)
    got = _acquire(client, pilot, p, site, 2, commons=[])
    assert set(got["commons"]) == {str(b)}
    assert base64.b64decode(got["commons"][str(b)]) == small
    assert _fetched(client, pilot, a) == big


def test_the_pilot_runs_a_carried_part_without_fetching_it():
    p = Pilot(PilotOptions("http://lab.invalid", "LOCAL", "t"))
    sent: list[dict] = []

    def post(path, body, **kw):
        if path == "/api/pilot/register":
            return {"pilot": 1, "heartbeat_interval": 30, "endpoint": "",
                    "carries_commons": True}
        sent.append(body)
        return {"jobs": [{"id": 9, "task": 7, "payload": b64(b"job"), "common": True}],
                "commons": {"7": b64(b"function of 7")}}

    def request(*a, **kw):
        raise AssertionError(f"fetched {a}: the acquisition carried it")

    p.api.post = post
    p.api.request = request
    p.register()
    p._acquire()
    assert sent[0]["commons"] == []
    assert p._common(7) == b"function of 7"
    # the next acquisition says the pilot holds it
    p.queue.clear()
    p._acquire()
    assert sent[1]["commons"] == [7]


def test_a_pilot_names_no_parts_to_a_server_that_does_not_carry_them():
    """An older server refuses an acquisition with a field it does not know (422)."""
    p = Pilot(PilotOptions("http://lab.invalid", "LOCAL", "t"))
    sent: list[dict] = []

    def post(path, body, **kw):
        if path == "/api/pilot/register":
            return {"pilot": 1, "heartbeat_interval": 30, "endpoint": ""}
        sent.append(body)
        return {"jobs": []}

    p.api.post = post
    p.register()
    p._acquire()
    assert "commons" not in sent[0]


def test_the_server_says_it_carries_them(app):
    client, site, _user, pilot, _p = app
    r = client.post("/api/pilot/register", headers=pilot,
                    json={"site": site, "host": "h", "pid": 2})
    assert r.json()["carries_commons"] is True


def test_one_answer_carries_at_most_its_bound_the_rest_fetched(app):
    client, site, user, pilot, p = app
    n = INLINE_ANSWER // INLINE_COMMON + 2
    tasks = [_task(client, user, site, 1, bytes([k]) * INLINE_COMMON) for k in range(n)]
    got = _acquire(client, pilot, p, site, n, commons=[])
    assert len(got["jobs"]) == n
    carried = {int(t): base64.b64decode(c) for t, c in got["commons"].items()}
    assert sum(map(len, carried.values())) <= INLINE_ANSWER
    assert len(carried) == INLINE_ANSWER // INLINE_COMMON
    for k, task in enumerate(tasks):
        if task in carried:
            assert carried[task] == bytes([k]) * INLINE_COMMON
        else:
            assert _fetched(client, pilot, task) == bytes([k]) * INLINE_COMMON
