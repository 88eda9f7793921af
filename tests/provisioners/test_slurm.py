"""An hpc site on a real Slurm cluster: pilots as batch jobs, cancelled, drained, offline."""

from __future__ import annotations

import subprocess
import time

import pytest
from harness import ServerProcess, wait_for


def slow_square(x, t=0.3):
    time.sleep(t)
    return x * x


def sites_file(tmp_path, slurm_site: str) -> str:
    path = tmp_path / "sites.toml"
    path.write_text(f"""
[sites.LOCAL]
kind = "local"
pilots = 1

[sites.UNI-HPC]
kind = "hpc"
provisioner = "slurm"
{slurm_site}
""")
    return str(path)


def squeue(name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i", "-n", name], capture_output=True,
                         text=True, check=True).stdout
    return [x.strip() for x in out.splitlines() if x.strip()]


@pytest.fixture
def hpc(slurm, home, tmp_path, request):
    body = getattr(request, "param", 'partition = "debug"\nmax_jobs = 2\njobs_per_pilot = 50\n'
                                     'walltime = "00:10:00"')
    s = ServerProcess(home, extra=["--sites", sites_file(tmp_path, body)]).start()
    yield s
    s.stop()
    for job in squeue("panda-UNI-HPC"):
        subprocess.run(["scancel", job], check=False)


def test_a_task_runs_across_a_local_and_a_slurm_site(hpc):
    lab = hpc.lab()
    wait_for(lambda: len(squeue("panda-UNI-HPC")) == 2, 30, what="two pilot batch jobs")
    task = lab.submit(slow_square, [(i,) for i in range(30)], name="across")
    info = lab.wait(task, timeout=120)
    assert info["state"] == "done" and lab.results(task) == {i: i * i for i in range(30)}
    by_site = info["jobs_by_site"]
    assert set(by_site) == {"LOCAL", "UNI-HPC"}
    pilots = {p["id"]: p for p in lab.pilots()}
    hpc_jobs = [j for j in lab.jobs(task) if j["site"] == "UNI-HPC"]
    batch_ids = {pilots[j["pilot_id"]]["info"]["batch_id"] for j in hpc_jobs}
    assert batch_ids and all(b and b.isdigit() for b in batch_ids)
    assert batch_ids <= set(squeue("panda-UNI-HPC"))
    sites = {s["name"]: s for s in lab.sites()}
    assert sites["UNI-HPC"]["provisioner"] == "slurm" and sites["UNI-HPC"]["state"] == "online"


def test_a_cancelled_pilot_job_means_retries_and_a_correct_result(hpc):
    lab = hpc.lab()
    task = lab.submit(slow_square, [(i, 1.0) for i in range(8)], name="cancel",
                      site="UNI-HPC")

    def running_batch_job():
        pilots = {p["id"]: p for p in lab.pilots()}
        for j in lab.jobs(task):
            if j["state"] == "running" and j["pilot_id"]:
                return pilots[j["pilot_id"]]["info"]["batch_id"]
        return None

    batch = wait_for(running_batch_job, 60, what="a job running in a batch job")
    subprocess.run(["scancel", batch], check=True)
    info = lab.wait(task, timeout=180)
    assert info["state"] == "done" and lab.results(task) == {i: i * i for i in range(8)}
    attempts = lab.jobs(task, all_attempts=True)
    assert max(a["attempt"] for a in attempts) == 2
    failed = [a for a in attempts if a["state"] == "failed"]
    assert failed and {a["error_category"] for a in failed} == {"system"}


@pytest.mark.parametrize("hpc", ['partition = "debug"\nmax_jobs = 1\nwalltime = "00:00:06"'],
                         indirect=True)
def test_a_pilot_drains_before_its_walltime(hpc):
    lab = hpc.lab()
    task = lab.submit(slow_square, [(i, 1.5) for i in range(8)], name="drain", site="UNI-HPC")
    info = lab.wait(task, timeout=180)
    assert info["state"] == "done" and lab.results(task) == {i: i * i for i in range(8)}
    attempts = lab.jobs(task, all_attempts=True)
    # Drained, not killed: no job was lost to a pilot running out of time.
    assert not [a for a in attempts if "lost heartbeat" in (a["error_message"] or "")]
    pilots = [p for p in lab.pilots() if p["site"] == "UNI-HPC"]
    assert len({p["info"]["batch_id"] for p in pilots}) >= 2  # several allocations took turns
    assert all(p["state"] in ("finished", "running") for p in pilots)


@pytest.mark.parametrize("hpc", ['partition = "no-such-partition"\nmax_jobs = 1'],
                         indirect=True)
def test_a_site_whose_batch_system_refuses_goes_offline(hpc):
    lab = hpc.lab()
    site = wait_for(lambda: next(s for s in lab.sites() if s["name"] == "UNI-HPC")
                    if any(s["name"] == "UNI-HPC" and s["state"] == "offline"
                           for s in lab.sites()) else None, 30, what="the site offline")
    assert "sbatch" in site["reason"] and "partition" in site["reason"].lower()
    task = lab.submit(slow_square, [(i, 0.0) for i in range(6)], name="avoid")
    info = lab.wait(task, timeout=60)
    assert info["state"] == "done" and set(info["jobs_by_site"]) == {"LOCAL"}


def test_bad_slurm_site_settings_name_the_key(tmp_path):
    import os
    import sys

    for body, word in (('walltime = "ten minutes"', "walltime"), ("max_jobs = 0", "max_jobs"),
                       ('queue = "debug"', "queue")):
        path = sites_file(tmp_path, body)
        r = subprocess.run([sys.executable, "-m", "panda_lab.cli.main", "--home",
                            str(tmp_path / "h"), "server", "start", "--sites", path],
                           capture_output=True, text=True, timeout=60, env=dict(os.environ))
        assert r.returncode == 2 and word in r.stderr, (body, r.stderr)
