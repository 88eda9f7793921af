"""The stage-in cache keys of a site (``cache_bytes``, ``cache_dir``): read, kept with the
site, and refused with an error naming the site and the key.

Kind tested: a cache key that silently means something else.  Members: a negative or
non-integer bound, a directory without a bound, the keys lost on the way to the store.
"""

from __future__ import annotations

import pytest

from panda_lab.provisioners.config import ConfigError, parse_site


def test_the_cache_keys_are_kept_with_the_site():
    site = parse_site("S", {"cache_bytes": 10_000_000, "cache_dir": "/scratch/c"})
    assert (site.cache_bytes, site.cache_dir) == (10_000_000, "/scratch/c")
    assert site.as_dict()["cache_bytes"] == 10_000_000
    assert site.as_dict()["cache_dir"] == "/scratch/c"
    assert "cache_bytes" not in parse_site("T", {}).as_dict()  # no cache: no key


@pytest.mark.parametrize("body,words", [
    ({"cache_bytes": -1}, ["[sites.S]", "cache_bytes", "negative"]),
    ({"cache_bytes": "2 GB"}, ["[sites.S]", "cache_bytes", "int"]),
    ({"cache_bytes": 1.5}, ["[sites.S]", "cache_bytes", "int"]),
    ({"cache_dir": "/scratch/c"}, ["[sites.S]", "cache_dir", "cache_bytes"]),
])
def test_a_wrong_cache_key_is_an_error_naming_it(body, words):
    with pytest.raises(ConfigError) as exc:
        parse_site("S", body)
    for w in words:
        assert w in str(exc.value), str(exc.value)
