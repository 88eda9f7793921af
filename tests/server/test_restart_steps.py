"""A server killed at any step of an analysis goes on as if it had not been: same jobs, same result.

The kind: the orchestration of a dataset analysis must rest only on what the database holds, so
that a SIGKILL of the server at any step of a task's life, then a restart, gives the same jobs
(the same entry ranges of the same files) and the same merged histogram as a run without the
restart.  The steps, each a member (``test_a_restart_at_each_step``, on SQLite and PostgreSQL):

* ``submitted``: the scouts are defined, no pilot has run any;
* ``scouting``: two of the three scouts finished, the third waits;
* ``scouted``: every scout finished and was merged, the rest is not sized yet (the server runs
  with ``PANDA_LAB_TEST_HOLD=sizing`` until the kill): the rest must be sized from the scouts'
  measurements, which used to live only in the server's memory;
* ``sized``: the remaining jobs exist, none has run;
* ``running``: some of the remaining jobs finished;
* ``merging``: every job finished but no result is merged (``PANDA_LAB_TEST_HOLD=merging``): the
  task stays open until the restarted server has merged them;
* ``final``: the task is done.

The result holds a histogram and an awkward array, whose concatenation must follow the input
order (file, then entry) even though the scouts of every file run first and a restarted server
merges what it finds in another order.

The task is held at a step by giving the server no pilots of its own (``--no-pilots``) and
starting, by hand, a pilot that runs a given number of jobs and exits; the pilot after the
restart runs the rest.  The inputs are generated with fixed seeds, and the processor is slow
enough (50 ms a chunk) that the scouts' measured rate always sizes the rest at the
1,000-event floor: the jobs are deterministic, so they can be compared exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import awkward as ak
import hist
import numpy as np
import pytest
from harness import ServerProcess, wait_for

from panda_lab.analysis.dimuon import MASS_AXIS, dimuon_mass
from panda_lab.analysis.sample import make_sample
from panda_lab.server.merger import HOLD_ENV
from panda_lab.store import Store

SITE = "LOCAL-GRID"
FILES, EVENTS, BASKET = 3, 30_000, 5_000

#: The scouts (the first 20,000 entries of each file, cut on a cluster boundary), then the rest
#: at the 1,000-event floor, cut on the 5,000-entry clusters: (file, start, stop, scout).
EXPECTED_JOBS = [
    *[(f, 0, 20_000, True) for f in range(FILES)],
    *[(f, a, a + 5_000, False) for f in range(FILES) for a in (20_000, 25_000)],
]
#: What a step holds the task at: (hold, jobs a pilot runs before the kill; None: all).
STEPS = {
    "submitted": (None, 0),
    "scouting": (None, 2),
    "scouted": ("sizing", 3),
    "sized": (None, 3),
    "running": (None, 5),
    "merging": ("merging", None),
    "final": (None, None),
}


def dimuon(events):
    """The dimuon mass, and the event numbers (an awkward array, concatenated in input
    order).  Its 50 ms pause keeps a 20,000-event scout under 1e6 events/s, so
    ``target_job_seconds=0.001`` sizes the rest at the 1,000-event floor, whatever the load."""
    time.sleep(0.05)
    return {"mass": hist.Hist(MASS_AXIS).fill(dimuon_mass(events)), "n": len(events),
            "event": events.event}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return [str(p) for p in make_sample(tmp_path_factory.mktemp("steps"), files=FILES,
                                        events=EVENTS, basket_events=BASKET)]


def start_pilot(server: ServerProcess, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PANDA_LAB_PILOT_TOKEN=server.info["pilot_token"])
    return subprocess.Popen([sys.executable, "-m", "panda_lab.pilot", "--server",
                             server.info["url"], "--site", SITE, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def saved_merge(server: ServerProcess, task_id: int) -> set[int]:
    """The job indices in the task's merged result as saved in the database."""
    store = Store(server.db_url or f"sqlite:///{server.home / 'panda-lab.sqlite'}",
                  server.home / "results")
    try:
        return store.load_accumulator(task_id)[1]
    finally:
        store.close()


def run(home, db_url: str | None, files: list[str], step: str | None, monkeypatch=None):
    """One analysis; with ``step``, held there, the server SIGKILLed and started again.
    Returns the jobs (file, start, stop, scout by job index), the result and the scouting."""
    hold, n_before = STEPS[step] if step else (None, None)
    if hold:
        monkeypatch.setenv(HOLD_ENV, hold)
    server = ServerProcess(home, db_url=db_url, extra=["--no-pilots"]).start()
    pilots: list[subprocess.Popen] = []
    try:
        lab = server.lab()
        lab.datasets.register("steps", files, replace=True)
        task = lab.analyze(dimuon, "steps", site=SITE, target_job_seconds=0.001,
                           name=step or "no-restart")
        if n_before is None:
            pilots.append(start_pilot(server))
            if hold == "merging":
                wait_for(lambda: lab.task_info(task.id)["n_done"] == len(EXPECTED_JOBS), 120,
                         what="every job finished")
                time.sleep(0.5)
                info = lab.task_info(task.id)
                assert info["state"] == "running" and task.partial().jobs_merged == 0
            else:
                lab.wait(task.id, timeout=120)
        elif n_before:
            pilot = start_pilot(server, "--max-jobs", str(n_before))
            pilots.append(pilot)
            pilot.wait(120)
            wait_for(lambda: lab.task_info(task.id)["n_done"] == n_before, 30,
                     what=f"{n_before} jobs done")
        if step == "scouted":  # merged, and saved: a restart merges none of them again
            wait_for(lambda: len(saved_merge(server, task.id)) == 3, 30,
                     what="the scouts' merged result saved")
            assert lab.task_info(task.id)["state"] == "scouting"
        if step == "sized":
            assert lab.task_info(task.id)["n_jobs"] == len(EXPECTED_JOBS)
        if step is not None:
            server.kill()
            if hold:
                monkeypatch.delenv(HOLD_ENV)
            server.start()
            lab = server.lab()
            pilots.append(start_pilot(server))
            task = lab.task(task.id)
        result = task.result(timeout=120)
        rep = task.report()
        assert set(rep["status"]) == {"done"}
        jobs = [(r.file_index, r.start, r.stop, bool(r.scout))
                for r in rep.sort_values("job_index").itertuples()]
        return jobs, result, task.scouting, task.info()["state"]
    finally:
        for p in pilots:
            p.kill()
            p.wait(10)
        server.stop()


@pytest.fixture(scope="module")
def without_restart(tmp_path_factory, files):
    import cloudpickle

    # runs before the function-scoped fixture that ships this module's functions by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        return run(tmp_path_factory.mktemp("home"), None, files, None)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_the_run_without_restart_is_the_expected_one(without_restart):
    jobs, result, scouting, state = without_restart
    assert state == "done" and jobs == EXPECTED_JOBS
    assert result["n"] == FILES * EVENTS and result["mass"].sum() > 0
    # input order (file, then entry), though the scouts of every file came first
    assert np.array_equal(ak.to_numpy(result["event"]), np.tile(np.arange(1, EVENTS + 1), FILES))
    assert scouting["events_per_job"] == 1000 and scouting["events_per_second"] > 0


@pytest.mark.parametrize("step", list(STEPS))
def test_a_restart_at_each_step(step, db_url, home, files, without_restart, monkeypatch):
    jobs, result, scouting, state = run(home, db_url, files, step, monkeypatch)
    ref_jobs, ref_result, _, _ = without_restart
    assert state == "done"
    assert jobs == ref_jobs == EXPECTED_JOBS
    assert result["n"] == ref_result["n"] == FILES * EVENTS
    assert np.array_equal(result["mass"].values(flow=True),
                          ref_result["mass"].values(flow=True))
    assert ak.array_equal(result["event"], ref_result["event"])
    assert scouting["events_per_job"] == 1000, scouting["note"]
