"""The command line, as a user runs it: real subprocesses, exit codes, --json."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

COMMANDS = ["server", "pilot", "tasks", "jobs", "output", "kill", "retry", "sites", "demo",
            "make-sample"]


def cli(*args, home=None, check=False, timeout=120):
    env = dict(os.environ)
    if home is not None:
        env["PANDA_LAB_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "panda_lab.cli.main", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout,
                          check=check)


def square(x):
    return x * x


def fail(x):
    raise RuntimeError("nope")


def test_help_and_usage_errors():
    r = cli("--help")
    assert r.returncode == 0
    for c in COMMANDS:
        assert c in r.stdout
        assert cli(c, "--help").returncode == 0
    assert cli("server", "start", "--help").returncode == 0
    r = cli("frobnicate")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = cli("make-sample", "/tmp/x", "--files", "0")
    assert r.returncode == 2


def test_no_server_means_exit_3(tmp_path):
    r = cli("tasks", home=tmp_path)
    assert r.returncode == 3 and "no panda-lab server" in r.stderr
    r = cli("server", "status", home=tmp_path)
    assert r.returncode == 3 and "not running" in r.stdout


def test_server_start_status_stop(tmp_path):
    home = tmp_path / "h"
    try:
        r = cli("server", "start", home=home)
        assert r.returncode == 0, r.stderr
        assert "running at http://127.0.0.1:" in r.stdout
        conn = home / "server.json"
        assert stat.S_IMODE(conn.stat().st_mode) == 0o600
        info = json.loads(conn.read_text())
        assert {"url", "user_token", "pilot_token", "pid"} <= set(info)
        status = json.loads(cli("server", "status", "--json", home=home).stdout)
        assert status["running"] is True and status["url"] == info["url"]
        assert status["monitor"] == info["url"].rstrip("/") + "/monitor/"
        assert status["connection_file"] == str(conn)
        text = cli("server", "status", home=home).stdout
        assert f"web monitor at {status['monitor']}" in text and str(conn) in text
        again = cli("server", "start", home=home)  # idempotent: finds the running one
        assert again.returncode == 0 and info["url"] in again.stdout
        sites = json.loads(cli("sites", "--json", home=home).stdout)
        assert {s["kind"] for s in sites} == {"grid", "cloud", "hpc"}
    finally:
        r = cli("server", "stop", home=home)
    assert r.returncode == 0 and "stopped" in r.stdout
    status = json.loads(cli("server", "status", "--json", home=home).stdout)
    assert status["running"] is False
    assert not (home / "server.json").exists()


def test_pbook_verbs_against_a_running_server(server, lab):
    home = server.home
    ok = lab.submit(square, [(i,) for i in range(4)], name="cli-ok")
    bad = lab.submit(fail, [(0,), (1,)], name="cli-bad")
    lab.wait(ok, timeout=60)
    lab.wait(bad, timeout=60)
    tasks = json.loads(cli("tasks", "--json", home=home).stdout)
    by_name = {t["name"]: t for t in tasks}
    assert by_name["cli-ok"]["state"] == "done" and by_name["cli-bad"]["state"] == "failed"
    table = cli("tasks", home=home).stdout
    assert "cli-ok" in table and "done" in table
    jobs = json.loads(cli("jobs", "cli-bad", "--json", home=home).stdout)
    assert len(jobs) == 2 and {j["error_category"] for j in jobs} == {"user"}
    r = cli("retry", str(bad), "--json", home=home)
    assert r.returncode == 0 and len(json.loads(r.stdout)["jobs"]) == 2
    lab.wait(bad, timeout=60)
    jobs = json.loads(cli("jobs", str(bad), "--all", "--json", home=home).stdout)
    assert sorted(j["attempt"] for j in jobs) == [1, 1, 2, 2]
    r = cli("kill", str(ok), home=home)
    assert r.returncode == 2 and "nothing to kill" in r.stderr
    r = cli("jobs", "999", home=home)
    assert r.returncode == 2 and "999" in r.stderr


def test_task_lease_is_a_server_option(tmp_path):
    home = tmp_path / "h"
    r = cli("server", "run", "--task-lease", "0", home=home)
    assert r.returncode == 2 and "--task-lease 0 must be more than 0 seconds" in r.stderr
    try:
        assert cli("server", "start", "--task-lease", "7.5", "--no-pilots",
                   home=home).returncode == 0
        info = json.loads((home / "server.json").read_text())
        from panda_lab.http import ApiClient, ApiError

        with ApiClient(info["url"], info["user_token"]) as api:
            assert api.get("/api/info")["task_lease"] == 7.5
            reply = api.post("/api/tasks", {"name": "opened", "open": True})
            assert reply["lease_s"] == 7.5
            renewed = api.post(f"/api/tasks/{reply['task']}/lease")
            assert renewed["lease_s"] == 7.5
            api.post(f"/api/tasks/{reply['task']}/close")
            with pytest.raises(ApiError, match=r"HTTP 409: task \d+ is closed"):
                api.post(f"/api/tasks/{reply['task']}/lease")
    finally:
        cli("server", "stop", home=home)


@pytest.mark.parametrize("body, word", [
    ('[sites.A]\nkind = "grod"\n', "kind"),
    ('[sites.A]\nkind = "grid"\ncolour = "red"\n', "colour"),
    ('[sites.A]\npilots = "two"\n', "pilots"),
    ("not toml [", "TOML"),
])
def test_bad_sites_file_names_the_key(tmp_path, body, word):
    path = tmp_path / "sites.toml"
    path.write_text(body)
    r = cli("server", "start", "--sites", path, home=tmp_path / "h")
    assert r.returncode == 2
    assert word in r.stderr


def test_make_sample_is_deterministic(tmp_path):
    import uproot

    for d in ("a", "b"):
        r = cli("make-sample", tmp_path / d, "--files", "2", "--events", "1000",
                "--basket-events", "250")
        assert r.returncode == 0 and "wrote 2 files" in r.stdout
    for name in ("dimuon_000.root", "dimuon_001.root"):
        with uproot.open(tmp_path / "a" / name) as fa, uproot.open(tmp_path / "b" / name) as fb:
            a, b = fa["Events"].arrays(), fb["Events"].arrays()
            assert len(a) == 1000 and a.fields == b.fields
            assert all((a[f] == b[f]).to_list() == [True] * 0 or
                       a[f].to_list() == b[f].to_list() for f in a.fields)


def test_demo_runs_and_checks_its_results(tmp_path):
    r = cli("demo", "--jobs", "30", "--events", "20000", home=tmp_path / "demo", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "result check passed" in r.stdout
    assert "analysis check passed" in r.stdout
    assert "LOCAL-GRID" in r.stdout and "LOCAL-HPC" in r.stdout
