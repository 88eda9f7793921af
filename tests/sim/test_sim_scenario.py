"""Scenario files: every shipped one loads, generated parameters expand, and a bad
scenario is refused with the key that is wrong.

Kind tested: a scenario error that does not say where it is.  Members: a missing
required key, a wrong type, a value out of range, an unknown key, a reference to an
unknown site or dataset, an endpoint glob matching nothing, files left without a
replica, an unknown policy, a file that is not TOML.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from panda_lab.model import splitter
from panda_lab.sim import ScenarioError, load, parse

SHIPPED = Path(__file__).resolve().parents[2] / "panda_lab" / "sim" / "scenarios"

GOOD = """
[sites.A]
slots = 2
speed = 100
endpoint = "A-SE"
[datasets.d]
files = 4
file_mb = 10
events_per_file = 1000
replicas = { "A-SE" = 1.0 }
[[tasks]]
dataset = "d"
events_per_job = 500
"""


def test_every_shipped_scenario_loads():
    names = sorted(p.stem for p in SHIPPED.glob("*.toml"))
    assert names == ["data-at-one-site", "failing-site", "hundred-thousand",
                     "slow-link-to-big-site"]
    for p in SHIPPED.glob("*.toml"):
        sc = load(p)
        assert sc.sites and sc.tasks and sc.datasets and sc.description


def test_the_generated_scenario_expands_to_20_sites_and_100000_jobs():
    sc = load(SHIPPED / "hundred-thousand.toml")
    assert len(sc.sites) == 20
    assert [s.name for s in sc.sites][:5] == ["T1-01", "T1-02", "T1-03", "T1-04", "T2-01"]
    assert sc.sites[4].endpoint == "T2-01-SE"
    files = sc.datasets["big"]
    assert len(files) == 20_000
    assert all("T1-01-SE" in f.replicas for f in files)
    held = sum("T2-05-SE" in f.replicas for f in files)
    assert held == 2000                                 # a tenth at each small site
    rule = splitter.SplitRule(mode="events", events_per_job=sc.tasks[0].events_per_job)
    one = [{"file_index": 0, "path": files[0].name, "tree": "t", "entries": files[0].events,
            "clusters": list(files[0].clusters)}]
    assert len(splitter.split_all(one, rule)) * len(files) == 100_000


def test_defaults_fill_what_is_left_out():
    sc = parse(tomllib.loads(GOOD))
    assert [str(p) for p in sc.policies] == ["network", "passive", "locality", "round-robin",
                                             "least-loaded"]
    t = sc.tasks[0]
    assert (t.split, t.sites, t.max_attempts, t.queue_limit) == ("events", ("ANY",), 3, 0)


@pytest.mark.parametrize("edit, key", [
    (lambda r: r["sites"]["A"].pop("slots"), "sites.A.slots: required"),
    (lambda r: r["sites"]["A"].update(slots="two"), "sites.A.slots: expected int"),
    (lambda r: r["sites"]["A"].update(slots=0), "sites.A.slots: must be positive"),
    (lambda r: r["sites"]["A"].update(failure_rate=1.5), "sites.A.failure_rate: must be "
                                                         "between 0 and 1"),
    (lambda r: r["sites"]["A"].update(colour="red"), "sites.A.colour: unknown key"),
    (lambda r: r.pop("sites"), "sites: required"),
    (lambda r: r["datasets"]["d"].update(replicas={"B-*": 1.0}),
     "datasets.d.replicas.B-*: no site has such an endpoint"),
    (lambda r: r["datasets"]["d"].update(replicas={"A-SE": 0.5}),
     "datasets.d.replicas: some files have no replica"),
    (lambda r: r["tasks"][0].update(dataset="nope"), "tasks[0].dataset: unknown dataset"),
    (lambda r: r["tasks"][0].update(sites=["Z"]), "tasks[0].sites: unknown site 'Z'"),
    (lambda r: r["tasks"][0].update(split="chunks"), "tasks[0].split: events, files or auto"),
    (lambda r: r["tasks"][0].pop("events_per_job"), "tasks[0].events_per_job: required"),
    (lambda r: r.update(links=[{"endpoint": "A-SE", "site": "Q", "mbps": 1}]),
     "links[0].site: unknown site 'Q'"),
    (lambda r: r.update(links=[{"endpoint": "A-SE", "site": "A"}]), "links[0].mbps: required"),
    (lambda r: r.update(policies=["fastest"]), "policies: each one of"),
    (lambda r: r.update(network={"default_mbps": -1}), "network.default_mbps: must be "
                                                       "positive"),
])
def test_a_bad_scenario_names_its_key(edit, key):
    raw = tomllib.loads(GOOD)
    edit(raw)
    with pytest.raises(ScenarioError) as err:
        parse(raw)
    assert str(err.value).startswith(key), str(err.value)


def test_a_file_that_is_not_toml_or_not_there_is_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[sites\n")
    with pytest.raises(ScenarioError, match=r"bad.toml: not TOML"):
        load(bad)
    with pytest.raises(ScenarioError, match=r"missing.toml"):
        load(tmp_path / "missing.toml")
