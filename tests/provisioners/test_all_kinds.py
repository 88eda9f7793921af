"""One dataset analysis over every kind of site at once: local pilots, a Dask
LocalCluster, Slurm batch jobs and a dask-gateway cluster, all real."""

from __future__ import annotations

import hist
import uproot
from harness import ServerProcess

from panda_lab.analysis.accumulate import merge_all
from panda_lab.analysis.dimuon import MASS_AXIS, dimuon_mass
from panda_lab.analysis.events import read_chunk
from panda_lab.analysis.sample import make_sample
from panda_lab.model.splitter import Chunk


def process(events):
    return {"mass": hist.Hist(MASS_AXIS).fill(dimuon_mass(events)), "n": len(events)}


def test_an_analysis_over_all_site_kinds_equals_one_process(slurm, gateway, home, tmp_path):
    files = make_sample(tmp_path / "data", files=2, events=40_000, basket_events=5_000)
    whole_files = [Chunk(i, str(f), "Events", 0, uproot.open(f)["Events"].num_entries)
                   for i, f in enumerate(files)]
    one_process = merge_all(process(read_chunk(c)) for c in whole_files)
    sites = tmp_path / "sites.toml"
    sites.write_text(f"""
[sites.LOCAL]
kind = "local"

[sites.LAB-DASK]
kind = "grid"
provisioner = "dask"
cluster = "distributed.LocalCluster"

[sites.LAB-DASK.cluster_options]
n_workers = 1
threads_per_worker = 1
dashboard_address = ":0"

[sites.UNI-HPC]
kind = "hpc"
provisioner = "slurm"
partition = "debug"
max_jobs = 1
walltime = "00:10:00"

[sites.CLOUD]
kind = "cloud"
provisioner = "gateway"
address = "{gateway}"
max_workers = 1
""")
    server = ServerProcess(home, extra=["--sites", str(sites)]).start()
    try:
        lab = server.lab()
        ds = lab.datasets.register("all-kinds", [str(f) for f in files])
        task = lab.analyze(process, ds, events_per_job=5_000, name="all-kinds")
        result = task.result(timeout=240)
        assert result["n"] == 80_000
        assert (result["mass"].values() == one_process["mass"].values()).all()
        assert result["mass"].sum() == one_process["mass"].sum() > 0
        ran_at = {j["site"] for j in lab.jobs(task.id) if j["state"] == "finished"}
        assert ran_at == {"LOCAL", "LAB-DASK", "UNI-HPC", "CLOUD"}
        kinds = {s["name"]: s["kind"] for s in lab.sites()}
        assert {kinds[s] for s in ran_at} == {"local", "grid", "hpc", "cloud"}
    finally:
        server.stop()
