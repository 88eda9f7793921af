"""An hpc site on a real Slurm cluster: pilots as batch jobs, cancelled, drained, offline.

One kind of fault tested here: the provisioner's count of its allocations differing from
what the batch system shows.  Members: an allocation of the site's name it does not hold
(an ``sbatch`` that timed out after slurmctld took the job) must count towards
``max_jobs``; batch job ids that have left slurmctld's memory must read as ended, not as
an error that holds the site offline; a state other than the usual five (``REQUEUED``)
still holds an allocation.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from harness import ServerProcess, site_in_state, wait_for

from panda_lab.model.states import TASK_FINAL
from panda_lab.provisioners.base import PilotSpec
from panda_lab.provisioners.config import parse_sites
from panda_lab.provisioners.slurm import SlurmProvisioner


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
    # Jobs brokered to the site make it ask Slurm for a pilot, which Slurm refuses.
    task = lab.submit(slow_square, [(i, 0.0) for i in range(12)], name="refused")
    site = site_in_state(lab, "UNI-HPC", "offline", 30)
    assert "sbatch" in site["reason"] and "partition" in site["reason"].lower()
    info = lab.wait(task, timeout=60)  # its jobs went back to brokerage, none was lost
    assert info["state"] == "done" and lab.results(task) == {i: i * i for i in range(12)}
    assert {j["site"] for j in lab.jobs(task)} == {"LOCAL"}
    task = lab.submit(slow_square, [(i, 0.0) for i in range(6)], name="avoid")
    info = lab.wait(task, timeout=60)
    assert info["state"] == "done" and set(info["jobs_by_site"]) == {"LOCAL"}


@pytest.mark.parametrize("hpc", ['partition = "debug"\nmax_jobs = 3\nidle_exit = 2'],
                         indirect=True)
def test_the_number_of_pilots_follows_the_queue(hpc):
    lab = hpc.lab()
    # an earlier test's allocations may still be ending (its server cancelled them); an
    # allocation was seen to appear after they had gone, from which server is not known,
    # so "none held while idle" is asserted at the end, after this server's own work
    wait_for(lambda: squeue("panda-UNI-HPC") == [], 30, what="earlier allocations gone")
    task = lab.submit(slow_square, [(i, 1.0) for i in range(12)], name="queue",
                      site="UNI-HPC")
    seen = set()
    while lab.task_info(task)["state"] not in {str(s) for s in TASK_FINAL}:
        batch = squeue("panda-UNI-HPC")
        assert len(batch) <= 3  # never more than max_jobs
        seen.update(batch)
        time.sleep(0.2)
    assert len(seen) == 3
    assert lab.results(task) == {i: i * i for i in range(12)}
    # Idle pilots leave after idle_exit and are not replaced while nothing is queued.
    wait_for(lambda: squeue("panda-UNI-HPC") == [], 30, what="the allocations released")
    time.sleep(3)
    assert squeue("panda-UNI-HPC") == []


@pytest.mark.parametrize("hpc", ['partition = "debug"\nmax_jobs = 2\nidle_exit = 2'],
                         indirect=True)
def test_an_allocation_of_the_sites_name_not_held_counts_towards_max_jobs(hpc, tmp_path):
    lab = hpc.lab()
    wait_for(lambda: squeue("panda-UNI-HPC") == [], 30, what="earlier allocations gone")
    # as an sbatch that timed out would leave it: the site's name, no pilot in it
    stray = subprocess.run(["sbatch", "--parsable", "-J", "panda-UNI-HPC", "-p", "debug",
                            "-o", str(tmp_path / "stray-%j.out"), "--wrap", "sleep 120"],
                           capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    task = lab.submit(slow_square, [(i, 0.5) for i in range(6)], name="stray",
                      site="UNI-HPC")
    seen = set()
    while lab.task_info(task)["state"] not in {str(s) for s in TASK_FINAL}:
        batch = squeue("panda-UNI-HPC")
        assert len(batch) <= 2, batch  # the stray and one pilot, never a second pilot
        seen.update(batch)
        time.sleep(0.2)
    assert lab.results(task) == {i: i * i for i in range(6)}
    # the stray was counted all along (pilots may have come and gone: idle_exit)
    assert stray in seen, seen


def test_ids_that_left_slurms_memory_read_as_ended_and_other_states_as_held(slurm, tmp_path):
    site = parse_sites({"sites": {"UNI-HPC": {"kind": "hpc", "provisioner": "slurm"}}})[0]
    prov = SlurmProvisioner(PilotSpec("http://server", "token", site), tmp_path)
    assert prov.status(["999999", "999998"]) == [False, False]  # `squeue -j` would fail
    assert [prov.alive(s) for s in ("PENDING", "COMPLETING", "REQUEUED", "CONFIGURING")] == \
        [True] * 4
    assert [prov.alive(s) for s in (None, "COMPLETED", "CANCELLED", "TIMEOUT")] == [False] * 4


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


def test_a_dask_jobqueue_cluster_on_slurm_is_a_site(slurm, home, tmp_path):
    """Any dask-jobqueue cluster class is a site: its workers are Slurm jobs, a pilot on each."""
    path = tmp_path / "sites.toml"
    path.write_text(f"""
[sites.JOBQUEUE]
kind = "hpc"
provisioner = "dask"
cluster = "dask_jobqueue.SLURMCluster"
workers = 1

[sites.JOBQUEUE.cluster_options]
cores = 1
processes = 1
memory = "1GB"
queue = "debug"
walltime = "00:10:00"
job_name = "panda-jobqueue"
log_directory = "{tmp_path / 'jobqueue-logs'}"
scheduler_options = {{ dashboard_address = ":0" }}
""")
    server = ServerProcess(home, extra=["--sites", str(path)]).start()
    try:
        lab = server.lab()
        task = lab.submit(slow_square, [(i, 0.1) for i in range(6)], name="jobqueue")
        info = lab.wait(task, timeout=120)
        assert info["state"] == "done" and lab.results(task) == {i: i * i for i in range(6)}
        assert set(info["jobs_by_site"]) == {"JOBQUEUE"}
        pilots = [p for p in lab.pilots() if p["site"] == "JOBQUEUE"]
        # The pilot ran inside the Slurm job that is the Dask worker.
        assert pilots and all(p["info"]["batch_id"] for p in pilots)
        assert {p["info"]["batch_id"] for p in pilots} <= set(squeue("panda-jobqueue"))
    finally:
        server.stop()
    wait_for(lambda: squeue("panda-jobqueue") == [], 30, what="the worker jobs cancelled")
