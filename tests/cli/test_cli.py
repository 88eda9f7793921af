"""The command line, as a user runs it: real subprocesses, exit codes, --json."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

COMMANDS = ["server", "pilot", "tasks", "jobs", "output", "kill", "retry", "sites", "links",
            "demo", "make-sample"]


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


# ---- the command line as complete as the panel ------------------------------------------
# Kind tested: a verb or option that shows less than the panel, or a raw error for a user's
# slip.  Members: the task list's outcome, failed, events and duration columns and its
# "no tasks" line; one task's summary; jobs filtered by state and limited; one job in
# full; --json on every verb that prints records; a bad --state; a closed pipe; help for
# every option.


def run_main(capsys, *argv) -> tuple[int, str, str]:
    """The command line in this process (no interpreter start per call)."""
    from panda_lab.cli.main import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_option_has_help():
    import argparse

    from panda_lab.cli.main import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, [*path, name])
            elif not isinstance(action, argparse._HelpAction):
                yield " ".join(path), action

    missing = [f"{where}: {'/'.join(a.option_strings) or a.dest}"
               for where, a in walk(build_parser(), ["panda-lab"]) if not a.help]
    assert missing == []


def test_the_task_list_job_and_outcome_verbs(server, lab, capsys):
    home = ["--home", server.home]
    code, out, _ = run_main(capsys, *home, "tasks")
    assert (code, out) == (0, "no tasks\n")
    code, out, _ = run_main(capsys, *home, "tasks", "--state", "failed")
    assert (code, out) == (0, "no tasks in state failed\n")
    task = lab.submit(lambda i: 1 / (i % 2), [(i,) for i in range(4)], name="cli-half",
                      retries=0)
    lab.wait(task, timeout=60)
    summary = lab.task_info(task)["summary"]
    assert summary["label"] == "finished: 2 of 4 jobs failed"
    code, out, _ = run_main(capsys, *home, "tasks")
    assert code == 0
    for word in ("outcome", "failed", "events", "duration", "finished: 2 of 4 jobs failed"):
        assert word in out, word
    code, out, _ = run_main(capsys, *home, "task", task)
    assert code == 0 and out.startswith(f"task {task} 'cli-half': finished: 2 of 4 jobs failed")
    assert f"2 jobs lost: see panda-lab jobs {task} --state failed" in out
    code, out, _ = run_main(capsys, *home, "jobs", task, "--state", "failed", "--limit", "1",
                            "--json")
    (job,) = json.loads(out)
    assert job["state"] == "failed" and job["error_category"] == "user"
    code, out, _ = run_main(capsys, *home, "jobs", task, "--state", "failed")
    assert "[user] ZeroDivisionError" in out and "finished" not in out.split("\n", 3)[3]
    code, out, _ = run_main(capsys, *home, "job", job["id"])
    assert code == 0 and f"job {job['id']}: task {task}, index {job['job_index']}" in out
    for part in ("brokerage:", "  sent to LOCAL-", "weight ", "history:", "  failed",
                 "error [user]:", "ZeroDivisionError", "traceback:", "Traceback"):
        assert part in out, part
    # what the payload used, measured, and its pilot's usage: not 0, not "not measured"
    assert "used: peak memory " in out and " MB, CPU " in out and "not measured" not in out
    assert f"pilot {job['pilot_id']} (running) with its workers: " in out
    assert job["memory_mb"] == 0 and 5 < job["peak_rss_mb"] < 2000 and job["cpu_s"] >= 0
    (pilot,) = lab.api.get("/api/pilots", ids=str(job["pilot_id"]))
    assert pilot["rss_mb"] > job["peak_rss_mb"] / 2 and pilot["cpu_s"] > 0
    code, out, _ = run_main(capsys, *home, "job", job["id"], "--json")
    assert json.loads(out)["history"][-1]["state"] == "failed"
    code, out, _ = run_main(capsys, *home, "output", job["id"], "--json")
    assert json.loads(out)["stream"] == "stdout"
    code, out, _ = run_main(capsys, *home, "task", task, "--json")
    assert json.loads(out)["summary"] == summary
    code, _, err = run_main(capsys, *home, "job", 99999)
    assert code == 2 and "99999" in err
    # a closed pipe (`panda-lab tasks | head` once head has read its lines): no error
    p = subprocess.Popen([sys.executable, "-m", "panda_lab.cli.main", *map(str, home), "tasks"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0 and err == ""


def test_a_bad_state_is_a_readable_usage_error(capsys):
    from panda_lab.cli.main import main
    from panda_lab.http import readable

    with pytest.raises(SystemExit) as exit_:
        main(["tasks", "--state", "finnished"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "invalid choice: 'finnished'" in err
    assert "'done', 'finished', 'failed'" in err  # the states to choose from
    # a validation error the server sends still reads as one line, naming the field
    assert readable([{"loc": ["query", "state"], "msg": "Input should be 'done'",
                      "type": "enum"}]) == "state: Input should be 'done'"

