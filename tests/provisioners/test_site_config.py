"""Site configuration rules and the elastic provisioners' sizing, without any cluster."""

from __future__ import annotations

import pytest

from panda_lab.provisioners.base import PilotSpec
from panda_lab.provisioners.config import ConfigError, parse_sites
from panda_lab.provisioners.gateway import GatewayProvisioner
from panda_lab.provisioners.slurm import SlurmProvisioner


def one(body: dict) -> object:
    return parse_sites({"sites": {"S": body}})[0]


def test_each_kind_of_site_from_the_issue_parses():
    hpc = one({"kind": "hpc", "provisioner": "slurm", "partition": "debug", "max_jobs": 4,
               "walltime": "01:00:00", "jobs_per_pilot": 50})
    assert hpc.pilots == 4 and hpc.extra["jobs_per_pilot"] == 50
    grid = one({"kind": "grid", "provisioner": "dask", "scheduler": "tcp://10.0.0.5:8786"})
    assert grid.extra["scheduler"] == "tcp://10.0.0.5:8786" and grid.pilots == 1
    cloud = one({"kind": "cloud", "provisioner": "gateway", "address": "http://gw:8000",
                 "min_workers": 0, "max_workers": 8})
    assert cloud.pilots == 8  # brokerage counts the site's most workers as its capacity


@pytest.mark.parametrize(("body", "words"), [
    ({"provisioner": "dask"}, ["exactly one of", "scheduler", "cluster"]),
    ({"provisioner": "dask", "scheduler": "tcp://x:1", "cluster": "distributed.LocalCluster"},
     ["exactly one of"]),
    ({"provisioner": "dask", "scheduler": "tcp://x:1", "cluster_options": {}},
     ["cluster_options needs 'cluster'"]),
    ({"provisioner": "gateway"}, ["needs 'address'"]),
    ({"provisioner": "gateway", "address": "http://gw", "min_workers": 5, "max_workers": 2},
     ["min_workers = 5 is more than max_workers = 2"]),
    ({"provisioner": "gateway", "address": "http://gw", "max_workers": 0},
     ["max_workers = 0 must be at least 1"]),
    ({"provisioner": "gateway", "address": "http://gw", "pilots": 3},
     ["'pilots' is not used", "max_workers"]),
    ({"provisioner": "slurm", "min_jobs": -1}, ["min_jobs = -1 must not be negative"]),
    ({"provisioner": "gateway", "address": "http://gw", "partition": "x"},
     ["unknown key 'partition'", "allowed:", "max_workers"]),
    ({"provisioner": "kubernetes"}, ["provisioner = 'kubernetes'", "gateway", "slurm"]),
])
def test_a_wrong_site_names_the_key_and_what_is_allowed(body, words):
    with pytest.raises(ConfigError) as err:
        one(body)
    for word in words:
        assert word in str(err.value)


def gateway(min_workers=0, max_workers=4, idle_timeout=10.0, slots=1):
    site = one({"kind": "cloud", "provisioner": "gateway", "address": "http://gw",
                "min_workers": min_workers, "max_workers": max_workers,
                "idle_timeout": idle_timeout, "slots": slots})
    return GatewayProvisioner(PilotSpec("http://server", "token", site))


def test_a_gateway_site_scales_up_at_once_and_down_only_when_idle():
    g = gateway(min_workers=1, max_workers=4, idle_timeout=10)
    assert g.wanted_workers(0, now=0.0) == 1          # min_workers even when idle
    g.requested = 1
    assert g.wanted_workers(3, now=1.0) == 3          # jobs wait: up at once
    g.requested = 3
    assert g.wanted_workers(50, now=2.0) == 4         # never past max_workers
    g.requested = 4
    assert g.wanted_workers(1, now=3.0) == 4          # a tail of work keeps its workers
    assert g.wanted_workers(0, now=4.0) == 4          # idle, but not for long yet
    assert g.wanted_workers(0, now=13.9) == 4
    assert g.wanted_workers(0, now=14.0) == 1         # idle for idle_timeout: back down
    assert g.wanted_workers(2, now=15.0) == 4         # busy again: idle clock reset
    assert g.idle_since is None


def test_gateway_workers_count_jobs_by_the_pilot_slots():
    g = gateway(max_workers=8, slots=4)
    assert g.wanted_workers(9, now=0.0) == 3


def test_a_slurm_site_asks_for_pilots_by_its_queue_within_its_bounds(tmp_path):
    site = one({"kind": "hpc", "provisioner": "slurm", "max_jobs": 4, "min_jobs": 1,
                "slots": 2})
    prov = SlurmProvisioner(PilotSpec("http://server", "token", site), tmp_path)
    for demand, pilots in ((0, 1), (1, 1), (3, 2), (8, 4), (100, 4)):
        prov.demand = lambda d=demand: d
        prov.refresh_demand()  # what keep_alive does on the loop before each look
        assert prov.target() == pilots, demand


def test_a_site_may_name_its_storage_endpoint():
    (site,) = parse_sites({"sites": {"UNI": {"kind": "hpc", "provisioner": "none",
                                             "endpoint": "UNI-SE"}}})
    assert site.endpoint == "UNI-SE" and site.as_dict()["endpoint"] == "UNI-SE"
    with pytest.raises(ConfigError, match="endpoint"):
        parse_sites({"sites": {"UNI": {"kind": "hpc", "endpoint": 3}}})
