"""Any text a job produces reaches the user; none of it can crash a pilot or the server.

The kind: text that Python holds but the way out refuses.  A job's stdout and stderr, the
message and traceback of what it raised, and the free text of its report are the user's,
and may hold lone surrogates (``os.fsdecode``/``os.listdir`` of a file name that is not
UTF-8), NUL (PostgreSQL refuses it in ``text``), ANSI escape codes, a 10 MB line or a
million lines.  The rule (``panda_lab.text``): surrogate-escaped bytes leave as ``\\xNN``,
other lone surrogates as ``\\uXXXX``, NUL as ``\\x00``; everything else is kept; messages
and tracebacks are clipped from the middle; the server applies the same rule to reports
and answers a 4xx, never a 500 or a dead thread, to what it refuses.

Members tested, on SQLite and on PostgreSQL where a database is involved:

- the rule itself: ``test_clean_*``, ``test_clip_*``, ``test_strip_ansi_*``,
  ``test_clean_error_*``;
- the capture's tail and its marker (10 MB line, many lines, mid-line cut):
  ``test_capture_*``;
- through real pilots: ``test_printing_an_undecodable_file_name_*`` (the issue's
  example), ``test_every_kind_of_printed_text_*`` (surrogates, NUL, ANSI, a 10 MB line,
  100,000 lines, on stdout and stderr), ``test_the_same_bytes_in_an_exception_*``
  (message, traceback, event stream, re-raised type), ``test_a_10_mb_exception_message_*``,
  ``test_a_result_holding_*`` (a result's values are pickled, not text: they come back
  unchanged);
- the full output: ``test_a_job_killed_at_its_walltime_keeps_*``,
  ``test_output_past_the_limit_*``;
- the server's defence: ``test_a_report_with_surrogate_and_nul_escapes_*``,
  ``test_bad_bytes_and_bad_text_get_a_4xx_*``;
- the views: ``test_cli_*``, ``test_monitor_errors_*``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import httpx
import pytest
from harness import ServerProcess, wait_for

from panda_lab.output import TAIL, Capture, split_tail
from panda_lab.text import (
    MESSAGE_LIMIT,
    TRACEBACK_LIMIT,
    clean,
    clean_error,
    clip,
    strip_ansi,
)

BAD = os.fsdecode(b"a\xdf")          # what os.listdir gives for a Latin-1 file name
BAD_SHOWN = "a\\xdf"
RED = "\x1b[31mred\x1b[0m"


# ---- the rule ----------------------------------------------------------------------------
@pytest.mark.parametrize("raw, shown", [
    (BAD, BAD_SHOWN),                                  # surrogate-escaped byte
    ("x\ud800y", "x\\ud800y"),                         # any other lone surrogate
    ("nul\x00here", "nul\\x00here"),                   # PostgreSQL refuses NUL
    (RED, RED),                                        # ANSI codes are kept
    ("été ∑ 🐼\r\t", "été ∑ 🐼\r\t"),                   # valid text is untouched
    ("", ""),
])
def test_clean_makes_valid_utf8_without_nul_and_keeps_the_rest(raw, shown):
    assert clean(raw) == shown
    clean(raw).encode("utf-8")  # no error: valid UTF-8
    assert clean(clean(raw)) == clean(raw)  # the pilot and the server may both apply it


def test_clip_keeps_head_and_tail_around_a_marker():
    assert clip("short", 10) == "short"
    text = "H" * 100 + "T" * 100
    out = clip(text, 50)
    assert out.startswith("H" * 25) and out.endswith("T" * 25)
    assert "[... 150 characters dropped ...]" in out


def test_strip_ansi_drops_colours_and_titles_only():
    assert strip_ansi(f"{RED} plain \x1b]0;title\x07end \x1b[2K") == "red plain end "


def test_clean_error_cleans_and_clips_message_and_traceback_not_the_pickle():
    err = {"category": "user", "message": BAD * (MESSAGE_LIMIT + 1),
           "traceback": "\x00" * (TRACEBACK_LIMIT + 1), "exception": b"\x00\xdf"}
    out = clean_error(err)
    assert len(out["message"]) < MESSAGE_LIMIT + 100 and out["message"].startswith(BAD_SHOWN)
    assert "characters dropped" in out["message"] and "\x00" not in out["traceback"]
    assert out["exception"] == b"\x00\xdf" and out["category"] == "user"


# ---- the capture -----------------------------------------------------------------------
def test_capture_tail_starts_at_a_line_and_says_what_it_leaves_out():
    c = Capture(42)
    for i in range(1, 2001):
        print(f"line {i:04d} of 2000", file=c)
    lines, chars, mark, body = split_tail(c.tail())
    assert mark.startswith("[... ") and "`panda-lab output 42` or lab.job_output(42)" in mark
    shown = body.splitlines()
    assert all(re.fullmatch(r"line \d{4} of 2000", s) for s in shown)  # no cut line
    assert shown[-1] == "line 2000 of 2000" and lines + len(shown) == 2000
    assert chars + len(body) == c.chars == 2000 * len("line 0001 of 2000\n")
    assert len(body) <= TAIL


def test_capture_of_a_10_mb_line_says_it_starts_mid_line():
    c = Capture(1)
    c.write("x" * 10_000_000)
    lines, chars, mark, body = split_tail(c.tail())
    assert "starts mid-line" in mark and lines == 0 and chars == 10_000_000 - TAIL
    assert body == "x" * TAIL
    c.write("\nend\n")
    assert split_tail(c.tail())[3] == "end\n"  # a whole line as soon as there is one


def test_capture_counts_cleaned_text_so_marker_counts_are_exact():
    c = Capture(1)
    c.write(BAD + "\x00\n")
    assert c.tail() == BAD_SHOWN + "\\x00\n" and c.chars == len(BAD_SHOWN) + 5
    with pytest.raises(TypeError, match="must be str"):
        c.write(b"bytes")


def test_capture_with_a_spool_it_cannot_open_still_gives_its_tail(tmp_path):
    c = Capture(1, tmp_path / "no-such-dir" / "1.stdout", limit=100)
    print(BAD, file=c)
    c.flush()
    c.finish()
    assert c.tail() == BAD_SHOWN + "\n"


# ---- through real pilots -------------------------------------------------------------------
@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def srv(request, tmp_path_factory):
    """A server on SQLite or PostgreSQL with its local pilots, shared by the module's
    tests on that database (each looks at its own task only)."""
    home = tmp_path_factory.mktemp("home")
    url = (f"sqlite:///{home / 'panda-lab.sqlite'}" if request.param == "sqlite"
           else request.getfixturevalue("postgres").new_database())
    s = ServerProcess(home, db_url=url).start()
    yield s
    s.stop()


def print_undecodable_name(x):
    print(os.fsdecode(b"a\xdf"))
    return x


def _pilot_of(lab, task):
    job = lab.jobs(task)[0]
    return job, next(p for p in lab.pilots() if p["id"] == job["pilot_id"])


def test_printing_an_undecodable_file_name_finishes_and_the_pilot_lives(srv):
    """The issue's example: each pilot running it died reporting its output, and after
    three dead pilots the job ended as a system error."""
    lab = srv.lab()
    task = lab.submit(print_undecodable_name, [(1,)], name="fsdecode", site="LOCAL-GRID")
    info = lab.wait(task, timeout=60)
    job, pilot = _pilot_of(lab, task)
    assert info["state"] == "done", lab.jobs(task, all_attempts=True)
    assert job["attempt"] == 1 and job["stdout_tail"] == BAD_SHOWN + "\n"
    assert lab.results(task) == {0: 1}
    # the same pilot lives on and takes the next job
    again = lab.submit(print_undecodable_name, [(2,)], name="again", site="LOCAL-GRID")
    assert lab.wait(again, timeout=60)["state"] == "done"
    _, pilot2 = _pilot_of(lab, again)
    assert pilot2["id"] == pilot["id"] and pilot2["state"] == "running"


def noisy(kind):
    import sys

    text = {
        "surrogate": os.fsdecode(b"a\xdf") + "|\ud800|\udfff",
        "nul": "before\x00after",
        "ansi": "\x1b[31mred\x1b[0m \x1b]0;title\x07",
    }.get(kind)
    if text is not None:
        print(text)
        print(text, file=sys.stderr)
    elif kind == "long line":
        sys.stdout.write("L" * 10_000_000 + "\nend\n")
    elif kind == "many lines":
        sys.stdout.write("".join(f"{i}\n" for i in range(100_000)))
        print(os.fsdecode(b"\xff"), file=sys.stderr)
    return kind


def test_every_kind_of_printed_text_finishes_and_shows_cleaned(srv):
    lab = srv.lab()
    kinds = ["surrogate", "nul", "ansi", "long line", "many lines"]
    task = lab.submit(noisy, [(k,) for k in kinds], name="noisy")
    info = lab.wait(task, timeout=120)
    jobs = {kinds[j["job_index"]]: j for j in lab.jobs(task, all_attempts=True)}
    assert info["state"] == "done" and len(jobs) == len(kinds), jobs  # no retry at all
    assert lab.results(task) == dict(enumerate(kinds))
    want = {"surrogate": "a\\xdf|\\ud800|\\udfff\n", "nul": "before\\x00after\n",
            "ansi": RED + " \x1b]0;title\x07\n"}
    for kind, text in want.items():
        assert jobs[kind]["stdout_tail"] == text and jobs[kind]["stderr_tail"] == text
    long = jobs["long line"]
    lines, chars, _, body = split_tail(long["stdout_tail"])
    assert body == "end\n" and lines == 1 and chars == 10_000_001
    full = lab.job_output(long["id"])
    assert full.startswith("L" * 1000) and full.endswith("\nend\n")
    assert "past the output limit of 4,000,000 characters" in full
    many = jobs["many lines"]
    lines, _, _, body = split_tail(many["stdout_tail"])
    assert lines + len(body.splitlines()) == 100_000 and body.endswith("99999\n")
    assert lab.job_output(many["id"]) == "".join(f"{i}\n" for i in range(100_000))
    assert many["stderr_tail"] == "\\xff\n" == lab.job_output(many["id"], "stderr")


def raise_with_bad_text(x):
    raise ValueError(f"cannot open {os.fsdecode(b'a' + bytes([0xdf]))}\x00\ud800")


def test_the_same_bytes_in_an_exception_fail_the_job_as_a_user_error(srv):
    lab = srv.lab()
    events: list[dict] = []
    stop = threading.Event()

    def listen():
        for ev in lab.api.events(ping=0.2):
            events.append(ev)
            if stop.is_set():
                return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    time.sleep(0.3)
    task = lab.submit(raise_with_bad_text, [(0,)], name="bad-exc", retries=2)
    info = lab.wait(task, timeout=60)
    stop.set()
    attempts = lab.jobs(task, all_attempts=True)
    assert info["state"] == "failed" and len(attempts) == 1  # a user error: not retried
    job = attempts[0]
    shown = "cannot open a\\xdf\\x00\\ud800"
    assert job["error_category"] == "user" and job["error_message"] == f"ValueError: {shown}"
    assert shown in job["error_traceback"] and "raise_with_bad_text" in job["error_traceback"]
    err = lab.task(task).errors()[0]
    assert isinstance(err, ValueError)
    wait_for(lambda: any(j.get("error") == f"ValueError: {shown}"
                         for e in events for j in e.get("jobs", [])), 10,
             what="the failure on the event stream")


def raise_huge(x):
    raise RuntimeError("m" * 10_000_000)


def test_a_10_mb_exception_message_is_clipped_not_lost(srv):
    lab = srv.lab()
    task = lab.submit(raise_huge, [(0,)], name="huge-exc")
    assert lab.wait(task, timeout=120)["state"] == "failed"
    job = lab.jobs(task, all_attempts=True)
    assert len(job) == 1 and job[0]["error_category"] == "user"
    assert "characters dropped" in job[0]["error_message"]
    assert len(job[0]["error_message"]) < MESSAGE_LIMIT + 100
    assert len(job[0]["error_traceback"]) < TRACEBACK_LIMIT + 100


def list_names(x):
    return [os.fsdecode(b"a\xdf"), "\x00", RED]


def test_a_result_holding_the_same_text_comes_back_unchanged(srv):
    """A result's values are pickled, not text: nothing is cleaned from them."""
    lab = srv.lab()
    task = lab.submit(list_names, [(0,)], name="names")
    assert lab.wait(task, timeout=60)["state"] == "done"
    assert lab.results(task) == {0: [BAD, "\x00", RED]}


# ---- full output kept ------------------------------------------------------------------
def print_then_hang(n):
    for i in range(n):
        print(f"step {i}", flush=True)
    time.sleep(60)


def test_a_job_killed_at_its_walltime_keeps_its_spooled_output(server):
    lab = server.lab()
    task = lab.submit(print_then_hang, [(5000,)], name="hang", walltime_s=2.0, retries=0)
    assert lab.wait(task, timeout=60)["state"] == "failed"
    job = lab.jobs(task)[0]
    assert job["error_category"] == "timeout"
    assert split_tail(job["stdout_tail"])[3].endswith("step 4999\n")
    assert lab.job_output(job["id"]) == "".join(f"step {i}\n" for i in range(5000))


def print_lines(n):
    for i in range(n):
        print(f"line {i}")


def test_output_past_the_limit_keeps_head_marker_and_tail(server):
    lab = server.lab()
    task = lab.submit(print_lines, [(20_000,)], name="limited", output_limit=1000)
    assert lab.wait(task, timeout=60)["state"] == "done"
    job = lab.jobs(task)[0]
    full = lab.job_output(job["id"])
    head, rest = full.split("\n[... ", 1)
    assert "".join(f"line {i}\n" for i in range(200)).startswith(head) and len(head) == 1000
    assert "past the output limit of 1,000 characters dropped" in rest
    assert "raise it with output_limit=" in rest and rest.endswith("line 19999\n")
    with pytest.raises(Exception, match="404"):
        lab.job_output(999_999)


# ---- the server's defence ---------------------------------------------------------------
@pytest.fixture
def bare(db_url, home):
    s = ServerProcess(home, db_url=db_url, extra=["--no-pilots"]).start()
    yield s
    s.stop()


def _pilot_http(s):
    h = {"Authorization": f"Bearer {s.info['pilot_token']}", "Content-Type": "application/json"}
    return httpx.Client(base_url=s.info["url"], headers=h, timeout=30)


def test_a_report_with_surrogate_and_nul_escapes_is_stored_cleaned(bare):
    """A pilot that does not apply the rule (JSON may escape anything): its report is
    taken, cleaned, on PostgreSQL too, rather than refused with all its batch."""
    lab = bare.lab()
    task = lab.submit(print_undecodable_name, [(0,)], name="raw", site="LOCAL-GRID")
    with _pilot_http(bare) as http:
        pilot = http.post("/api/pilot/register", json={"site": "LOCAL-GRID", "host": "h",
                                                       "pid": 1}).json()["pilot"]
        job = http.post("/api/pilot/acquire", json={"pilot": pilot, "site": "LOCAL-GRID",
                                                    "n": 1}).json()["jobs"][0]
        # JSON escapes, as any JSON encoder may write them: \udcdf is a lone surrogate
        body = ('{"pilot": PILOT, "updates": [{"id": JOB, "attempt": 1, "state": "failed", '
                '"stdout": "a\\udcdf\\u0000", "stderr": "\\ud800", "error": {"category": '
                '"user", "message": "m\\u0000\\udcdf", "traceback": "t\\u0000"}}]}'
                ).replace("PILOT", str(pilot)).replace("JOB", str(job["id"]))
        r = http.post("/api/pilot/update", content=body.encode())
        assert r.status_code == 200, r.text
    row = lab.jobs(task)[0]
    assert row["state"] == "failed" and row["stdout_tail"] == "a\\xdf\\x00"
    assert row["stderr_tail"] == "\\ud800" and row["error_message"] == "m\\x00\\xdf"
    assert row["error_traceback"] == "t\\x00"


def test_bad_bytes_and_bad_text_get_a_4xx_and_the_server_goes_on(bare):
    lab = bare.lab()
    user = {"Authorization": f"Bearer {bare.info['user_token']}",
            "Content-Type": "application/json"}
    with _pilot_http(bare) as http:
        r = http.post("/api/pilot/update", content=b'{"pilot": 1, "updates": [{"x": "a\xdf"}]}')
        assert 400 <= r.status_code < 500, r.text
        r = http.put("/api/pilot/output/1/1", params={"stream": "stdout"}, content=b"a\xdf")
        assert r.status_code == 422 and "not UTF-8" in r.text
        r = http.put("/api/pilot/output/999/999", content=b"fine")
        assert r.status_code == 404
        r = httpx.post(bare.info["url"] + "/api/tasks", headers=user,
                       content=b'{"name": "a\\udcdf", "jobs": []}')
        assert r.status_code == 422 and "name" in r.text
        r = httpx.post(bare.info["url"] + "/api/tasks", headers=user,
                       content=b'{"name": "n", "jobs": [], "options": {"output_limit": -1}}')
        assert r.status_code == 422 and "output_limit" in r.text
    assert lab.sites()  # still serving


# ---- the views ---------------------------------------------------------------------------
def raise_markup(x):
    raise ValueError("expected [/] or [bold] here \x1b[31mred\x1b[0m " + os.fsdecode(b"\xdf"))


def cli(*args, home):
    env = dict(os.environ, PANDA_LAB_HOME=str(home), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "panda_lab.cli.main", *map(str, args)],
                          capture_output=True, env=env, timeout=60)


def test_cli_shows_any_message_and_prints_a_jobs_full_output(server):
    lab = server.lab()
    bad = lab.submit(raise_markup, [(0,)], name="[/]markup")
    talk = lab.submit(print_lines, [(3000,)], name="talk")
    lab.wait(bad, timeout=60)
    lab.wait(talk, timeout=60)
    r = cli("jobs", bad, home=server.home)
    assert r.returncode == 0, r.stderr
    assert b"expected [/] or [bold]" in r.stdout and b"\x1b[31m" not in r.stdout
    r = cli("tasks", home=server.home)
    assert r.returncode == 0 and b"[/]markup" in r.stdout
    job = lab.jobs(talk)[0]
    assert split_tail(job["stdout_tail"])[0] > 0  # the tail alone does not hold it
    r = cli("output", job["id"], home=server.home)
    assert r.returncode == 0 and r.stdout.decode() == "".join(f"line {i}\n"
                                                              for i in range(3000))
    r = cli("output", job["id"], "--stderr", home=server.home)
    assert r.returncode == 0 and r.stdout == b""
    assert json.loads(cli("jobs", bad, "--json", home=server.home).stdout)[0][
        "error_message"].endswith("\\xdf")


def test_monitor_errors_escape_html_and_drop_ansi():
    from panda_lab.widgets.monitor import errors_html
    from panda_lab.widgets.snapshot import ErrorGroup, TaskSnapshot

    group = ErrorGroup("user", "<b>x</b> \x1b[31mred\x1b[0m a\\xdf", 2, 7,
                       "Traceback\n\x1b[1mValueError\x1b[0m: <b>")
    snap = TaskSnapshot(1, "t", "failed", 2, 0, {"failed": 2}, {}, [group], 0.0)
    out = errors_html(snap)
    assert "&lt;b&gt;x&lt;/b&gt; red a\\xdf" in out and "\x1b" not in out
    assert "ValueError: &lt;b&gt;" in out
