"""Replicas at storage endpoints: a site reads the one near it first, and another when that
one fails."""

from __future__ import annotations

import hist
import pytest
from harness import RangeFileServer, ServerProcess

from panda_lab.analysis.dimuon import MASS_AXIS, dimuon_mass
from panda_lab.analysis.sample import make_sample


def process(events):
    return {"mass": hist.Hist(MASS_AXIS).fill(dimuon_mass(events)), "n": len(events)}


@pytest.fixture
def near_site(tmp_path):
    """A server whose one site lists the storage endpoint "near" as its own."""
    sites = tmp_path / "sites.toml"
    sites.write_text('[sites.NEAR]\nkind = "grid"\nprovisioner = "local"\npilots = 1\n'
                     'endpoint = "near"\n')
    home = tmp_path / "home"
    home.mkdir()
    s = ServerProcess(home, extra=["--sites", str(sites)]).start()
    yield s
    s.stop()


def test_a_site_reads_its_own_endpoints_replica_and_falls_back_to_another(near_site,
                                                                          tmp_path):
    data = make_sample(tmp_path / "data", files=2, events=20_000, basket_events=5_000)
    far, near = RangeFileServer(data[0].parent), RangeFileServer(data[0].parent)
    lab = near_site.lab()
    try:
        ds = lab.datasets.register(
            "replicated", [f"{far.url}/{p.name}" for p in data], endpoint="far",
            replicas={"near": [f"{near.url}/{p.name}" for p in data]})
        far_hits = far.hits                   # registration read the metadata from "far"

        near.down = True                      # the site's own storage fails: the other replica
        first = lab.analyze(process, ds, name="near-down", events_per_job=10_000)
        result = first.result(timeout=120)
        assert result["n"] == 40_000 and near.hits == 0 and far.hits > far_hits
        assert set(first.report()["status"]) == {"done"}    # no retry was needed

        near.down = False                     # back: the site reads its own replica first
        far_hits = far.hits
        second = lab.analyze(process, ds, name="near-up", events_per_job=10_000)
        again = second.result(timeout=120)
        assert (again["mass"].values() == result["mass"].values()).all()
        assert near.hits > 0 and far.hits == far_hits, "the site did not read its own replica"
        # brokerage knew where the data is, and that NEAR is near it
        job = lab.api.get(f"/api/jobs/{lab.jobs(second.id)[0]['id']}")
        assert job["broker_info"]["near"] == ["far", "near"]
        assert job["broker_info"]["near_data"] == ["NEAR"]
    finally:
        far.stop()
        near.stop()


def test_replica_lists_must_match_the_files(lab, tmp_path):
    data = make_sample(tmp_path / "d", files=2, events=1_000, basket_events=500)
    with pytest.raises(ValueError, match="1 URLs for 2 files"):
        lab.datasets.register("bad", [str(p) for p in data], replicas={"x": ["only-one"]})
