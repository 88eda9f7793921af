"""JupyterHub end to end: a real hub (tests/hubrun.py) runs panda-lab as one of its
managed services (``panda-lab server run --jupyterhub``) and spawns real single-user
servers (JupyterHub's ``SimpleLocalProcessSpawner``: JupyterLab in a home directory of
each user, as this OS user) for two users and a hub admin, with ``PANDA_LAB_URL`` in the
spawner's environment, as the README tells an operator to set it.

First the hub's tokens: each hub user's token (a single-user server's narrow one too)
identifies that user at panda-lab (through JupyterHub's own ``HubAuth``), each sees and
acts on their own tasks only, a hub admin is an admin at panda-lab, and a token the hub
does not know is refused.

Then the notebooks: in each user's server a notebook runs in a kernel that server starts
(its REST API and kernel websocket, as JupyterLab runs one) and does ``lab =
panda_lab.connect()`` with no token: the kernel has the single-user server's
``JUPYTERHUB_API_TOKEN``, and panda-lab asks the hub whose it is.  Each user's
``lab.tasks()`` lists their own tasks only, the admin's everyone's; the JupyterLab panel of
each server (its server extension speaks to panda-lab with the same hub token) shows the
same in headless Chromium, and its live event stream gets through JupyterHub's XSRF check.

A hub that cannot start a server fails with the hub's log, never skips: one user's server
here is made to die at start, and the waiting says so at once.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import jupyterhub  # the test extra installs it: missing is a failure, not a skip
import pytest
from harness import panel_jupyter_path
from hubrun import Hub, run_notebook

from panda_lab.client.session import connect
from panda_lab.model.states import TaskState

pytestmark = pytest.mark.slow

USERS, ADMIN = ("alice", "bob"), "ada"
#: A hub user whose server dies at start (the spawner's pre-spawn hook breaks its command).
BROKEN = "mallory"

SPAWNER_CONFIG = '''
c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
c.SimpleLocalProcessSpawner.home_dir_template = "{homes}/{{username}}"
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
c.Spawner.args = ["--allow-root", "--LabApp.news_url=",
                  "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                  "--LabApp.expose_app_in_browser=True"]
c.Spawner.default_url = "/lab"
c.Spawner.ip = "127.0.0.1"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.Spawner.environment = {environment!r}


def _break_one(spawner):
    if spawner.user.name == "{broken}":
        spawner.cmd = [sys.executable, "-c", "raise SystemExit('no server for {broken}')"]


c.Spawner.pre_spawn_hook = _break_one
'''

NOTEBOOK = [  # no token, no URL: the single-user server's environment has them
    "import os\nimport panda_lab\nlab = panda_lab.connect()\nme = os.environ['JUPYTERHUB_USER']\n"
    "print(me, *sorted(k for k in os.environ if k.startswith('PANDA_LAB_')))",
    "def square(x):\n    return x * x\n"
    "task = lab.submit(square, [(i,) for i in range(3)], name='nb-' + me)\nprint(task)",
    "print(lab.tasks()[['name', 'owner']].reset_index().to_json(orient='records'))",
]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """``(Hub, {name: single-user server base URL}, {name: hub token})`` for alice, bob
    and the admin ada, their servers started; ``NAME-server`` holds a token of NAME with
    only the scopes of a single-user server's own."""
    hub_dir = tmp_path_factory.mktemp("hub")
    homes = hub_dir / "home"
    environment = {"JUPYTERHUB_ALLOW_TOKEN_IN_URL": "1"}
    jupyter_path = panel_jupyter_path(hub_dir / "jupyter-data")
    if jupyter_path is not None:
        environment["JUPYTER_PATH"] = jupyter_path
    for name in (*USERS, ADMIN):  # no "would you like news?" popup over the panel
        notes = (homes / name / ".jupyter" / "lab" / "user-settings" / "@jupyterlab"
                 / "apputils-extension")
        notes.mkdir(parents=True)
        (notes / "notification.jupyterlab-settings").write_text(
            '{"fetchNews": "false", "checkForUpdates": false}')
    h = Hub(hub_dir, users={*USERS, ADMIN, BROKEN}, admins={ADMIN})
    environment["PANDA_LAB_URL"] = h.panda_url
    h.add_config(SPAWNER_CONFIG.format(homes=homes, environment=environment, broken=BROKEN))
    try:
        h.start()
        servers = h.spawn([*USERS, ADMIN])
        tokens = {}
        for name in (*USERS, ADMIN):
            tokens[name] = h.token(name)
            # the scopes of a single-user server's JUPYTERHUB_API_TOKEN (its 'server'
            # role), less access to the server itself
            tokens[f"{name}-server"] = h.token(name, scopes=["users:activity!user"])
        yield h, servers, tokens
    finally:
        h.stop()


def square(x):
    return x * x


def test_each_hub_user_is_themselves_and_sees_only_their_own(hub, monkeypatch):
    h, _, tokens = hub
    url = h.panda_url
    ids = {}
    for name in USERS:
        # inside a single-user server: the URL is configured, the token is the hub's
        monkeypatch.setenv("PANDA_LAB_URL", url)
        monkeypatch.setenv("JUPYTERHUB_API_TOKEN", tokens[name])
        monkeypatch.delenv("PANDA_LAB_TOKEN", raising=False)
        monkeypatch.delenv("PANDA_LAB_TOKEN_FILE", raising=False)
        lab = connect()
        try:
            ids[name] = lab.submit(square, [(i,) for i in range(3)], name=f"hub-{name}")
            assert [(t["id"], t["owner"]) for t in lab.list_tasks()] == [(ids[name], name)]
        finally:
            lab.close()
    other = {"alice": "bob", "bob": "alice"}
    for name in USERS:
        auth = {"Authorization": f"Bearer {tokens[name]}"}
        theirs = ids[other[name]]
        assert httpx.get(f"{url}/api/tasks/{theirs}", headers=auth).status_code == 404
        assert httpx.post(f"{url}/api/tasks/{theirs}/kill", headers=auth).status_code == 404
        r = httpx.get(f"{url}/api/tasks", params={"user": other[name]}, headers=auth)
        assert r.status_code == 403
        assert httpx.get(f"{url}/api/counts", headers=auth).json()["waiting"] == 3
        assert httpx.get(f"{url}/metrics", headers=auth).status_code == 403  # everyone's

    # the hub's admin is an admin here: everyone's tasks, filterable, and acts on them
    auth = {"Authorization": f"Bearer {tokens[ADMIN]}"}
    seen = {t["id"]: t["owner"] for t in httpx.get(f"{url}/api/tasks", headers=auth).json()}
    assert seen == {ids["alice"]: "alice", ids["bob"]: "bob"}
    only = httpx.get(f"{url}/api/tasks", params={"user": "bob"}, headers=auth).json()
    assert [t["id"] for t in only] == [ids["bob"]]
    assert httpx.get(f"{url}/api/counts", headers=auth).json()["waiting"] == 6
    assert httpx.post("{}/api/tasks/{}/kill".format(url, ids["alice"]),
                      headers=auth).status_code == 200
    alice = {"Authorization": f"Bearer {tokens['alice']}"}
    task = httpx.get("{}/api/tasks/{}".format(url, ids["alice"]), headers=alice).json()
    assert task["state"] == TaskState.ABORTED
    assert httpx.get(f"{url}/metrics", headers=auth).status_code == 200


def test_a_single_user_servers_narrow_token_keeps_who_and_what(hub):
    """Such a token holds only the scopes of JupyterHub's ``server`` role; the hub adds
    its owner's identify scopes (``read:users:name``), which carry the ``admin`` flag, so
    a hub admin in a notebook is an admin here too."""
    h, _, tokens = hub
    url = h.panda_url
    for name in ("alice", ADMIN):
        token = tokens[f"{name}-server"]
        me = httpx.get(f"{h.api}/user", headers={"Authorization": f"token {token}"}).json()
        assert me["name"] == name and me["admin"] == (name == ADMIN)  # what the hub says
        assert "read:users!user" not in me["scopes"]  # a narrow token indeed
        auth = {"Authorization": f"Bearer {token}"}
        r = httpx.post(f"{url}/api/tasks", headers=auth, json={"name": f"narrow-{name}",
                                                               "jobs": []})
        assert r.status_code == 201, r.text
        task = httpx.get("{}/api/tasks/{}".format(url, r.json()["task"]), headers=auth).json()
        assert task["owner"] == name
        # only the admin sees everyone's: the metrics, and the other user's work
        assert httpx.get(f"{url}/metrics", headers=auth).status_code == (
            200 if name == ADMIN else 403)


def test_a_token_the_hub_does_not_know_is_refused(hub):
    h, _, tokens = hub
    r = httpx.get(f"{h.panda_url}/api/tasks", headers={"Authorization": f"Bearer {'x' * 43}"})
    assert r.status_code == 401
    # the hub itself agrees on who holds each token (its API, not ours)
    for name in (*USERS, ADMIN):
        me = httpx.get(f"{h.api}/user",
                       headers={"Authorization": f"token {tokens[name]}"}).json()
        assert me["name"] == name and me["admin"] == (name == ADMIN)


def test_module_runs_a_real_hub(hub):
    """The hub is JupyterHub's own process and API, not a stand-in."""
    h, _, _ = hub
    assert httpx.get(h.api + "/").json()["version"] == jupyterhub.__version__


def owners(hub) -> dict[int, str]:
    """Every task's owner, as the hub admin's panda-lab token reads them."""
    h, _, tokens = hub
    rows = httpx.get(f"{h.panda_url}/api/tasks", params={"limit": 1000},
                     headers={"Authorization": f"Bearer {tokens[ADMIN]}"}).json()
    return {t["id"]: t["owner"] for t in rows}


@pytest.fixture(scope="module")
def notebooks(hub):
    """Each user's notebook run in their own server, the admin's last: ``{name: (task
    id, [(id, name, owner) of its lab.tasks()])}``."""
    _, servers, tokens = hub

    def run(name: str) -> tuple[int, list[tuple]]:
        out = run_notebook(servers[name], tokens[name], "submit.ipynb", NOTEBOOK)
        # the kernel runs in that user's server, which has the URL and no panda-lab token
        assert out[0].split() == [name, "PANDA_LAB_URL"], out
        return int(out[1]), [(r["id"], r["name"], r["owner"]) for r in json.loads(out[2])]

    with ThreadPoolExecutor(len(USERS)) as pool:  # the users at once, then the admin
        ran = dict(zip(USERS, pool.map(run, USERS), strict=True))
    ran[ADMIN] = run(ADMIN)
    return ran


def test_each_users_notebook_sees_only_their_own_tasks(hub, notebooks):
    owner_of = owners(hub)
    for name in USERS:
        task, seen = notebooks[name]
        assert (task, f"nb-{name}", name) in seen
        assert {t for t, _, owner in seen if owner == name} == {
            t for t, owner in owner_of.items() if owner == name}
        assert {owner for _, _, owner in seen} == {name}, seen


def test_the_hub_admins_notebook_sees_everyones(hub, notebooks):
    _, seen = notebooks[ADMIN]
    assert {(t, owner) for t, _, owner in seen} == set(owners(hub).items())
    assert {notebooks[n][0] for n in (*USERS, ADMIN)} <= {t for t, _, _ in seen}


def test_each_panel_shows_what_its_user_may_see(chromium, hub, notebooks):
    """Each user's JupyterLab panel lists what panda-lab lets that user see, and its live
    event stream is let through by the single-user server (an ``EventSource`` carries
    the XSRF token in its URL: JupyterHub refuses a cookie-authenticated stream without
    it)."""
    _, servers, tokens = hub
    owner_of = owners(hub)
    mine = {name: {t for t, owner in owner_of.items() if owner == name} for name in USERS}
    mine[ADMIN] = set(owner_of)
    assert all(notebooks[name][0] in mine[name] for name in mine)
    pages, streams = {}, {name: [] for name in mine}
    try:
        for name in mine:  # all three load at once
            page = chromium.new_context(viewport={"width": 1400, "height": 900}).new_page()
            page.set_default_timeout(60_000)
            page.on("response", lambda r, name=name: streams[name].append(r.status)
                    if "/panda-lab/events" in r.url else None)
            # the token in the URL starts a session (JUPYTERHUB_ALLOW_TOKEN_IN_URL)
            page.goto(f"{servers[name]}lab?token={tokens[name]}", wait_until="commit")
            pages[name] = page
        for name, expected in mine.items():
            page = pages[name]
            page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell")
            tab = page.locator(".lm-TabBar-tab[data-id='panda-lab-panel']")
            tab.wait_for()
            tab.click()
            rows = page.locator(".panda-lab-panel .panda-task-row")
            for task in expected:
                page.locator(f".panda-lab-panel .panda-task-row[data-task-id='{task}']"
                             ).wait_for()
            shown = {int(r.get_attribute("data-task-id")) for r in rows.all()}
            assert shown == expected, (name, shown)
            for _ in range(150):  # Playwright delivers events while it is called
                if streams[name]:
                    break
                page.wait_for_timeout(200)
            assert streams[name][:1] == [200], (name, "the panel's event stream", streams[name])
    finally:
        for page in pages.values():
            page.context.close()


def test_a_server_that_dies_at_start_fails_the_wait_at_once(hub):
    """What a broken spawner does to this module's fixture: an error that names the user
    and shows the server's own last words, long before the hub's ``http_timeout``."""
    h, _, _ = hub
    with pytest.raises(RuntimeError, match=f"{BROKEN}'s server .* exited") as caught:
        h.spawn([BROKEN], timeout=60)
    assert f"no server for {BROKEN}" in str(caught.value)
