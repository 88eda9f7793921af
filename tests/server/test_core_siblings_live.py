"""Sites sharing a machine's cores drain their queues together, through real pilots.

The kind of fault, through the whole path (pilot, long poll, HTTP, server, store): a job
waiting at a site whose single pilot is busy while the pilot of a site on the same cores
idles, or sleeps in its long poll because the work arrived at its sibling's queue.  The
rule itself is tested on both backends in tests/store/test_core_siblings.py.  Members
here: work activated at one site of the group wakes the long polls of all of them, and
of no site outside it; and, with real pilots on two sites that share two cores, while
one site's pilot runs a long job, a task of short jobs spread over both sites ends on
the other site's pilot, each job moved from the busy site's queue saying so, long before
the busy pilot is free.
"""

from __future__ import annotations

import os
import sqlite3
import time

from harness import ServerProcess

from panda_lab.provisioners.config import SiteConfig
from panda_lab.server.app import Server
from panda_lab.server.config import ServerConfig
from panda_lab.store.base import Changes

SHARED = {"shared_cores": 2}


def test_work_at_one_site_of_the_group_wakes_the_long_polls_of_all(tmp_path):
    sites = [SiteConfig(name=n, extra=dict(SHARED)) for n in ("GRID", "CLOUD", "HPC")]
    server = Server(ServerConfig(home=tmp_path, provision=False,
                                 sites=[*sites, SiteConfig(name="OWN")]))
    try:
        waits = {n: server.site_event(n) for n in ("GRID", "CLOUD", "HPC", "OWN")}
        server.publish(Changes(activated_sites={"GRID"}))
        assert {n for n, ev in waits.items() if ev.is_set()} == {"GRID", "CLOUD", "HPC"}
        own = server.site_event("OWN")
        cloud = server.site_event("CLOUD")
        server.publish(Changes(activated_sites={"OWN"}))
        assert own.is_set() and not cloud.is_set()
    finally:
        server.close()


def hold(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def short(i: int) -> int:
    time.sleep(0.1)
    return i


def test_a_busy_sites_queue_is_run_by_its_idle_sibling(home, tmp_path):
    sites = tmp_path / "sites.toml"
    sites.write_text("".join(f'[sites.{n}]\nkind = "local"\npilots = 1\nshared_cores = 2\n'
                             for n in ("GRID", "CLOUD")))
    server = ServerProcess(home, extra=["--sites", str(sites)]).start()
    try:
        lab = server.lab()
        with lab.executor(site="GRID", name="long") as busy:
            long_job = busy.submit(hold, 20.0)
            deadline = time.monotonic() + 30
            while not any(j["state"] == "running" for t in lab.list_tasks()
                          if t["name"] == "long" for j in lab.jobs(t["id"])):
                assert time.monotonic() < deadline, "the long job never started"
                time.sleep(0.05)
            moved_jobs = 0
            for attempt in range(3):  # until brokerage sent some short jobs to GRID
                with lab.executor(name=f"short-{attempt}") as ex:
                    t0 = time.monotonic()
                    assert list(ex.map(short, range(8))) == list(range(8))
                    took = time.monotonic() - t0
                task = max(t["id"] for t in lab.list_tasks())
                jobs = lab.jobs(task)
                assert {j["site"] for j in jobs} == {"CLOUD"}, [
                    (j["site"], j["pilot_id"], j["state"]) for j in jobs]
                assert not long_job.done() and took < 15, took
                moved_jobs = sum(j["broker_info"].get("moved", {}).get("from") == "GRID"
                                 for j in jobs)
                if moved_jobs:
                    break
            assert moved_jobs, "brokerage never sent a short job to GRID"
            lab.kill(next(t["id"] for t in lab.list_tasks() if t["name"] == "long"))
        lab.close()
    finally:
        server.stop()
    db = sqlite3.connect(home / "panda-lab.sqlite")
    infos = [i for (i,) in db.execute(
        "SELECT s.info FROM job_status s JOIN jobs j ON j.id = s.job_id "
        "WHERE j.task_id = ? AND s.state = 'sent'", (task,))]
    db.close()
    assert sum(i.endswith("from GRID's queue") for i in infos) == moved_jobs, infos
