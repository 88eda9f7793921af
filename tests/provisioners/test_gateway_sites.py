"""The cloud kind on a real dask-gateway server (local backend): scaled up under load,
down when idle, and a worker killed mid-job survived."""

from __future__ import annotations

import signal
import time

import psutil
from harness import ServerProcess, free_port, wait_for


def slow_square(x, t=1.0):
    time.sleep(t)
    return x * x


def cloud_pilots(lab) -> list[dict]:
    return [p for p in lab.pilots() if p["site"] == "CLOUD" and p["state"] == "running"]


def test_a_cloud_site_scales_with_its_queue_and_survives_a_lost_worker(home, tmp_path,
                                                                        gateway):
    sites = tmp_path / "sites.toml"
    sites.write_text(f"""
[sites.LOCAL]
kind = "local"

[sites.CLOUD]
kind = "cloud"
provisioner = "gateway"
address = "{gateway}"
min_workers = 0
max_workers = 2
idle_timeout = 3
""")
    server = ServerProcess(home, extra=["--sites", str(sites)]).start()
    try:
        lab = server.lab()
        time.sleep(3)
        assert cloud_pilots(lab) == []  # nothing queued: no workers, no pilots
        assert next(s for s in lab.sites() if s["name"] == "CLOUD")["state"] == "online"

        # jobs long enough that the one seen running is still running when its worker dies
        task = lab.submit(slow_square, [(i, 4.0) for i in range(6)], name="burst",
                          site="CLOUD")
        wait_for(lambda: len(cloud_pilots(lab)) == 2, 90, what="two workers with pilots")

        # Pre-emption: the worker process under a running job dies without warning.
        def running_pilot():
            by_id = {p["id"]: p for p in cloud_pilots(lab)}
            return next(((j, by_id[j["pilot_id"]]) for j in lab.jobs(task)
                         if j["state"] == "running" and j["pilot_id"] in by_id
                         and time.time() - j["started_at"] < 2.0), None)

        lost_job, victim = wait_for(running_pilot, 60, what="a job just started on a cloud pilot")
        worker = psutil.Process(victim["pid"]).parent()  # the worker, under its nanny
        assert "dask worker" in " ".join(worker.parent().cmdline())
        worker.send_signal(signal.SIGKILL)

        info = lab.wait(task, timeout=180)
        assert info["state"] == "done" and lab.results(task) == {i: i * i for i in range(6)}
        attempts = lab.jobs(task, all_attempts=True)
        lost = [a for a in attempts if a["job_index"] == lost_job["job_index"]]
        assert [a["attempt"] for a in lost] == [1, 2]     # retried, not failed
        assert lost[0]["state"] == "failed" and lost[1]["state"] == "finished"
        assert max(len(cloud_pilots(lab)), 0) <= 2
        cloud = [p for p in lab.pilots() if p["site"] == "CLOUD"]
        assert len(cloud) >= 3  # the lost worker's pilot was replaced

        # Idle for longer than idle_timeout: back down to min_workers = 0.
        wait_for(lambda: cloud_pilots(lab) == [], 60, what="the cloud site scaled down")
    finally:
        server.stop()


def test_an_unreachable_gateway_puts_its_site_offline(home, tmp_path):
    sites = tmp_path / "sites.toml"
    sites.write_text(f"""
[sites.LOCAL]
kind = "local"

[sites.CLOUD]
kind = "cloud"
provisioner = "gateway"
address = "http://127.0.0.1:{free_port()}"
""")
    server = ServerProcess(home, extra=["--sites", str(sites)]).start()
    try:
        lab = server.lab()
        site = wait_for(lambda: next((s for s in lab.sites()
                                      if s["name"] == "CLOUD" and s["state"] == "offline"),
                                     None), 60, what="the cloud site offline")
        assert "dask-gateway" in site["reason"] and "unreachable" in site["reason"]
        task = lab.submit(slow_square, [(i, 0.0) for i in range(4)], name="avoid")
        info = lab.wait(task, timeout=60)
        assert info["state"] == "done" and set(info["jobs_by_site"]) == {"LOCAL"}
    finally:
        server.stop()
