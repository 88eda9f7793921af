"""Every endpoint of the server is authenticated, and with the right kind of token.

The routes are enumerated from the app itself, so a route added without auth fails here.
"""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from panda_lab.server.app import Server, create_app
from panda_lab.server.config import ServerConfig

#: The token Prometheus sends: ``/metrics`` only.
SCRAPE = "scrape-token-of-the-test"


@pytest.fixture(scope="module")
def app_and_tokens(tmp_path_factory):
    home = tmp_path_factory.mktemp("auth-home")
    server = Server(ServerConfig(home=home, provision=False, scrape_token=SCRAPE))
    app = create_app(server)
    yield app, server.user_token, server.pilot_token
    server.close()


def _api_routes(routes, prefix=""):
    """Every APIRoute with its full path, through included routers (whose shape differs
    between FastAPI versions: flattened copies, or wrappers holding the router)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route
        ctx = getattr(route, "include_context", None)
        if ctx is not None:
            yield from _api_routes(ctx.included_router.routes, prefix + ctx.prefix)


def _routes(app):
    for path, route in _api_routes(app.routes):
        for method in route.methods:
            # Path parameters get a harmless value; auth is checked before anything else.
            yield method, re.sub(r"\{[^}]+\}", "1", path), path


def test_there_are_routes_to_check(app_and_tokens):
    app, _, _ = app_and_tokens
    paths = {p for _, _, p in _routes(app)}
    assert "/api/tasks" in paths and "/api/pilot/acquire" in paths
    assert "/api/openapi.json" in paths and "/metrics" in paths and len(paths) > 20
    # the web monitor: its JSON views, its pages and its assets
    assert {"/monitor/api/tasks", "/monitor/api/jobs/{job_id}", "/monitor/",
            "/monitor/tasks/{task}", "/monitor/static/{name}"} <= paths


def test_a_monitor_page_refused_to_a_browser_is_its_login_form(app_and_tokens):
    """A browser's navigation carries no bearer header: the refusal (401, or 403 for a
    pilot's token) comes with the page that asks for the token, and no data."""
    app, user, pilot = app_and_tokens
    html = {"Accept": "text/html"}
    with TestClient(app) as client:
        for path in ("/monitor/", "/monitor/tasks/1", "/monitor/static/monitor.js"):
            r = client.get(path, headers=html)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert 'id="login"' in r.text and r.headers["content-type"].startswith("text/html")
            r = client.get(path, headers={**html, "Authorization": f"Bearer {pilot}"})
            assert r.status_code == 403 and 'id="login"' in r.text
        r = client.get("/monitor/tasks?json", headers=html)
        assert r.status_code == 401 and r.json()["detail"] == "missing bearer token"
        r = client.get("/monitor/static/monitor.js", headers={"Authorization": f"Bearer {user}"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")


def test_every_route_refuses_a_missing_or_wrong_token_and_the_wrong_kind(app_and_tokens):
    app, user, pilot = app_and_tokens
    with TestClient(app) as client:
        checked = 0
        for method, path, template in _routes(app):
            is_pilot = template.startswith("/api/pilot/")
            right, wrong = (pilot, user) if is_pilot else (user, pilot)
            r = client.request(method, path)
            assert r.status_code == 401, (method, template, r.status_code)
            assert r.headers.get("www-authenticate") == "Bearer"
            r = client.request(method, path, headers={"Authorization": "Bearer nope"})
            assert r.status_code == 401, (method, template, "wrong token")
            r = client.request(method, path, headers={"Authorization": f"Basic {right}"})
            assert r.status_code == 401, (method, template, "not a bearer token")
            r = client.request(method, path, headers={"Authorization": f"Bearer {wrong}"})
            assert r.status_code == 403, (method, template, "other kind of token")
            assert "not allowed" in r.json()["detail"]
            checked += 1
        assert checked > 20


def test_the_scrape_token_opens_metrics_and_nothing_else(app_and_tokens):
    app, user, _ = app_and_tokens
    with TestClient(app) as client:
        checked = 0
        for method, path, template in _routes(app):
            r = client.request(method, path, headers={"Authorization": f"Bearer {SCRAPE}"})
            if template == "/metrics":
                assert r.status_code == 200 and "panda_lab_jobs" in r.text
                assert client.get(path, headers={
                    "Authorization": f"Bearer {user}"}).status_code == 200
            else:
                assert r.status_code == 403, (method, template, r.status_code)
            checked += 1
        assert checked > 20


def test_unauthenticated_docs_are_not_served(app_and_tokens):
    app, user, _ = app_and_tokens
    with TestClient(app) as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert client.get(path).status_code == 404
        r = client.get("/api/openapi.json", headers={"Authorization": f"Bearer {user}"})
        assert r.status_code == 200 and "/api/tasks" in r.json()["paths"]


def test_server_binds_loopback_by_default(server):
    assert server.info["host"] == "127.0.0.1"
    assert server.info["url"].startswith("http://127.0.0.1:")
