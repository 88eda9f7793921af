"""Identities on real processes: tokens issued with ``panda-lab users`` while the server
runs, each user's event stream and task list holding their own work only, the panel's
server extension speaking with the notebook user's token, and no token in any log.

Kind (leaks of another's work): every way out of the server a user reads through (REST
lists, the event stream, the panel's API) carries only that user's work; every place a
token could be written (the server's log, uvicorn's, the pilots') holds none.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time

import httpx
import pytest
from harness import JupyterServer, ServerProcess, wait_for

from panda_lab.cli.main import main
from panda_lab.client.session import Lab


def square(x):
    return x * x


def _users(home, *args) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["--home", str(home), "users", *args])
    return rc, out.getvalue().strip()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    home = tmp_path_factory.mktemp("live-home")
    panda = ServerProcess(home).start()
    try:
        tokens = {}
        for name, flags in (("alice", []), ("bob", []), ("mon", ["--read-only"])):
            rc, tokens[name] = _users(home, "add", name, *flags)  # the server is running
            assert rc == 0 and len(tokens[name]) >= 40
        yield panda, tokens
    finally:
        panda.stop()


class Stream:
    """An event stream read on a thread: the task ids of every message it got."""

    def __init__(self, url: str, token: str) -> None:
        self.tasks: set[int] = set()
        self.ready = threading.Event()
        self.client = httpx.Client(base_url=url, timeout=None,
                                   headers={"Authorization": f"Bearer {token}"})
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _read(self) -> None:
        with contextlib.suppress(httpx.HTTPError), \
                self.client.stream("GET", "/api/events", params={"ping": 0.2}) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    msg = json.loads(line[6:])
                    self.ready.set()
                    self.tasks |= {j["task"] for j in msg.get("jobs", ())}
                    self.tasks |= {t["id"] for t in msg.get("tasks", ())}

    def close(self) -> None:
        self.client.close()


def test_each_user_streams_and_lists_only_their_own_work(live):
    panda, tokens = live
    url = panda.info["url"]
    streams = {who: Stream(url, tok) for who, tok in
               (("alice", tokens["alice"]), ("bob", tokens["bob"]),
                ("admin", panda.info["user_token"]))}
    labs = {who: Lab(url, tokens[who]) for who in ("alice", "bob")}
    try:
        ids = {}
        for who, lab in labs.items():
            ids[who] = lab.submit(square, [(i,) for i in range(3)], name=f"live-{who}")
        for who, lab in labs.items():
            assert lab.wait(ids[who], timeout=60)["state"] == "done"
        wait_for(lambda: set(ids.values()) <= streams["admin"].tasks, 10,
                 what="the admin's stream has both tasks")
        wait_for(lambda: ids["alice"] in streams["alice"].tasks, 10, what="alice's events")
        wait_for(lambda: ids["bob"] in streams["bob"].tasks, 10, what="bob's events")
        assert streams["alice"].tasks == {ids["alice"]}
        assert streams["bob"].tasks == {ids["bob"]}
        for who, lab in labs.items():
            assert [(t["id"], t["owner"]) for t in lab.list_tasks()] == [(ids[who], who)]
            assert list(lab.tasks().index) == [ids[who]]  # the notebook's table
        mon = Lab(url, tokens["mon"])
        assert {t["id"] for t in mon.list_tasks()} >= set(ids.values())
        with pytest.raises(Exception, match="read-only"):
            mon.kill(ids["alice"])
        mon.close()
    finally:
        for s in streams.values():
            s.close()
        for lab in labs.values():
            lab.close()


def test_revoked_while_running_is_refused_at_once(live):
    panda, _ = live
    rc, token = _users(panda.home, "add", "dave")
    assert rc == 0
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=panda.info["url"], headers=headers) as c:
        assert c.get("/api/tasks").status_code == 200
        assert _users(panda.home, "revoke", "dave")[0] == 0
        assert c.get("/api/tasks").status_code == 401
    rc, listing = _users(panda.home, "list", "--json")
    rows = {r["name"]: r for r in json.loads(listing)}
    assert rows["dave"]["revoked_at"] is not None and rows["alice"]["revoked_at"] is None
    assert token not in listing
    assert _users(panda.home, "revoke", "dave")[0] == 2  # revoked already: named, usage error


@pytest.mark.slow  # a Jupyter server of its own, started with the notebook user's token
def test_the_panel_api_shows_the_notebook_users_own_work(live, tmp_path, monkeypatch):
    panda, tokens = live
    alice, bob = Lab(panda.info["url"], tokens["alice"]), Lab(panda.info["url"], tokens["bob"])
    mine = alice.submit(square, [(1,)], name="panel-alice")
    theirs = bob.submit(square, [(2,)], name="panel-bob")
    bob.wait(theirs, timeout=60)
    their_job = bob.jobs(theirs)[0]["id"]
    monkeypatch.setenv("PANDA_LAB_TOKEN", tokens["alice"])
    jupyter = JupyterServer(panda.home, tmp_path, app="jupyter_server").start()
    try:
        with httpx.Client(base_url=f"{jupyter.url}/panda-lab", timeout=30,
                          headers={"Authorization": f"token {jupyter.token}"}) as c:
            listed = {t["id"] for t in c.get("/tasks").json()}
            assert mine in listed and theirs not in listed
            assert c.get(f"/tasks/{mine}").status_code == 200
            assert c.get(f"/tasks/{theirs}").status_code == 404
            for action in ("kill", "retry"):
                assert c.post(f"/tasks/{theirs}/{action}").status_code == 404
            assert c.get(f"/jobs/{their_job}").status_code == 404
            with c.stream("GET", "/events", params={"tasks": str(theirs)}) as r:
                assert r.status_code == 404
            assert bob.wait(theirs, timeout=5)["state"] == "done"  # not killed
    finally:
        jupyter.stop()
        alice.close()
        bob.close()


def test_no_token_in_any_log(live):
    """Last: after every request of the module, refused ones included."""
    panda, tokens = live
    with httpx.Client(base_url=panda.info["url"]) as c:
        c.get("/api/tasks", headers={"Authorization": f"Bearer {tokens['bob']}x"})
        c.get("/api/tasks/999999", headers={"Authorization": f"Bearer {tokens['bob']}"})
    time.sleep(0.2)
    logs = list(panda.home.rglob("*.log"))
    assert logs, "the server wrote no log to look in"
    secrets = [*tokens.values(), panda.info["user_token"], panda.info["pilot_token"]]
    for path in logs:
        text = path.read_text(errors="replace")
        for token in secrets:
            assert token not in text, f"a token in {path}"
