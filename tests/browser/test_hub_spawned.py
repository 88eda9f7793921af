"""JupyterHub end to end: a real hub (tests/hubrun.py) spawns real single-user servers
(JupyterHub's ``SimpleLocalProcessSpawner``: JupyterLab in a home directory of each user,
as this OS user) for two users and a hub admin, with panda-lab as the hub's service and
``PANDA_LAB_URL`` in the spawner's environment, as the README tells an operator to set it.

In each user's server a notebook runs in a kernel that server starts (its REST API and
kernel websocket, as JupyterLab runs one) and does ``lab = panda_lab.connect()`` with no
token: the kernel has the single-user server's ``JUPYTERHUB_API_TOKEN``, and panda-lab
asks the hub whose it is.  Each user's ``lab.tasks()`` then lists their own task only,
the admin's both; the JupyterLab panel of each server (its server extension speaks to
panda-lab with the same hub token) shows the same, in headless Chromium.

A hub that cannot start a server fails this module with the hub's log, never skips it.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from harness import panel_jupyter_path
from hubrun import Hub, run_notebook

pytestmark = pytest.mark.slow

USERS, ADMIN = ("alice", "bob"), "ada"

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
'''

NOTEBOOK = [  # no token, no URL: the single-user server's environment has them
    "import os\nimport panda_lab\nlab = panda_lab.connect()\nme = os.environ['JUPYTERHUB_USER']\n"
    "print(me)",
    "def square(x):\n    return x * x\n"
    "task = lab.submit(square, [(i,) for i in range(3)], name='nb-' + me)\nprint(task)",
    "print(lab.tasks()[['name', 'owner']].reset_index().to_json(orient='records'))",
]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """``(Hub, {name: single-user server base URL}, {name: hub token})`` for alice, bob
    and the admin ada, their servers started."""
    hub_dir = tmp_path_factory.mktemp("hub")
    homes = hub_dir / "home"
    environment = {"PANDA_LAB_URL": "", "JUPYTERHUB_ALLOW_TOKEN_IN_URL": "1"}
    jupyter_path = panel_jupyter_path(hub_dir / "jupyter-data")
    if jupyter_path is not None:
        environment["JUPYTER_PATH"] = jupyter_path
    for name in (*USERS, ADMIN):  # no "would you like news?" popup over the panel
        notes = (homes / name / ".jupyter" / "lab" / "user-settings" / "@jupyterlab"
                 / "apputils-extension")
        notes.mkdir(parents=True)
        (notes / "notification.jupyterlab-settings").write_text(
            '{"fetchNews": "false", "checkForUpdates": false}')
    h = Hub(hub_dir, users={*USERS, ADMIN}, admins={ADMIN})
    environment["PANDA_LAB_URL"] = h.panda_url
    (hub_dir / "jupyterhub_config.py").write_text(
        (hub_dir / "jupyterhub_config.py").read_text()
        + SPAWNER_CONFIG.format(homes=homes, environment=environment))
    try:
        h.start()
        servers = h.spawn([*USERS, ADMIN])
        tokens = {name: h.token(name) for name in (*USERS, ADMIN)}
        yield h, servers, tokens
    finally:
        h.stop()


@pytest.fixture(scope="module")
def notebooks(hub):
    """Each user's notebook run in their own server, the admin's last: ``{name: (task
    id, [(id, name, owner) of its lab.tasks()])}``."""
    _, servers, tokens = hub

    def run(name: str) -> tuple[int, list[tuple]]:
        out = run_notebook(servers[name], tokens[name], "submit.ipynb", NOTEBOOK)
        assert out[0].strip() == name, out  # the kernel runs in that user's server
        return int(out[1]), [(r["id"], r["name"], r["owner"]) for r in json.loads(out[2])]

    with ThreadPoolExecutor(len(USERS)) as pool:  # the users at once, then the admin
        ran = dict(zip(USERS, pool.map(run, USERS), strict=True))
    ran[ADMIN] = run(ADMIN)
    return ran


def test_each_users_notebook_sees_only_their_own_task(notebooks):
    for name in USERS:
        task, seen = notebooks[name]
        assert seen == [(task, f"nb-{name}", name)], seen


def test_the_hub_admins_notebook_sees_everyones(notebooks):
    task, seen = notebooks[ADMIN]
    everyone = {(notebooks[n][0], f"nb-{n}", n) for n in (*USERS, ADMIN)}
    assert set(seen) == everyone and task in {t for t, _, _ in seen}


def test_each_panel_shows_what_its_user_may_see(chromium, hub, notebooks):
    """Each user's JupyterLab panel lists what panda-lab lets that user see, and its live
    event stream is let through by the single-user server (an ``EventSource`` carries
    the XSRF token in its URL: JupyterHub refuses a cookie-authenticated stream without
    it)."""
    _, servers, tokens = hub
    mine = {name: {notebooks[name][0]} for name in USERS}
    mine[ADMIN] = {notebooks[n][0] for n in (*USERS, ADMIN)}
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
