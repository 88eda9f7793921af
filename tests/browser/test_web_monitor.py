"""The web monitor in a real headless Chromium, against a real server whose local pilots
ran real tasks: successes, user errors, a job that died and was retried, three sites.

Kinds tested: a view that does not render what its JSON holds (every view is opened,
its rows checked and a screenshot kept in test-artifacts/); a page that is not live (a
job finishing shows on an open task page without reloading, within ``LIVE_S``: well
under a second on a quiet machine, more on a loaded CI host); a page that
grows while open (a refresh replaces a view's rows, never appends); a route that
answers without the user token (every monitor route, page, view and asset, refuses);
a browser whose monitor tabs each hold a connection of the six it opens to one host
(its tabs share one event stream, however they elect the tab that holds it: by Web
Locks, over the BroadcastChannel where there are none, and it passes to another tab
when that one is closed or hidden; only without BroadcastChannel does each tab hold
its own).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import httpx
import pytest
from harness import SET_HIDDEN, ServerProcess, wait_for

from panda_lab.server.monitor import ASSETS

pytestmark = pytest.mark.slow

#: How long a closed stream may take to leave the server's count (a loaded host is slow).
SETTLE_S = 15
#: How long a live page may take to show a change (well under a second when quiet).
LIVE_S = 5


def square(x):
    print(f"squaring {x}")
    return x * x


def fail_odd(x):
    if x % 2:
        raise ValueError(f"odd input {x}")
    return x


def die_once(marker_dir, i):
    """Dies (the worker process exits: a system error, retried) on its first attempt."""
    marker = Path(marker_dir) / f"died-{i}"
    if not marker.exists():
        marker.write_text("")
        os._exit(3)
    return i


def nap(t):
    time.sleep(t)
    return t


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    import sys

    import cloudpickle

    # the pilots cannot import this module: its functions travel by value (the autouse
    # fixture that does this for tests is not active yet in a module's fixture)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    home = tmp_path_factory.mktemp("monitor-home")
    server = ServerProcess(home).start()
    lab = server.lab()
    markers = tmp_path_factory.mktemp("markers")
    ids = {"ok": lab.submit(square, [(i,) for i in range(3)], name="squares-ok"),
           "broken": lab.submit(fail_odd, [(i,) for i in range(2)], name="odd-broken"),
           "flaky": lab.submit(die_once, [(str(markers), 0)],
                               name="flaky-retried")}
    for task in ids.values():
        lab.wait(task, timeout=90)
    try:
        yield {"server": server, "lab": lab, "ids": ids, "url": server.info["url"],
               "token": server.info["user_token"]}
    finally:
        lab.close()
        # nothing of it is kept: no clean shutdown to wait for
        server.kill()
        server.kill_pilots()
        server.log.close()
        with contextlib.suppress(ValueError):   # the autouse fixture may have done it
            cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def login(chromium, filled):
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(15_000)
    page.goto(f"{filled['url']}/monitor/")
    page.locator("#login").wait_for()
    page.fill("#token", filled["token"])
    page.click("#login button")
    page.locator("table.tasks").wait_for()
    return page


def open_view(page, url: str, selector: str) -> None:
    """Go to ``url`` in the same tab (the token stays in sessionStorage) and wait for
    ``selector`` in the rendered view."""
    page.goto(url)
    page.locator(selector).first.wait_for()


def test_every_view_renders_from_the_real_server(chromium, filled, artifacts):
    ids, base = filled["ids"], f"{filled['url']}/monitor"
    page = login(chromium, filled)
    rows = page.locator("table.tasks tbody tr")
    assert rows.count() == 3
    ok = page.locator(f"tr[data-task-id='{ids['ok']}']")
    assert ok.get_attribute("data-state") == "done" and "3/3" in ok.inner_text()
    assert page.locator(f"tr[data-task-id='{ids['broken']}']").get_attribute(
        "data-state") == "finished"
    assert page.locator(".facet[data-facet='state']").inner_text().count("\n") >= 1
    page.screenshot(path=str(artifacts / "monitor-tasks.png"), full_page=True)

    # filters are the URL: a name glob, and a sort by a column
    open_view(page, f"{base}/tasks?name=*broken&sort=name", "table.tasks")
    assert page.locator("table.tasks tbody tr").count() == 1

    # a task: jobs per site by state, wall time per site, progress, brokerage
    open_view(page, f"{base}/tasks/{ids['ok']}", "#task-done")
    assert page.locator("#task-done").get_attribute("data-done") == "3"
    sites = page.locator("table.jobs-by-site tr[data-site]")
    assert sites.count() >= 1 and all(
        s.startswith("LOCAL-") for s in sites.evaluate_all("r => r.map(e => e.dataset.site)"))
    assert page.locator("table.dist tr[data-site] svg.hist rect").count() >= 20
    # the payloads' peak memory, as the pilots measured it, per site
    memory = page.locator("table.dist[data-title='Peak memory per site'] tr[data-site]")
    assert memory.count() >= 1 and memory.first.locator("svg.hist rect").count() >= 1
    assert page.locator(".progress-chart svg.hist").count() == 1
    assert "picked" in page.locator("table.brokerage").inner_text()
    page.screenshot(path=str(artifacts / "monitor-task.png"), full_page=True)

    # jobs, filtered to the failures, with facets
    open_view(page, f"{base}/jobs?state=failed", "table.jobs")
    failed = page.locator("table.jobs tbody tr")
    assert failed.count() == 2          # a user error, a death (retried)
    assert "user" in page.locator(".facet[data-facet='error_category']").inner_text()
    assert page.locator(".facet[data-facet='attempt'] li").count() == 1   # all first tries
    page.screenshot(path=str(artifacts / "monitor-jobs.png"), full_page=True)

    # a job: a user error's traceback and output, where it ran and why
    job = next(j for j in filled["lab"].jobs(ids["broken"]) if j["state"] == "failed")
    open_view(page, f"{base}/jobs/{job['id']}", "pre.traceback")
    assert "ValueError: odd input" in page.locator("pre.traceback").inner_text()
    assert '"picked"' in page.locator("pre.broker").inner_text()
    assert page.locator("b.where").inner_text().startswith("LOCAL-")
    # what its payload used, and its pilot's memory and CPU: measured, not 0
    used = page.locator("p.usage").inner_text()
    assert used.startswith("used: peak memory ") and " MB, CPU " in used, used
    assert f"pilot {job['pilot_id']} with its workers: " in used and "not" not in used, used
    page.screenshot(path=str(artifacts / "monitor-job.png"), full_page=True)

    # a retried job: both attempts listed
    retried = filled["lab"].jobs(ids["flaky"])[0]
    open_view(page, f"{base}/jobs/{retried['id']}", "table.attempts")
    assert page.locator("table.attempts tr").count() == 3    # header and two attempts

    # errors grouped by category and message, by site, by task
    open_view(page, f"{base}/errors", "table.by-message")
    text = page.locator("table.by-message").inner_text()
    assert "ValueError: odd input 1" in text and "system" in text
    assert page.locator("table.by-task").inner_text().count("odd-broken") == 1
    page.screenshot(path=str(artifacts / "monitor-errors.png"), full_page=True)

    # sites: kind, provisioner, pilots with heartbeat age, failure rate
    open_view(page, f"{base}/sites", "section.site")
    assert page.locator("section.site").count() == 3
    grid = page.locator("section.site[data-site='LOCAL-GRID']")
    assert "grid site, provisioner local" in grid.inner_text()
    assert grid.locator("tr[data-pilot-id]").count() >= 1
    assert "ago" in grid.locator("tr[data-pilot-id]").first.inner_text()
    assert "%" in page.locator(".failure-rate").first.inner_text()
    page.screenshot(path=str(artifacts / "monitor-sites.png"), full_page=True)
    page.close()


def test_a_finishing_job_shows_on_an_open_task_page_live(chromium, filled, artifacts):
    lab = filled["lab"]
    page = login(chromium, filled)
    task = lab.submit(nap, [(0.5,), (1.2,)], name="live-naps")
    page.goto(f"{filled['url']}/monitor/tasks/{task}")
    page.locator("#task-done").wait_for()
    page.locator("#live.on").wait_for()
    seen, lags = 0, []
    deadline = time.monotonic() + 60
    while seen < 2 and time.monotonic() < deadline:
        done = lab.task_info(task)["n_done"]
        if done > seen:
            t0 = time.monotonic()
            # live: without a reload (the task page has no poll to fall back on).  Well
            # under a second on a quiet machine; the bound leaves room for a CI host
            # running two browsers, servers and pilots on two cores.
            page.locator(f"#task-done[data-done='{done}']").wait_for(timeout=LIVE_S * 1000)
            lags.append(time.monotonic() - t0)
            seen = done
        time.sleep(0.03)
    assert seen == 2
    print(f"finished jobs shown {', '.join(f'{x * 1000:.0f}' for x in lags)} ms "
          "after the server counted them")
    page.screenshot(path=str(artifacts / "monitor-task-live.png"), full_page=True)
    page.close()


def test_an_open_list_replaces_its_rows_and_does_not_grow(chromium, filled):
    lab = filled["lab"]
    page = login(chromium, filled)
    page.goto(f"{filled['url']}/monitor/tasks?per_page=2")
    page.locator("table.tasks").wait_for()
    page.locator("#live.on").wait_for()
    nodes = page.evaluate("document.getElementsByTagName('*').length")
    for i in range(2):
        stamp = page.locator("#view").get_attribute("data-updated")
        task = lab.submit(square, [(i,)], name=f"more-{i}")
        wait_for(lambda t=task: page.locator(f"tr[data-task-id='{t}']").count(), 10,
                 what="the new task listed")
        assert page.locator("#view").get_attribute("data-updated") != stamp
        assert page.locator("table.tasks tbody tr").count() == 2
    grown = page.evaluate("document.getElementsByTagName('*').length") - nodes
    assert abs(grown) <= 10, f"the page grew by {grown} elements"
    page.close()


def test_the_monitor_refuses_without_the_user_token(chromium, filled):
    url, ids = filled["url"], filled["ids"]
    paths = ["/monitor/", "/monitor/tasks", f"/monitor/tasks/{ids['ok']}", "/monitor/jobs",
             "/monitor/jobs/1", "/monitor/errors", "/monitor/sites", "/monitor/tasks?json",
             *(f"/monitor/static/{name}" for name in ASSETS), "/monitor/api/tasks",
             f"/monitor/api/tasks/{ids['ok']}", "/monitor/api/jobs", "/monitor/api/jobs/1",
             "/monitor/api/errors", "/monitor/api/sites"]
    page = chromium.new_page()
    pilot = filled["server"].info["pilot_token"]
    for path in paths:
        r = page.request.get(url + path)
        assert r.status == 401, (path, r.status)
        assert "squares-ok" not in r.text()
        r = page.request.get(url + path, headers={"Authorization": f"Bearer {pilot}"})
        assert r.status == 403, (path, r.status)
        r = page.request.get(url + path, headers={"Authorization": f"Bearer {filled['token']}"})
        assert r.status == 200, (path, r.status)
    # in the browser: the login form and nothing else; a wrong token is told so
    page.goto(f"{url}/monitor/tasks")
    page.locator("#login").wait_for()
    assert "squares-ok" not in page.content()
    page.fill("#token", "not-the-token")
    page.click("#login button")
    page.locator("#login-error:has-text('wrong token')").wait_for()
    assert page.evaluate("sessionStorage.getItem('panda-lab-token')") is None
    page.close()


def test_a_share_link_opens_its_task_page_read_only(chromium, filled, artifacts):
    """``panda-lab share``'s link in a fresh browser (no token): the task's page, the
    token taken out of the address bar, no way to the other views; an expired link says
    so on the login form."""
    lab, ids = filled["lab"], filled["ids"]
    link = lab.share(ids["ok"], expires_s=600)
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(link["url"])
    page.locator("#task-done").wait_for()
    assert page.locator("#task-done").get_attribute("data-done") == "3"
    assert "squares-ok" in page.locator("#view h2").inner_text()
    assert "#share" not in page.url and link["token"] not in page.url
    assert page.locator("nav.top a").count() == 0          # no other view to go to
    assert page.locator("#view a[data-nav]").count() == 0
    assert "read-only" in page.locator("#live").inner_text()
    page.screenshot(path=str(artifacts / "monitor-shared-task.png"), full_page=True)
    context.close()

    short = lab.share(ids["broken"], expires_s=0.5)
    time.sleep(max(0.0, short["expires_at"] - time.time()) + 0.1)
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(short["url"])
    page.locator("#login-error:has-text('expired')").wait_for()
    assert "odd-broken" not in page.content()
    context.close()


SQUARE_SVG = ('<?xml version="1.0" encoding="utf-8"?><svg xmlns="http://www.w3.org/2000/svg" '
              'width="120" height="60"><rect width="120" height="60" fill="#3f90da"/></svg>')


def test_the_task_page_shows_scouting_merged_histograms_and_links(chromium, filled):
    """The task page's analysis sections, rendered from the task's JSON (the server's is
    tested in tests/server/test_monitor_task_page.py; these tasks are no analyses, so
    the sections are added to the real record here)."""
    task_id = filled["ids"]["ok"]
    record = filled["lab"].api.get(f"/monitor/api/tasks/{task_id}")
    assert record["scouting"] == {"scouts": [], "sizing": None}
    record["scouting"] = {
        "scouts": [{"job_index": 0, "events": 1000, "attempt": 1, "state": "finished",
                    "site": "LOCAL-GRID", "wall_s": 2.0, "events_per_s": 500.0}],
        "sizing": {"events_per_second": 500.0, "rss_mb": 150.0,
                   "per_site": {"LOCAL-GRID": 500.0}, "events_per_job": 30000,
                   "note": "30000 events per job for about 60 s on the slowest site"}}
    record["links"] = {"LOCAL-GRID": [{"endpoint": "root://eos.example", "mbps": 80.0,
                                       "latency_ms": 12.0, "source": "declared",
                                       "observations": 0, "age_s": None}]}
    record["histograms"] = [{"name": "dimuon.mass", "svg": SQUARE_SVG, "events": 3000,
                             "final": False}]
    page = login(chromium, filled)
    page.route(f"**/monitor/api/tasks/{task_id}", lambda route: route.fulfill(json=record))
    open_view(page, f"{filled['url']}/monitor/tasks/{task_id}", "table.scouts")
    assert "500.0" in page.locator("table.scouts tr[data-scout='0']").inner_text()
    assert page.locator("p.sizing").get_attribute("data-events-per-job") == "30000"
    assert "LOCAL-GRID: 500.0 events/s" in page.locator("p.sizing").inner_text()
    assert "80.0" in page.locator("table.links tr[data-site='LOCAL-GRID']").inner_text()
    img = page.locator("figure[data-hist='dimuon.mass'] img")
    img.wait_for()
    page.wait_for_function("document.querySelector('figure img').naturalWidth === 120")
    assert "partial" in page.locator("figure[data-hist='dimuon.mass']").inner_text()
    page.close()




def test_a_hidden_tab_lets_the_stream_go_and_catches_up_when_shown(chromium, filled):
    """A hidden tab stands back from holding its browser's shared event stream: the
    holder hidden, a shown tab takes it over; every tab hidden, the server holds no
    stream for the browser; a tab shown again opens it and catches up on what happened
    meanwhile."""
    before = stream_clients(filled)
    context = browser(chromium, filled)
    pages = open_tabs(context, filled, ["tasks", "tasks?sort=-id"])
    [holder] = leaders(pages)
    [other] = [p for p in pages if p != holder]
    pages[holder].evaluate(SET_HIDDEN, True)
    pages[holder].locator("#live", has_text="hidden").wait_for()
    wait_for(lambda: leaders(pages) == [other], 5, what="the shown tab holding the stream")
    wait_for(lambda: stream_clients(filled) == before + 1, SETTLE_S, what="one stream client")
    pages[other].evaluate(SET_HIDDEN, True)
    wait_for(lambda: stream_clients(filled) == before, SETTLE_S, what="no stream held")
    first = pages[holder]
    task = filled["lab"].submit(square, [(5,)], name="while-hidden")
    filled["lab"].wait(task, timeout=60)
    assert first.locator(f"tr[data-task-id='{task}']").count() == 0
    first.evaluate(SET_HIDDEN, False)
    first.locator("#live.on").wait_for()
    first.locator(f"tr[data-task-id='{task}']").wait_for()
    context.close()


def test_a_hidden_tab_fetches_nothing_not_even_what_it_had_pending(chromium, filled):
    """A hidden tab refreshes nothing. The kind: work done for a view no one sees. Its
    members: the refresh the event stream scheduled just before the tab was hidden (each
    opening of the stream schedules one; it let a hidden tab show a task submitted while
    it was hidden), and a share link's polling. The page's clock is paused from the
    start, so the refresh is pending when the tab is hidden, and time is then run on by
    hand; shown again, each tab refreshes once."""
    link = filled["lab"].share(filled["ids"]["ok"], expires_s=600)
    for url, ready in [(f"{filled['url']}/monitor/tasks", "#live.on"),
                       (link["url"], "#task-done")]:
        context = browser(chromium, filled)
        context.clock.install()
        context.clock.pause_at(time.time() + 1)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(url)
        page.locator("#view[data-updated]").wait_for()
        page.locator(ready).wait_for()
        asked: list[str] = []
        page.on("request", lambda r, asked=asked: asked.append(r.url)
                if "/monitor/api/" in r.url else None)
        page.evaluate(SET_HIDDEN, True)
        page.clock.run_for(12_000)                # past the refresh and two share polls
        page.wait_for_timeout(500)
        assert asked == [], f"{ready}: a hidden tab fetched {asked}"
        page.evaluate(SET_HIDDEN, False)
        page.clock.run_for(1_500)
        wait_for(lambda asked=asked: asked, 10, what=f"{ready}: the refresh once shown")
        context.close()


def stream_clients(filled) -> int:
    """The server's ``panda_lab_event_stream_clients``, read from ``/metrics``."""
    r = httpx.get(f"{filled['url']}/metrics",
                  headers={"Authorization": f"Bearer {filled['token']}"}, timeout=10)
    r.raise_for_status()
    line = next(x for x in r.text.splitlines()
                if x.startswith("panda_lab_event_stream_clients "))
    return int(float(line.split()[1]))


def browser(chromium, filled, *scripts: str):
    """A browser profile (a context) whose tabs are logged in, as the login form leaves
    a tab (the token in its ``sessionStorage``), and run ``scripts`` first."""
    context = chromium.new_context()
    context.add_init_script(f"sessionStorage.setItem('panda-lab-token', {filled['token']!r})")
    for script in scripts:
        context.add_init_script(script)
    return context


def open_tabs(context, filled, paths: list[str]) -> dict:
    """One monitor tab per path in ``context`` (see :func:`browser`), each painted and
    live; returns path -> page."""
    base = f"{filled['url']}/monitor/"
    pages = {}
    for path in paths:
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.goto(base + path)
        page.locator("#view[data-updated]").wait_for()
        pages[path] = page
    for page in pages.values():
        page.locator("#live.on").wait_for()
    return pages


def leaders(pages: dict) -> list[str]:
    return [path for path, page in pages.items()
            if page.locator("#live").get_attribute("data-lead") == "yes"]


def check_live(pages: dict, filled, name: str, quiet: str | None = None) -> None:
    """A task of one job run to its end shows on every open page (its row on the task
    and job lists; a fresh render elsewhere) within a few seconds; ``quiet``, a page of
    another task, is not refreshed for it."""
    stamps = {p: page.locator("#view").get_attribute("data-updated")
              for p, page in pages.items()}
    task = filled["lab"].submit(square, [(3,)], name=name)
    filled["lab"].wait(task, timeout=60)
    deadline = time.monotonic() + 5
    for path, page in pages.items():
        left = max(0.5, deadline - time.monotonic()) * 1000
        if path == quiet:
            continue
        if path.startswith("tasks?"):
            page.locator(f"tr[data-task-id='{task}'][data-state='done']").wait_for(
                timeout=left)
        elif path.startswith("jobs?"):
            page.locator(f"table.jobs a[href$='/tasks/{task}']").first.wait_for(timeout=left)
        else:
            page.wait_for_function("s => document.getElementById('view').dataset.updated "
                                   "!== s", arg=stamps[path], timeout=left)
    if quiet in pages:
        assert pages[quiet].locator("#view").get_attribute("data-updated") == stamps[quiet]


def test_the_tabs_of_one_browser_share_one_event_stream(chromium, filled):
    """Eight monitor tabs in one browser profile (more than the six connections a
    browser opens to one host): each paints and stays live, the server sees one stream
    client for them all; the tab that holds it closed, another takes it over."""
    before = stream_clients(filled)
    context = browser(chromium, filled)
    ok = filled["ids"]["ok"]
    paths = ["tasks?sort=-id", "tasks?name=tabs-*", "jobs?sort=-id",
             "jobs?state=finished&sort=-id", "errors", "sites", f"tasks/{ok}", "tasks?per_page=5"]
    pages = open_tabs(context, filled, paths)
    wait_for(lambda: stream_clients(filled) == before + 1, SETTLE_S, what="one stream client")
    assert len(leaders(pages)) == 1
    check_live(pages, filled, "tabs-1", quiet=f"tasks/{ok}")

    # the stream's holder closed: another tab opens it, and every tab reads its view
    # again for what happened in between (the task page of another task too)
    stamps = {p: page.locator("#view").get_attribute("data-updated")
              for p, page in pages.items()}
    pages.pop(leaders(pages)[0]).close()
    wait_for(lambda: len(leaders(pages)) == 1, 5, what="another tab holding the stream")
    for path, page in pages.items():
        page.locator("#live.on").wait_for()
        page.wait_for_function("s => document.getElementById('view').dataset.updated !== s",
                               arg=stamps[path], timeout=5_000)
    wait_for(lambda: stream_clients(filled) == before + 1, SETTLE_S, what="one stream client")
    check_live(pages, filled, "tabs-2", quiet=f"tasks/{ok}")
    assert stream_clients(filled) == before + 1
    context.close()
    wait_for(lambda: stream_clients(filled) == before, SETTLE_S, what="the stream closed")


NO_LOCKS = "Object.defineProperty(Navigator.prototype, 'locks', {get: () => undefined});"
NO_CHANNEL = "delete window.BroadcastChannel;"


def test_without_web_locks_the_tabs_elect_over_the_channel_and_without_it_each_streams(
        chromium, filled):
    """Web Locks exist in a secure context only (an http:// address other than
    localhost has none): there the tabs elect their stream's holder over the
    BroadcastChannel, with the same result; a browser without BroadcastChannel gives
    each tab its own stream, as before."""
    before = stream_clients(filled)
    context = browser(chromium, filled, NO_LOCKS)
    pages = open_tabs(context, filled, ["tasks?sort=-id", "jobs?sort=-id", "tasks?name=elect-*"])
    assert pages["jobs?sort=-id"].evaluate("navigator.locks") is None
    wait_for(lambda: stream_clients(filled) == before + 1 and len(leaders(pages)) == 1, SETTLE_S,
             what="one stream client, one tab holding it")
    pages.pop(leaders(pages)[0]).close()
    wait_for(lambda: len(leaders(pages)) == 1, 5, what="another tab holding the stream")
    wait_for(lambda: stream_clients(filled) == before + 1, SETTLE_S, what="one stream client")
    check_live(pages, filled, "elect-1")
    context.close()

    context = browser(chromium, filled, NO_CHANNEL)
    pages = open_tabs(context, filled, ["tasks?sort=-id", "jobs?sort=-id"])
    wait_for(lambda: stream_clients(filled) == before + 2, SETTLE_S, what="a stream per tab")
    assert len(leaders(pages)) == 2
    context.close()
