"""Real JupyterLab, driven by a real headless Chromium through Playwright."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from harness import ServerProcess, free_port, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="session")
def chromium():
    """Debian's Chromium (scripts/install-system-deps installs it), never a download."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, and CI must run the browser tests: "
                        "run scripts/test")
        pytest.skip("chromium is not installed here (scripts/install-system-deps installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture
def lab_server(tmp_path):
    """A panda-lab server, and a JupyterLab whose kernels find it (PANDA_LAB_HOME)."""
    home = tmp_path / "home"
    home.mkdir()
    panda = ServerProcess(home).start()
    work = tmp_path / "work"
    work.mkdir()
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, PANDA_LAB_HOME=str(home), JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"))
    log = open(tmp_path / "jupyterlab.log", "ab")  # noqa: SIM115
    jlab = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
         f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.expose_app_in_browser=True"],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for(up, 60, interval=0.2, what="jupyter lab up")
        yield {"url": url, "token": token, "work": work, "panda": panda}
    finally:
        jlab.terminate()
        try:
            jlab.wait(15)
        except subprocess.TimeoutExpired:
            jlab.kill()
        log.close()
        panda.stop()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
