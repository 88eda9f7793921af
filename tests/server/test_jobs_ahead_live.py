"""Short jobs are acquired two at a time, through real pilots, and a task's last jobs one by
one.

The kind of fault, through the whole path (pilot, HTTP, server, store): an acquisition per
job for jobs so short that the round trip is a visible share of their time; or jobs held
ahead at a task's end, where an idle pilot could have run them.  The rule itself is tested
on both backends in tests/store/test_jobs_ahead.py; here, two real pilots on one site run
a task of short jobs, and the jobs' status history says which acquisition handed out
which job (the ``sent`` rows of one acquisition share its time and pilot).
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter

from harness import ServerProcess


def short(i: int) -> int:
    time.sleep(0.15)  # longer than a pilot's fill_seconds, shorter than AHEAD_S
    return i


def test_the_bulk_is_acquired_two_at_a_time_and_the_last_jobs_one_by_one(home, tmp_path):
    sites = tmp_path / "sites.toml"
    sites.write_text('[sites.LOCAL]\nkind = "local"\npilots = 2\n')
    server = ServerProcess(home, extra=["--sites", str(sites)]).start()
    try:
        lab = server.lab()
        with lab.executor(name="warm") as ex:  # both pilots measure their jobs first
            assert list(ex.map(short, range(4))) == list(range(4))
        with lab.executor(name="short") as ex:
            assert list(ex.map(short, range(30))) == list(range(30))
        task = max(t["id"] for t in lab.list_tasks())
        lab.close()
    finally:
        server.stop()
    db = sqlite3.connect(home / "panda-lab.sqlite")
    sent = db.execute(
        "SELECT s.time, s.info FROM job_status s JOIN jobs j ON j.id = s.job_id "
        "WHERE j.task_id = ? AND s.state = 'sent' ORDER BY s.time", (task,)).fetchall()
    db.close()
    sizes = list(Counter(sent).values())  # jobs per acquisition, in order
    assert sum(sizes) == 30
    assert 2 in sizes and len(sizes) <= 22, sizes
    # the site keeps two jobs per slot for the other pilot: the last four go one by one
    assert sizes[-4:] == [1, 1, 1, 1], sizes
