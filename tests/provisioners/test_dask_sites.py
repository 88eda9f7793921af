"""Sites on real Dask clusters: a LocalCluster the server starts, and a scheduler and
workers started separately, with pilots following the workers as they come and go."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from harness import ServerProcess, free_port, pid_alive, site_in_state, wait_for

from panda_lab.provisioners.dask import CONNECT_TIMEOUT


def slow_square(x, t=0.2):
    time.sleep(t)
    return x * x


def dask_cmd(what: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"distributed.cli.dask_{what}", *args]


@pytest.fixture
def scheduler(tmp_path):
    """A ``dask scheduler`` and one ``dask worker``, started as a user would."""
    port = free_port()
    addr = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ)
    log = open(tmp_path / "dask.log", "ab")  # noqa: SIM115
    procs: list[subprocess.Popen] = []

    def start() -> None:
        procs.append(subprocess.Popen(
            dask_cmd("scheduler", "--host", "127.0.0.1", "--port", str(port),
                     "--dashboard-address", ":0"),
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))

    def add_worker() -> subprocess.Popen:
        p = subprocess.Popen(dask_cmd("worker", addr, "--nthreads", "1", "--no-nanny",
                                      "--local-directory", str(tmp_path)),
                             stdout=log, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
        procs.append(p)
        return p

    def kill_all() -> None:
        for p in procs:
            p.kill()
            p.wait()

    start()
    add_worker()
    yield SimpleNamespace(addr=addr, add_worker=add_worker, start=start, kill_all=kill_all)
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
    log.close()


def start_server(home: Path, tmp_path: Path, body: str) -> ServerProcess:
    path = tmp_path / "sites.toml"
    path.write_text(body)
    return ServerProcess(home, extra=["--sites", str(path)]).start()


def pilots_at(lab, site: str) -> list[dict]:
    return [p for p in lab.pilots() if p["site"] == site and p["state"] == "running"]


def test_a_task_runs_on_a_local_cluster_and_on_a_separate_scheduler(home, tmp_path, scheduler):
    addr, add_worker = scheduler.addr, scheduler.add_worker
    server = start_server(home, tmp_path, f"""
[sites.LAB-LOCALCLUSTER]
kind = "grid"
provisioner = "dask"
cluster = "distributed.LocalCluster"

[sites.LAB-LOCALCLUSTER.cluster_options]
n_workers = 1
threads_per_worker = 1
dashboard_address = ":0"

[sites.LAB-DASK]
kind = "grid"
provisioner = "dask"
scheduler = "{addr}"
""")
    try:
        lab = server.lab()
        wait_for(lambda: pilots_at(lab, "LAB-LOCALCLUSTER") and pilots_at(lab, "LAB-DASK"), 60,
                 what="a pilot on each Dask site")
        task = lab.submit(slow_square, [(i,) for i in range(24)], name="dask-sites")
        info = lab.wait(task, timeout=120)
        assert info["state"] == "done" and lab.results(task) == {i: i * i for i in range(24)}
        assert set(info["jobs_by_site"]) == {"LAB-LOCALCLUSTER", "LAB-DASK"}
        sites = {s["name"]: s for s in lab.sites()}
        assert sites["LAB-DASK"]["provisioner"] == "dask"
        assert sites["LAB-DASK"]["state"] == "online"

        # A worker that joins gets a pilot; a worker that leaves takes its pilot along.
        second = add_worker()
        wait_for(lambda: len(pilots_at(lab, "LAB-DASK")) == 2, 60, what="a pilot on the new worker")
        newest = max(pilots_at(lab, "LAB-DASK"), key=lambda p: p["id"])
        second.send_signal(signal.SIGKILL)
        wait_for(lambda: newest["id"] not in {p["id"] for p in pilots_at(lab, "LAB-DASK")}, 30,
                 what="the pilot of the killed worker gone")
        # The pilot process dies with its worker (it says goodbye on the way out).
        wait_for(lambda: not pid_alive(newest["pid"]), 30, what="the pilot process ended")
        task = lab.submit(slow_square, [(i, 0.0) for i in range(6)], name="after",
                          site="LAB-DASK")
        assert lab.wait(task, timeout=60)["state"] == "done"
    finally:
        server.stop()


def test_a_dask_site_comes_back_with_its_scheduler(home, tmp_path, scheduler):
    """Scheduler and worker gone for longer than the Dask client waits to reconnect (it
    then closes for good): the site is offline, and online again, with a pilot, once a
    scheduler answers at that address again."""
    server = start_server(home, tmp_path, f"""
[sites.LOCAL]
kind = "local"
pilots = 0

[sites.LAB-DASK]
kind = "grid"
provisioner = "dask"
scheduler = "{scheduler.addr}"
""")
    try:
        lab = server.lab()
        wait_for(lambda: pilots_at(lab, "LAB-DASK"), 60, what="a pilot on the Dask site")
        scheduler.kill_all()
        site_in_state(lab, "LAB-DASK", "offline", 60)
        time.sleep(CONNECT_TIMEOUT + 2)  # past the client's reconnection attempts
        scheduler.start()
        scheduler.add_worker()
        wait_for(lambda: next(s for s in lab.sites() if s["name"] == "LAB-DASK")["state"]
                 == "online" and pilots_at(lab, "LAB-DASK"), 90,
                 what="the site online again, with a pilot")
        task = lab.submit(slow_square, [(i, 0.0) for i in range(4)], name="back",
                          site="LAB-DASK")
        assert lab.wait(task, timeout=60)["state"] == "done"
    finally:
        server.stop()


def test_a_dask_site_whose_scheduler_is_unreachable_goes_offline(home, tmp_path):
    server = start_server(home, tmp_path, f"""
[sites.LOCAL]
kind = "local"

[sites.NOWHERE]
kind = "grid"
provisioner = "dask"
scheduler = "tcp://127.0.0.1:{free_port()}"
""")
    try:
        lab = server.lab()
        site = site_in_state(lab, "NOWHERE", "offline", 60)
        assert "unreachable" in site["reason"]
        task = lab.submit(slow_square, [(i, 0.0) for i in range(4)], name="avoid")
        info = lab.wait(task, timeout=60)
        assert info["state"] == "done" and set(info["jobs_by_site"]) == {"LOCAL"}
    finally:
        server.stop()
