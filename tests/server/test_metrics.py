"""``/metrics``: what the collector reads from the store, the event counters, the thread
rule, the scrape token; then a real Prometheus scraping a real server."""

from __future__ import annotations

import base64
import threading
import time

import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from panda_lab.model import JobState, PilotState, TaskState
from panda_lab.server.app import Server, create_app
from panda_lab.server.config import ServerConfig
from panda_lab.server.metrics import families
from panda_lab.store.rows.metrics import MetricCounts

B64 = base64.b64encode(b"x").decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted label items): value}`` of a text exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """A real app and SQLite store, no pilots: ``(client, server, headers by role)``."""
    server = Server(ServerConfig(home=tmp_path_factory.mktemp("metrics-home"),
                                 provision=False, scrape_token="scrape-me"))
    with TestClient(create_app(server)) as client:
        yield client, server, {
            "user": {"Authorization": f"Bearer {server.user_token}"},
            "pilot": {"Authorization": f"Bearer {server.pilot_token}"},
            "scrape": {"Authorization": "Bearer scrape-me"}}
    server.close()


def test_families_show_every_state_for_every_site_and_the_oldest_heartbeat():
    c = MetricCounts(jobs={("running", "A"): 2, ("finished", "B"): 5, ("defined", ""): 1},
                     tasks={"running": 1, "done": 2}, pilots={("A", "running"): 3},
                     oldest_heartbeat={"A": 990.0}, sites=["A", "B"])
    got = samples(generate_latest(_Registry(families(c, 4, 1000.0))).decode())
    assert got[("panda_lab_jobs", (("site", "A"), ("state", "running")))] == 2
    assert got[("panda_lab_jobs", (("site", "B"), ("state", "finished")))] == 5
    assert got[("panda_lab_jobs", (("site", ""), ("state", "defined")))] == 1
    assert got[("panda_lab_jobs", (("site", "B"), ("state", "running")))] == 0
    assert sum(1 for k in got if k[0] == "panda_lab_jobs") == 2 * len(JobState) + 1
    assert {k[1][0][1] for k in got if k[0] == "panda_lab_tasks"} == {str(s) for s in TaskState}
    assert got[("panda_lab_tasks", (("state", "done"),))] == 2
    assert got[("panda_lab_pilots", (("site", "A"), ("state", "running")))] == 3
    assert got[("panda_lab_pilots", (("site", "B"), ("state", "lost")))] == 0
    assert got[("panda_lab_pilot_heartbeat_age_seconds", (("site", "A"),))] == 10.0
    assert ("panda_lab_pilot_heartbeat_age_seconds", (("site", "B"),)) not in got
    assert got[("panda_lab_event_stream_clients", ())] == 4


class _Registry:
    """A registry of fixed families, for ``generate_latest``."""

    def __init__(self, fams):
        self.fams = fams

    def collect(self):
        return iter(self.fams)


def _work(client, server, h) -> dict:
    """Two tasks at one site, a pilot that takes three jobs and reports one finished,
    one failed and a stale report: what the metrics must then say."""
    site = server.config.sites[0].name
    for name, n in (("a", 3), ("b", 2)):
        r = client.post("/api/tasks", headers=h["user"], json={
            "name": name, "site": site, "jobs": [{"payload": B64}] * n,
            "options": {"max_attempts": 1}})
        assert r.status_code == 201, r.text
    p = client.post("/api/pilot/register", headers=h["pilot"],
                    json={"site": site, "host": "h", "pid": 1}).json()["pilot"]
    got = client.post("/api/pilot/acquire", headers=h["pilot"],
                      json={"pilot": p, "site": site, "n": 3}).json()["jobs"]
    assert len(got) == 3
    (j1, j2, _) = got
    r = client.post("/api/pilot/update", headers=h["pilot"], json={"pilot": p, "updates": [
        {"id": j1["id"], "attempt": 1, "state": "finished", "result": B64},
        {"id": j2["id"], "attempt": 1, "state": "failed",
         "error": {"category": "payload", "message": "no"}},
        {"id": j2["id"], "attempt": 7, "state": "running"}]})
    assert len(r.json()["ignored"]) == 1
    return {"site": site, "pilot": p}


def test_metrics_say_what_the_store_holds_and_what_happened(app):
    client, server, h = app
    w = _work(client, server, h)
    site = w["site"]
    sub = server.bus.subscribe()
    try:
        r = client.get("/metrics", headers=h["scrape"])
    finally:
        server.bus.unsubscribe(sub)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    got = samples(r.text)

    # the truth, read through the API rather than the collector's query
    expected: dict[tuple[str, str], int] = {}
    task_states: dict[str, int] = {}
    for t in client.get("/api/tasks", headers=h["user"]).json():
        task_states[t["state"]] = task_states.get(t["state"], 0) + 1
        for j in client.get(f"/api/tasks/{t['id']}/jobs", headers=h["user"],
                            params={"all_attempts": True}).json():
            key = (j["state"], j["site"] or "")
            expected[key] = expected.get(key, 0) + 1
    assert expected == {("finished", site): 1, ("failed", site): 1, ("sent", site): 1,
                        ("activated", site): 2}
    shown = {(dict(k[1])["state"], dict(k[1])["site"]): v
             for k, v in got.items() if k[0] == "panda_lab_jobs" and v}
    assert shown == expected
    assert sum(task_states.values()) == 2
    assert {dict(k[1])["state"]: v for k, v in got.items()
            if k[0] == "panda_lab_tasks" and v} == task_states
    assert got[("panda_lab_pilots", (("site", site), ("state", "running")))] == 1
    assert 0 <= got[("panda_lab_pilot_heartbeat_age_seconds", (("site", site),))] < 60
    assert got[("panda_lab_event_stream_clients", ())] == 1
    assert got[("panda_lab_jobs_dispatched_total", (("site", site),))] == 3
    assert got[("panda_lab_job_reports_total", (("state", "finished"),))] == 1
    assert got[("panda_lab_job_reports_total", (("state", "failed"),))] == 1
    assert got[("panda_lab_job_reports_total", (("state", "running"),))] == 1
    assert got[("panda_lab_job_reports_ignored_total", ())] == 1
    assert got[("panda_lab_brokerage_seconds_count", ())] == 2  # one round per submission
    assert got[("panda_lab_brokerage_seconds_sum", ())] > 0


def test_a_collection_from_another_thread_goes_through_the_loop(app):
    """The store belongs to the event loop's thread: a scrape asked from elsewhere (a
    push gateway's thread, a test) is handed to the loop, not refused."""
    server = app[1]
    assert server.store.owner is not threading.current_thread()
    text = generate_latest(server.metrics.registry).decode()
    assert "panda_lab_jobs{" in text and "panda_lab_tasks{" in text


@pytest.mark.parametrize("role,status", [("scrape", 200), ("user", 200), ("pilot", 403),
                                         (None, 401)])
def test_metrics_take_the_scrape_or_user_token_only(app, role, status):
    client, _, h = app
    r = client.get("/metrics", headers=h[role] if role else {})
    assert r.status_code == status, r.text


def test_the_scrape_token_opens_nothing_else(app):
    client, _, h = app
    for path in ("/api/tasks", "/api/info", "/api/openapi.json"):
        r = client.get(path, headers=h["scrape"])
        assert r.status_code == 403 and "not allowed" in r.json()["detail"], path
    r = client.post("/api/pilot/heartbeat", headers=h["scrape"], json={"pilot": 1})
    assert r.status_code == 403


def test_heartbeat_age_is_of_the_oldest_running_pilot(app):
    client, server, h = app
    site = server.config.sites[1].name
    ids = [client.post("/api/pilot/register", headers=h["pilot"],
                       json={"site": site, "host": "h", "pid": i}).json()["pilot"]
           for i in (1, 2, 3)]
    old = time.time() - 120
    with server.store.engine.begin() as conn:  # a pilot silent for two minutes, one gone
        from sqlalchemy import update

        from panda_lab.store.schema import pilots
        conn.execute(update(pilots).where(pilots.c.id == ids[0]).values(heartbeat_at=old))
        conn.execute(update(pilots).where(pilots.c.id == ids[1]).values(
            heartbeat_at=old - 1000, state=str(PilotState.FINISHED)))
    got = samples(client.get("/metrics", headers=h["scrape"]).text)
    assert 119 < got[("panda_lab_pilot_heartbeat_age_seconds", (("site", site),))] < 180
    assert got[("panda_lab_pilots", (("site", site), ("state", "running")))] == 2
    assert got[("panda_lab_pilots", (("site", site), ("state", "finished")))] == 1


# ---- a real Prometheus scraping a real server ------------------------------------------------

def double(x):
    return 2 * x


def refuse(x):
    raise ValueError(f"no {x}")


PROMETHEUS_YML = """\
global:
  scrape_interval: 500ms
  scrape_timeout: 400ms
scrape_configs:
  - job_name: panda-lab
    metrics_path: /metrics
    authorization:
      type: Bearer
      credentials_file: {token}
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


def _prometheus_binary() -> str:
    import os
    import shutil

    path = shutil.which("prometheus") or ("/usr/bin/prometheus"
                                          if os.path.exists("/usr/bin/prometheus") else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("Prometheus is not installed, and CI must test it: apt-get install "
                        "prometheus")
        pytest.skip("Prometheus is not installed here (Debian: apt-get install prometheus)")
    return path


@pytest.mark.slow
def test_a_real_prometheus_scrapes_the_job_counts_the_server_holds(tmp_path):
    import subprocess

    import httpx
    from harness import ServerProcess, free_port, wait_for

    binary = _prometheus_binary()
    token = tmp_path / "scrape-token"
    token.write_text("prometheus-may-read\n")
    home = tmp_path / "home"
    home.mkdir()
    server = ServerProcess(home, extra=["--scrape-token-file", str(token)]).start()
    prom = None
    try:
        lab = server.lab()
        good = lab.submit(double, [(i,) for i in range(6)], name="good")
        bad = lab.submit(refuse, [(1,), (2,)], name="bad")
        assert lab.wait(good, timeout=60)["state"] == "done"
        assert lab.wait(bad, timeout=60)["state"] == "failed"
        url, user = server.info["url"], server.info["user_token"]
        expected: dict[tuple[str, str], float] = {}
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {user}"}) as api:
            for task in (good, bad):
                for j in api.get(f"/api/tasks/{task}/jobs",
                                 params={"all_attempts": True}).json():
                    key = (j["state"], j["site"] or "")
                    expected[key] = expected.get(key, 0) + 1
        assert sum(expected.values()) >= 8 and len({s for _, s in expected}) >= 1

        port = free_port()
        (tmp_path / "prometheus.yml").write_text(PROMETHEUS_YML.format(
            token=token, port=server.info["port"]))
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed below
        prom = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def query(q: str) -> list[dict]:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": q},
                              timeout=2)
            except httpx.TransportError:
                return []
            return r.json()["data"]["result"] if r.status_code == 200 else []

        def jobs_seen():
            got = {(r["metric"]["state"], r["metric"]["site"]): float(r["value"][1])
                   for r in query("panda_lab_jobs > 0")}
            return got if got == expected else None

        up = wait_for(lambda: query('up{job="panda-lab"} == 1'), 20, 0.2,
                      what=f"a scrape ({(tmp_path / 'prometheus.log').read_bytes()[-500:]!r})")
        assert up[0]["metric"]["instance"] == f"127.0.0.1:{server.info['port']}"
        try:
            wait_for(jobs_seen, 10, 0.2, what="Prometheus to hold the server's job counts")
        except AssertionError:
            got = {(r["metric"]["state"], r["metric"]["site"]): float(r["value"][1])
                   for r in query("panda_lab_jobs > 0")}
            assert got == expected
        done = query('panda_lab_tasks{state="done"}')
        assert [float(r["value"][1]) for r in done] == [1.0]
        dispatched = query("sum(panda_lab_jobs_dispatched_total)")
        assert float(dispatched[0]["value"][1]) >= sum(expected.values())
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(10)
            log.close()
        server.stop()


def test_the_scrape_token_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    from panda_lab.cli.main import build_parser
    from panda_lab.cli.server_cmd import config_from_args
    from panda_lab.provisioners.config import ConfigError

    def config(*extra):
        return config_from_args(build_parser().parse_args(
            ["--home", str(tmp_path), "server", "run", *extra]))

    monkeypatch.delenv("PANDA_LAB_SCRAPE_TOKEN", raising=False)
    assert config().scrape_token is None
    monkeypatch.setenv("PANDA_LAB_SCRAPE_TOKEN", "from-env")
    assert config().scrape_token == "from-env"
    (tmp_path / "t").write_text("from-file\n")
    assert config("--scrape-token-file", str(tmp_path / "t")).scrape_token == "from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        config("--scrape-token-file", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"--scrape-token-file .*nope"):
        config("--scrape-token-file", str(tmp_path / "nope"))


def test_the_brokerage_timer_passes_the_context_through():
    """The timer wraps the store's brokerage: the links, policy and time the store gives
    reach the brokerage it wraps (dropping them broke every placement)."""
    from prometheus_client import CollectorRegistry, Histogram

    from panda_lab.model.brokerage import Request, SiteLoad
    from panda_lab.server.metrics import TimedBroker

    seen = {}

    class Inner:
        def choose(self, requests, loads, **context):
            seen.update(context)
            return ["placed"]

    h = Histogram("t_seconds", "t", registry=CollectorRegistry())
    timed = TimedBroker(Inner(), h)
    out = timed.choose([Request()], [SiteLoad("S", "grid", "online", 1)], links={},
                       policy="network", now=1.0)
    assert out == ["placed"] and seen == {"links": {}, "policy": "network", "now": 1.0}
    counts = [x.value for x in h.collect()[0].samples if x.name == "t_seconds_count"]
    assert counts == [1]  # one round counted
