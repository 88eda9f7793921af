"""`panda-lab job ID` says where a job went and where it ran when those differ.

The kind of fault: a record the store keeps that one view shows and another leaves out.
A job taken from a core sibling's queue (store/rows/jobs.py, ``dispatch``) keeps its
decision (sent to LOCAL-GRID) and runs at the pilot's site (LOCAL-CLOUD); the command
printed the first and the site, with nothing to join them but the history.  Members:
the move is printed after the decision's weights; a job not moved prints no such line.
No server: the job's record as ``GET /api/jobs/ID`` gives it.
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

from rich.console import Console

from panda_lab.cli.verbs import _job
from panda_lab.store.rows.jobs import MOVED_WHY


def shown(record: dict) -> str:
    lab = SimpleNamespace(api=SimpleNamespace(get=lambda path, **kw: record))
    console = Console(record=True, width=300)
    assert _job(lab, argparse.Namespace(job=record["id"], json=False), console) == 0
    return console.export_text()


def record(moved: bool) -> dict:
    info = {"picked": "LOCAL-GRID", "sites": ["ANY"],
            "weights": {"LOCAL-GRID": 0.5, "LOCAL-CLOUD": 0.5}}
    if moved:
        info["moved"] = {"from": "LOCAL-GRID", "to": "LOCAL-CLOUD", "pilot": 2, "at": 1.0,
                         "why": MOVED_WHY.format(site="LOCAL-CLOUD", from_="LOCAL-GRID")}
    return {"id": 5, "task_id": 1, "job_index": 0, "attempt": 1, "max_attempts": 3,
            "state": "activated", "site": "LOCAL-CLOUD" if moved else "LOCAL-GRID",
            "pilot_id": None, "broker_info": info, "history": [], "attempts": [5]}


def test_a_moved_job_says_where_it_was_taken_from():
    out = shown(record(moved=True))
    lines = out.splitlines()
    at = lines.index("  sent to LOCAL-GRID among ANY")
    assert lines[at + 3] == ("  then taken by a pilot of LOCAL-CLOUD, whose pilots share this "
                             "machine's cores with LOCAL-GRID's and had no job of their own "
                             "waiting")


def test_a_job_not_moved_prints_no_such_line():
    assert "then taken" not in shown(record(moved=False))
