"""``panda-lab simulate``: the table, --json, --policy and --seed, and exit code 2 with
the key for a bad scenario."""

from __future__ import annotations

import json

from panda_lab.cli.main import main

SMALL = """
[sites.A]
slots = 2
speed = 1000
endpoint = "A-SE"
[sites.B]
slots = 2
speed = 1000
endpoint = "B-SE"
[datasets.d]
files = 4
file_mb = 10
events_per_file = 2000
replicas = { "A-SE" = 1.0 }
[[tasks]]
dataset = "d"
events_per_job = 1000
"""


def test_json_gives_each_policy_asked_for(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(SMALL)
    assert main(["simulate", str(path), "--json", "--policy", "network",
                 "--policy", "round-robin", "--seed", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["seed"] == 4 and [r["policy"] for r in out["results"]] == ["network",
                                                                          "round-robin"]
    r = out["results"][0]
    assert r["jobs"] == 8 and r["makespan_s"] > 0
    assert set(r["utilisation"]) == {"A", "B"}
    assert sum(r["bytes_by_link"].values()) == 40_000_000


def test_the_table_names_every_policy_and_link(capsys):
    assert main(["simulate", "failing-site", "--policy", "network",
                 "--policy", "least-loaded"]) == 0
    out = capsys.readouterr().out
    assert "network" in out and "least-loaded" in out and "F-SE -> FLAKY" in out


def test_a_bad_scenario_exits_2_naming_the_key(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(SMALL.replace("slots = 2\nspeed = 1000\nendpoint = \"B-SE\"",
                                  "slots = -2\nspeed = 1000\nendpoint = \"B-SE\""))
    assert main(["simulate", str(path)]) == 2
    assert "sites.B.slots: must be positive" in capsys.readouterr().err
