"""The cloud kind on a real dask-gateway server (local backend): scaled up under load,
down when idle, and a worker killed mid-job survived."""

from __future__ import annotations

import signal
import socket
import time

import psutil
from harness import GatewayServer, ServerProcess, free_port, site_in_state, wait_for


def slow_square(x, t=1.0):
    time.sleep(t)
    return x * x


def square_when(x, flag, timeout=180.0):
    """x², once the file ``flag`` exists."""
    import os
    import time

    deadline = time.time() + timeout
    while not os.path.exists(flag):
        if time.time() > deadline:
            raise TimeoutError(f"{flag} never appeared")
        time.sleep(0.2)
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
        site = site_in_state(lab, "CLOUD", "offline", 60)
        assert "dask-gateway" in site["reason"] and "unreachable" in site["reason"]
        task = lab.submit(slow_square, [(i, 0.0) for i in range(4)], name="avoid")
        info = lab.wait(task, timeout=60)
        assert info["state"] == "done" and set(info["jobs_by_site"]) == {"LOCAL"}
    finally:
        server.stop()


def test_a_gateway_that_restarts_keeps_its_one_cluster(home, tmp_path):
    """The gateway goes away while more workers are wanted (the scale call fails), and
    comes back: the site reattaches to the cluster it had instead of starting a second
    one beside it (which would keep the first one's workers running, unused)."""
    (tmp_path / "gw").mkdir()
    gateway = GatewayServer(tmp_path / "gw", persistent=True).start()
    sites = tmp_path / "sites.toml"
    sites.write_text(f"""
[sites.LOCAL]
kind = "local"
pilots = 0

[sites.CLOUD]
kind = "cloud"
provisioner = "gateway"
address = "{gateway.url}"
min_workers = 0
max_workers = 2
idle_timeout = 600
""")
    server = ServerProcess(home, extra=["--sites", str(sites)]).start()
    try:
        lab = server.lab()
        first = lab.submit(slow_square, [(1, 0.0)], name="one-worker", site="CLOUD")
        assert lab.wait(first, timeout=120)["state"] == "done"
        clusters = gateway.cluster_names()
        assert len(clusters) == 1

        gateway.stop(clusters=False)          # its cluster and workers run on
        # jobs that wait until the gateway is back: the queue stays long, so the site
        # wants a second worker while the gateway is away, and asking for it fails
        flag = tmp_path / "gateway-back"
        more = lab.submit(square_when, [(i, str(flag)) for i in range(6)],
                          name="two-workers", site="CLOUD")
        site = site_in_state(lab, "CLOUD", "offline", 90)
        assert "dask-gateway" in site["reason"]

        gateway.start()                       # same address, same database
        flag.touch()
        info = lab.wait(more, timeout=180)
        assert info["state"] == "done" and lab.results(more) == {i: i * i for i in range(6)}
        site_in_state(lab, "CLOUD", "online", 60)
        assert gateway.cluster_names() == clusters, "a second cluster was started"
    finally:
        server.stop()
        gateway.stop()


def test_a_gateway_that_never_answers_puts_its_site_offline_in_time(home, tmp_path):
    """A port that accepts connections and never answers (a hung gateway): the call gives
    up after the site's ``timeout``, instead of holding the provisioner for minutes."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)                      # connections complete; nothing is ever read
        sites = tmp_path / "sites.toml"
        sites.write_text(f"""
[sites.LOCAL]
kind = "local"

[sites.CLOUD]
kind = "cloud"
provisioner = "gateway"
address = "http://127.0.0.1:{hung.getsockname()[1]}"
timeout = 2
""")
        server = ServerProcess(home, extra=["--sites", str(sites)]).start()
        try:
            lab = server.lab()
            task = lab.submit(slow_square, [(i, 0.0) for i in range(2)], name="hung")
            site = site_in_state(lab, "CLOUD", "offline", 30)
            assert "unreachable: TimeoutError" in site["reason"]
            info = lab.wait(task, timeout=60)
            assert info["state"] == "done" and set(info["jobs_by_site"]) == {"LOCAL"}
        finally:
            server.stop()
