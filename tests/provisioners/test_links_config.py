"""``[endpoints.NAME]`` and ``[[links]]`` of sites.toml: declared links, and the errors that
name the table and the key.

The kind of fault: a typo in the network section silently meaning "no link" or "the
prior".  Members: an unknown key, a missing key, a wrong type, a value out of range, an
unknown endpoint, an unknown site, a link declared twice, a malformed section.
"""

from __future__ import annotations

import pytest

from panda_lab.provisioners.config import ConfigError, parse_sites
from panda_lab.provisioners.links import LinkConfig, load_links, parse_network

SITES = {"A": {"endpoint": "disk-a"}, "B": {}}


def network(**top):
    data = {"sites": SITES, **top}
    return parse_network(data, parse_sites(data))


def test_declared_endpoints_and_links_are_read_in_file_order(tmp_path):
    endpoints, links = network(
        endpoints={"tape": {"url": "root://tape//x", "description": "slow"}},
        links=[{"endpoint": "tape", "site": "B", "throughput": 5.0, "latency": 80.0},
               {"endpoint": "disk-a", "site": "B", "throughput": 200.0}])
    assert endpoints["tape"].url == "root://tape//x"
    assert links == [LinkConfig("tape", "B", 5.0, 80.0), LinkConfig("disk-a", "B", 200.0, 0.0)]
    f = tmp_path / "sites.toml"
    f.write_text('[sites.A]\nendpoint = "disk-a"\n[sites.B]\n'
                 '[[links]]\nendpoint = "disk-a"\nsite = "B"\nthroughput = 12.5\nlatency = 3.0\n')
    assert load_links(f, parse_sites({"sites": SITES})) == [LinkConfig("disk-a", "B", 12.5, 3.0)]


@pytest.mark.parametrize(("top", "message"), [
    ({"links": [{"endpoint": "disk-a", "site": "B", "throughput": 1.0, "speed": 2}]},
     r"\[\[links\]\] #1 unknown key 'speed'"),
    ({"links": [{"endpoint": "disk-a", "site": "B"}]}, r"#1 missing key 'throughput'"),
    ({"links": [{"endpoint": "disk-a", "site": "B", "throughput": "fast"}]}, r"'throughput'"),
    ({"links": [{"endpoint": "disk-a", "site": "B", "throughput": -1.0}]}, r"'throughput'"),
    ({"links": [{"endpoint": "disk-a", "site": "B", "throughput": 1.0, "latency": -1.0}]},
     r"'latency'"),
    ({"links": [{"endpoint": "nowhere", "site": "B", "throughput": 1.0}]},
     r"endpoint 'nowhere' is not declared; known endpoints: disk-a"),
    ({"links": [{"endpoint": "disk-a", "site": "C", "throughput": 1.0}]},
     r"site 'C' is not configured; known sites: A, B"),
    ({"links": [{"endpoint": "disk-a", "site": "B", "throughput": 1.0}] * 2},
     r"#2 link disk-a -> B is declared twice"),
    ({"endpoints": {"x": {"uri": "y"}}}, r"\[endpoints.x\] unknown key 'uri'"),
    ({"links": {"endpoint": "disk-a"}}, r"array of tables"),
])
def test_a_wrong_network_entry_is_an_error_naming_it(top, message):
    with pytest.raises(ConfigError, match=message):
        network(**top)


def test_other_top_level_keys_are_still_refused():
    with pytest.raises(ConfigError, match=r"allowed: \['endpoints', 'links', 'sites'\]"):
        parse_sites({"sites": SITES, "link": []})
