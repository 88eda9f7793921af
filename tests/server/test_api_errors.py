"""Bad requests get a 4xx that says what is wrong, and the server keeps serving."""

from __future__ import annotations

import base64
import threading

import httpx
import pytest

import panda_lab
from panda_lab.http import ApiError


def double(x):
    return 2 * x


@pytest.fixture
def raw(server):
    with httpx.Client(base_url=server.info["url"], timeout=30, headers={
            "Authorization": f"Bearer {server.info['user_token']}"}) as c:
        yield c


def _declared_huge_body(raw) -> int:
    """A request announcing a 2 GiB body is refused before the body is read (raw socket:
    HTTP clients will not send a Content-Length they do not honour)."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(str(raw.base_url))
    token = raw.headers["Authorization"]
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(f"POST /api/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {2 << 30}\r\n\r\n{{"
                  .encode())
        status_line = s.recv(4096).split(b"\r\n", 1)[0]
    return int(status_line.split()[1])


def _detail(r) -> str:
    return str(r.json()["detail"])


def test_malformed_requests_get_precise_4xx(raw, lab):
    r = raw.post("/api/tasks", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "json" in _detail(r).lower()
    r = raw.post("/api/tasks", json={"name": "x", "jobs": "many"})
    assert r.status_code == 422 and "jobs" in _detail(r)
    r = raw.post("/api/tasks", json={"name": "x", "colour": "red"})
    assert r.status_code == 422 and "colour" in _detail(r)
    r = raw.post("/api/tasks", json={"name": "x", "jobs": [{"payload": "%%%"}]})
    assert r.status_code == 422 and "base64" in _detail(r)
    r = raw.post("/api/tasks", json={"name": "", "jobs": []})
    assert r.status_code == 422 and "name" in _detail(r)
    r = raw.post("/api/tasks", json={"name": "x", "options": {"max_attempts": 0}})
    assert r.status_code == 422 and "max_attempts" in _detail(r)
    r = raw.get("/api/tasks", params={"limit": -1})
    assert r.status_code == 422 and "limit" in _detail(r)
    r = raw.get("/api/tasks/1/results", params={"indices": "a,b"})
    assert r.status_code in (404, 422)
    assert _declared_huge_body(raw) == 413
    # ... and after all that, the server still works.
    task = lab.submit(double, [(1,), (2,)], name="after-errors")
    assert lab.wait(task, timeout=60)["state"] == "done"
    assert lab.results(task) == {0: 2, 1: 4}


def test_unknown_site_is_refused_and_creates_nothing(raw, lab):
    before = len(lab.list_tasks())
    payload = base64.b64encode(b"x").decode()
    r = raw.post("/api/tasks", json={"name": "x", "site": "NOWHERE",
                                     "jobs": [{"payload": payload}]})
    assert r.status_code == 400 and "NOWHERE" in _detail(r) and "LOCAL-GRID" in _detail(r)
    assert len(lab.list_tasks()) == before


def test_unknown_task_and_wrong_state(raw, lab):
    for path in ("/api/tasks/999", "/api/tasks/999/jobs", "/api/tasks/999/results",
                 "/api/tasks/999/failures", "/api/tasks/no-such-name", "/api/jobs/999"):
        r = raw.get(path)
        assert r.status_code == 404, path
        assert "999" in _detail(r) or "no-such-name" in _detail(r)
    task = lab.submit(double, [(3,)], name="finished-one")
    lab.wait(task, timeout=60)
    r = raw.post(f"/api/tasks/{task}/kill")
    assert r.status_code == 409 and "done" in _detail(r)
    with pytest.raises(ApiError) as err:
        lab.kill(task)
    assert err.value.status == 409


def test_unpicklable_payload_fails_in_the_client_at_once(lab):
    before = len(lab.list_tasks())
    lock = threading.Lock()
    with pytest.raises(panda_lab.PayloadError, match="pickle"):
        lab.submit(double, [(lock,)], name="never")
    with pytest.raises(panda_lab.PayloadError, match="generator"):
        lab.submit(double, [((i for i in range(3)),)], name="never")
    assert len(lab.list_tasks()) == before


def test_payload_that_cannot_be_unpickled_on_the_pilot_fails_clearly(raw, lab):
    garbage = base64.b64encode(b"\x80\x05not a pickle").decode()
    r = raw.post("/api/tasks", json={"name": "garbage", "jobs": [{"payload": garbage}]})
    assert r.status_code == 201
    task = r.json()["task"]
    info = lab.wait(task, timeout=60)
    assert info["state"] == "failed"
    (job,) = lab.failures(task)
    assert job["error_category"] == "payload" and job["attempt"] == 1
    assert "cannot unpickle the payload" in job["error_message"]


def test_analysis_endpoints_refuse_checkable_input(raw, lab, tmp_path):
    """Each bad-but-checkable request to the data and analysis API: a 4xx naming the
    problem, nothing created; an empty dataset is not an error at all."""
    from panda_lab.analysis.sample import write_file

    path = write_file(tmp_path / "f.root", 0, events=100, basket_events=50)
    ds = lab.datasets.register("d", [str(path)])
    proc = base64.b64encode(b"never unpickled: refused before").decode()
    submit = {"name": "a", "dataset": "d", "processor": proc}
    before = len(lab.list_tasks())
    for split, status, words in [
        ({"mode": "events", "events_per_job": -5}, 422, "events_per_job"),
        ({"mode": "events", "events_per_job": 0}, 422, "events_per_job > 0"),
        ({"mode": "events"}, 422, "events_per_job > 0"),
        ({"mode": "files", "files_per_job": 0}, 422, "files_per_job > 0"),
        ({"mode": "files", "files_per_job": -1}, 422, "files_per_job"),
        ({"mode": "auto", "n_scouts": 0}, 422, "n_scouts"),
        ({"mode": "auto", "target_job_seconds": 0}, 422, "target_job_seconds"),
        ({"mode": "bytes"}, 422, "mode"),
    ]:
        r = raw.post("/api/analyses", json={**submit, "split": split})
        assert (r.status_code, words in _detail(r)) == (status, True), (split, r.text)
    r = raw.post("/api/analyses", json={**submit, "dataset": "nope"})
    # a message ends with a quoted name: kept whole (its closing quote was cut)
    assert r.status_code == 404 and _detail(r) == "no dataset named 'nope'; known: ['d']"
    r = raw.get("/api/tasks/no-such-name")
    assert r.status_code == 404 and _detail(r) == "no task named 'no-such-name'", _detail(r)
    r = raw.post("/api/analyses", json={**submit, "columns": ["Jet_pt"],
                                        "split": {"mode": "events", "events_per_job": 10}})
    assert r.status_code == 422
    assert _detail(r) == "no file of dataset 'd' (tree 'Events') has the column 'Jet_pt'"
    assert len(lab.list_tasks()) == before

    for path in ("/api/datasets/nope", "/api/tasks/999/report", "/api/tasks/999/partial"):
        r = raw.get(path)
        assert r.status_code == 404 and ("nope" in _detail(r) or "999" in _detail(r)), path

    file = {k: ds.files[0][k] for k in ("path", "tree", "entries", "size_bytes", "clusters")}
    register = {"name": "e", "tree": "Events"}
    for body, words in [
        ({"files": [{**file, "entries": -1}]}, "entries"),
        ({"files": [{**file, "clusters": [0, 60, 50, 100]}]}, "clusters must rise strictly"),
        ({"files": [{**file, "clusters": [0, 50]}]}, "clusters must rise strictly"),
        ({"files": [{**file, "file_index": 0}, {**file, "file_index": 0}]},
         "file_index: [0] given to more than one file"),
        ({"files": [{**file, "file_index": 1}],
          "bad_files": [{"path": "x.root", "reason": "file not found"}]},
         "give it for every file and bad file, or none"),
        ({"bad_files": [{"path": "x.root", "reason": ""}]}, "reason"),
        ({"tree": 3}, "tree"),
    ]:
        r = raw.post("/api/datasets", json={**register, **body})
        assert (r.status_code, words in _detail(r)) == (422, True), (body, r.text)
    r = raw.post("/api/datasets", json={"name": "d", "tree": "Events", "files": [file]})
    assert r.status_code == 409 and "replace=True" in _detail(r)
    assert list(lab.datasets.list().index) == ["d"]

    # no files, or no entries: registered, and analysed to an empty result
    r = raw.post("/api/datasets", json={**register, "files": []})
    assert r.status_code == 201
    key = {"Idempotency-Key": "0f6c5d1e-analysis"}
    r = raw.post("/api/analyses", json={**submit, "dataset": "e"}, headers=key)
    assert r.status_code == 201
    assert lab.wait(r.json()["task"], timeout=60)["state"] == "done"
    # the same request with its key again (its answer lost): the same task, none made;
    # the key with another request: refused
    again = raw.post("/api/analyses", json={**submit, "dataset": "e"}, headers=key)
    assert (again.status_code, again.json()) == (200, r.json())
    other = raw.post("/api/analyses", json={**submit, "dataset": "d"}, headers=key)
    assert other.status_code == 422 and "used for a different request" in _detail(other)
    assert len(lab.list_tasks()) == before + 1
