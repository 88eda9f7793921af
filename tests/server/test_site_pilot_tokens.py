"""Per-site pilot tokens on real processes: each site's provisioner hands its pilots that
site's token (one the server made for the site, or the one in the site's
``pilot_token_file``, issued with ``panda-lab users add-pilot``), and a pilot holding
one site's token can neither register, take, report nor heartbeat as another site.

Kind (a site acting as another): every pilot route a token reaches is checked against the
token's site, whichever way the token came (made by the server, issued by an admin), and
a site file that names a token which is not that site's stops the server with the key
named, rather than handing pilots a token that serves every site.
"""

from __future__ import annotations

import contextlib
import io
import re
import textwrap

import httpx
import psutil
import pytest
from harness import ServerProcess, wait_for

from panda_lab.cli.main import main
from panda_lab.provisioners.config import ConfigError, parse_sites
from panda_lab.server.app import Server
from panda_lab.server.config import ServerConfig


def square(x):
    return x * x


def _users(home, *args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["--home", str(home), "users", *args])
    return rc, out.getvalue().strip(), err.getvalue()


SITES = """
[sites.SITE-A]
provisioner = "local"
pilots = 1

[sites.SITE-B]
provisioner = "local"
pilots = 1
pilot_token_file = "b.token"
"""


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory):
    home = tmp_path_factory.mktemp("site-tokens")
    rc, b_token, _ = _users(home, "add-pilot", "SITE-B")  # before the server: no token needed
    assert rc == 0
    (home / "b.token").write_text(b_token + "\n")
    (home / "sites.toml").write_text(SITES)
    panda = ServerProcess(home, extra=["--sites", str(home / "sites.toml")]).start()
    try:
        yield panda, b_token
    finally:
        panda.stop()


def _pilot_tokens(url: str) -> dict[str, str]:
    """``{site: PANDA_LAB_PILOT_TOKEN}`` of the running pilot processes of the server at
    ``url``, read from their environment as the provisioner set it."""
    found = {}
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "panda_lab.pilot" in cmd and url in cmd:
            with contextlib.suppress(psutil.Error):
                found[cmd[cmd.index("--site") + 1]] = p.environ()["PANDA_LAB_PILOT_TOKEN"]
    return found


def test_each_sites_pilots_get_that_sites_token_and_work_with_it(two_sites):
    panda, b_token = two_sites
    url = panda.info["url"]
    tokens: dict[str, str] = {}
    wait_for(lambda: len(tokens.update(_pilot_tokens(url)) or tokens) == 2, 20,
             what="a pilot of each site")
    assert tokens["SITE-B"] == b_token  # the site file's
    assert tokens["SITE-A"] not in (b_token, panda.info["pilot_token"])  # made for SITE-A
    lab = panda.lab()
    try:
        for site in ("SITE-A", "SITE-B"):
            task = lab.submit(square, [(i,) for i in range(3)], name=f"on-{site}", site=site)
            assert lab.wait(task, timeout=60)["state"] == "done"
            assert {j["site"] for j in lab.jobs(task)} == {site}
            assert sorted(lab.results(task).values()) == [0, 1, 4]
    finally:
        lab.close()


def test_a_pilot_of_one_site_cannot_act_as_another(two_sites):
    panda, b_token = two_sites
    url = panda.info["url"]
    tokens = _pilot_tokens(url)
    admin = {"Authorization": f"Bearer {panda.info['user_token']}"}
    with httpx.Client(base_url=url, timeout=10) as c:
        def running() -> dict[str, int] | None:
            ids = {p["site"]: p["id"] for p in c.get("/api/pilots", headers=admin).json()
                   if p["state"] == "running"}
            return ids if {"SITE-A", "SITE-B"} <= set(ids) else None

        pilots = wait_for(running, 30, what="a running pilot at each site")
        for mine, other in (("SITE-A", "SITE-B"), ("SITE-B", "SITE-A")):
            h = {"Authorization": f"Bearer {tokens[mine]}"}
            theirs = pilots[other]
            refused = {
                "register": c.post("/api/pilot/register", headers=h,
                                   json={"site": other, "host": "h", "pid": 1}),
                "acquire": c.post("/api/pilot/acquire", headers=h,
                                  json={"pilot": theirs, "site": other, "wait": 0}),
                "acquire-own-site": c.post("/api/pilot/acquire", headers=h,
                                           json={"pilot": theirs, "site": mine, "wait": 0}),
                "update": c.post("/api/pilot/update", headers=h,
                                 json={"pilot": theirs, "updates": []}),
                "heartbeat": c.post("/api/pilot/heartbeat", headers=h, json={"pilot": theirs}),
                "end": c.post("/api/pilot/end", headers=h, json={"pilot": theirs}),
            }
            assert {k: r.status_code for k, r in refused.items()} == dict.fromkeys(refused, 403)
            assert other in refused["register"].json()["detail"]
            own = c.post("/api/pilot/register", headers=h,
                         json={"site": mine, "host": "h", "pid": 2})
            assert own.status_code == 200
            c.post("/api/pilot/end", headers=h, json={"pilot": own.json()["pilot"]})
            # a site token is no user's: the client API refuses it
            assert c.get("/api/tasks", headers=h).status_code == 403
        # the admin-issued one is revocable while the server runs
        assert _users(panda.home, "revoke", "pilot@SITE-B")[0] == 0
        r = c.post("/api/pilot/heartbeat", headers={"Authorization": f"Bearer {b_token}"},
                   json={"pilot": pilots["SITE-B"]})
        assert r.status_code == 401


def test_site_file_keys_are_checked_and_named(tmp_path):
    with pytest.raises(ConfigError, match=r"\[sites\.X\] pilot_token_file = .*nope.token"):
        parse_sites({"sites": {"X": {"pilot_token_file": "nope.token"}}},
                    str(tmp_path / "sites.toml"))
    (tmp_path / "empty.token").write_text("\n")
    with pytest.raises(ConfigError, match=r"pilot_token_file .*one token"):
        parse_sites({"sites": {"X": {"pilot_token_file": "empty.token"}}},
                    str(tmp_path / "sites.toml"))
    with pytest.raises(ConfigError, match=r"unknown key 'pilot_token' .*'pilot_token_file'"):
        parse_sites({"sites": {"X": {"pilot_token": "abc"}}})
    with pytest.raises(ConfigError, match=r"pilot_token_file = 1 must be of type str"):
        parse_sites({"sites": {"X": {"pilot_token_file": 1}}})


def test_a_token_file_not_of_its_site_stops_the_server(tmp_path):
    config = ServerConfig(home=tmp_path, provision=False)
    server = Server(config)
    user = server.store.add_user("carol", "user")
    other = server.store.add_user("pilot@Y", "pilot", "Y")
    made = dict(server.site_tokens)
    server.close()
    assert made and all(made.values())
    for token, held in ((user, "the token of 'carol' (user)"),
                        (other, "the token of 'pilot@Y' (pilot of site 'Y')"),
                        ("x" * 40, "no live token")):
        (tmp_path / "x.token").write_text(token)
        config.sites = parse_sites({"sites": {"X": {"pilot_token_file": "x.token"}}},
                                   str(tmp_path / "sites.toml"))
        with pytest.raises(ConfigError, match=r"\[sites\.X\] pilot_token_file = "
                                              rf".*holds {re.escape(held)}.*add-pilot X"):
            Server(config).close()
    # the server-made tokens are kept: a restarted server hands out the same ones
    config.sites = ServerConfig(home=tmp_path).sites
    again = Server(config)
    assert again.site_tokens == made
    again.close()


def test_the_cli_says_which_key_is_wrong(tmp_path):
    """``server run`` reads the site file before it starts anything: exit 2, the key
    named (in-process: nothing is started when the check works)."""
    (tmp_path / "sites.toml").write_text(textwrap.dedent("""
        [sites.X]
        pilot_token_file = "missing.token"
        """))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["--home", str(tmp_path), "server", "run", "--sites",
                   str(tmp_path / "sites.toml")])
    assert rc == 2, err.getvalue()
    assert "[sites.X] pilot_token_file" in err.getvalue()
    assert "missing.token" in err.getvalue()
