"""``panda-lab share``: read-only, expiring links to one task's monitor page, through a
real server process and the real command line.

Kind tested: a share link that opens more than its task, or opens it for longer than
said.  Members: the link's token reads its task's page, JSON and assets; another task is
a 404 (as missing work); every other view, the client API, the event stream and
``/metrics`` are a 403; an expired link and a revoked one answer 401 saying which; only
the task's owner (or an admin) may share it.  The command line: ``--help``, ``--json``,
``--list``, ``--revoke`` and its exit codes (2 for bad input or an unknown task or link,
3 without a server).
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from harness import ServerProcess

from panda_lab.cli.main import main


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    home = tmp_path_factory.mktemp("share-home")
    panda = ServerProcess(home, extra=["--no-pilots"]).start()
    try:
        admin = httpx.Client(base_url=panda.info["url"], timeout=10, headers={
            "Authorization": f"Bearer {panda.info['user_token']}"})
        ids = {}
        for name in ("shared-one", "other-one"):
            r = admin.post("/api/tasks", json={"name": name, "jobs": [{"payload": "eA=="}]})
            assert r.status_code == 201, r.text
            ids[name] = r.json()["task"]
        yield panda, home, ids
        admin.close()
    finally:
        panda.stop()


def cli(capsys, home, *args) -> tuple[int, str, str]:
    rc = main(["--home", str(home), "share", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def as_link(panda, token: str) -> httpx.Client:
    return httpx.Client(base_url=panda.info["url"], timeout=10,
                        headers={"Authorization": f"Bearer {token}"})


def test_help_names_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["share", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("TASK", "--expires", "--list", "--revoke", "--json", "7d"):
        assert option.lower() in out.lower(), option


def test_a_link_opens_its_task_and_nothing_else(srv, capsys):
    panda, home, ids = srv
    task, other = ids["shared-one"], ids["other-one"]
    rc, out, err = cli(capsys, home, task)
    assert rc == 0 and "read-only" in err
    url = out.strip()
    assert url.startswith(f"{panda.info['url']}/monitor/tasks/{task}#share=share-"), url
    token = url.split("#share=", 1)[1]
    with as_link(panda, token) as c:
        assert c.get(f"/monitor/api/tasks/{task}").json()["name"] == "shared-one"
        assert c.get(f"/monitor/tasks/{task}", params={"json": ""}).json()["id"] == task
        page = c.get(f"/monitor/tasks/{task}", headers={"Accept": "text/html"})
        assert page.status_code == 200 and 'id="app"' in page.text
        for asset in ("monitor.js", "events.js", "monitor.css"):
            assert c.get(f"/monitor/static/{asset}").status_code == 200
        # another task is not there for it (the same words as a missing one)
        for path in (f"/monitor/api/tasks/{other}", f"/monitor/tasks/{other}?json",
                     "/monitor/api/tasks/other-one", "/monitor/api/tasks/shared-one"):
            r = c.get(path)
            assert r.status_code == 404 and "no task" in r.text, (path, r.status_code)
        # nor any other view, the client API, the events or the metrics
        for path in ("/monitor/api/tasks", "/monitor/tasks?json", "/monitor/api/jobs",
                     "/monitor/api/jobs/1", "/monitor/jobs/1?json", "/monitor/api/errors",
                     "/monitor/api/sites", "/monitor/sites?json", f"/api/tasks/{task}",
                     "/api/tasks", f"/api/tasks/{task}/jobs", "/api/events", "/metrics",
                     f"/api/tasks/{task}/shares"):
            r = c.get(path)
            assert r.status_code == 403, (path, r.status_code, r.text)
            assert "shared-one" not in r.text
        for path in (f"/api/tasks/{task}/kill", f"/api/tasks/{task}/shares",
                     "/api/pilot/acquire"):
            assert c.post(path, json={}).status_code == 403, path


def test_json_list_expiry_and_revocation(srv, capsys):
    panda, home, ids = srv
    task = ids["other-one"]
    rc, out, _ = cli(capsys, home, task, "--expires", "1s", "--json")
    short = json.loads(out)
    assert rc == 0 and short["task"] == task and short["state"] == "live"
    assert short["expires_at"] - short["created_at"] == pytest.approx(1.0)
    assert short["url"].endswith(short["path"]) and short["token"] in short["url"]
    rc, out, _ = cli(capsys, home, task, "--expires", "2w", "--json")
    week2 = json.loads(out)
    assert week2["expires_at"] - week2["created_at"] == pytest.approx(14 * 86400)
    with as_link(panda, short["token"]) as c:
        assert c.get(f"/monitor/api/tasks/{task}").status_code == 200
        time.sleep(max(0.0, short["expires_at"] - time.time()) + 0.1)
        r = c.get(f"/monitor/api/tasks/{task}")
        assert r.status_code == 401 and "expired" in r.json()["detail"], r.text
        assert c.get("/monitor/static/monitor.js").status_code == 401  # the page says why
    with as_link(panda, week2["token"]) as c:
        assert c.get(f"/monitor/api/tasks/{task}").status_code == 200
        rc, out, _ = cli(capsys, home, task, "--revoke", week2["id"])
        assert rc == 0 and str(week2["id"]) in out
        r = c.get(f"/monitor/api/tasks/{task}")
        assert r.status_code == 401 and "revoked" in r.json()["detail"], r.text
    rc, out, _ = cli(capsys, home, task, "--list", "--json")
    states = {s["id"]: s["state"] for s in json.loads(out)}
    assert rc == 0 and states == {short["id"]: "expired", week2["id"]: "revoked"}
    assert "token" not in out
    rc, out, _ = cli(capsys, home, task, "--list")
    assert rc == 0 and "expired" in out and "revoked" in out
    # all: every link of the task not revoked yet (the expired one too), no other task's
    keep = json.loads(cli(capsys, home, ids["shared-one"], "--json")[1])
    cli(capsys, home, task), cli(capsys, home, task)
    rc, out, _ = cli(capsys, home, task, "--revoke", "all", "--json")
    assert rc == 0 and len(json.loads(out)["revoked"]) == 3
    with as_link(panda, keep["token"]) as c:
        assert c.get(f"/monitor/api/tasks/{ids['shared-one']}").status_code == 200


def test_exit_codes(srv, capsys, tmp_path):
    _, home, ids = srv
    for bad in ("7x", "0", "-1d", "400d", ""):
        with pytest.raises(SystemExit) as exc:
            main(["--home", str(home), "share", str(ids["shared-one"]), "--expires", bad])
        assert exc.value.code == 2 and "--expires" in capsys.readouterr().err, bad
    rc, _, err = cli(capsys, home, 999_999)
    assert rc == 2 and "no task" in err
    rc, _, err = cli(capsys, home, ids["shared-one"], "--revoke", "999999")
    assert rc == 2 and "no unrevoked share link" in err
    rc, _, err = cli(capsys, home, ids["shared-one"], "--revoke", "some")
    assert rc == 2 and "--revoke" in err
    rc, _, _ = cli(capsys, tmp_path, ids["shared-one"])   # no server there
    assert rc == 3


def test_only_the_owner_or_an_admin_shares_a_task(srv, capsys):
    panda, home, ids = srv
    tokens = {}
    for name, flags in (("alice", []), ("mon", ["--read-only"])):
        assert main(["--home", str(home), "users", "add", name, *flags]) == 0
        tokens[name] = capsys.readouterr().out.strip()
    with as_link(panda, tokens["alice"]) as alice:
        r = alice.post("/api/tasks", json={"name": "alices", "jobs": []})
        mine = r.json()["task"]
        assert alice.post(f"/api/tasks/{mine}/shares", json={}).status_code == 201
        r = alice.post(f"/api/tasks/{ids['shared-one']}/shares", json={})
        assert r.status_code == 404 and "no task" in r.text
        assert alice.get(f"/api/tasks/{ids['shared-one']}/shares").status_code == 404
        assert alice.post(f"/api/tasks/{mine}/shares",
                          json={"expires_s": 1e9}).status_code == 422
    with as_link(panda, tokens["mon"]) as mon:
        assert mon.post(f"/api/tasks/{mine}/shares", json={}).status_code == 403
        assert mon.get(f"/api/tasks/{mine}/shares").status_code == 200
