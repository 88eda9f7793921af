"""Real JupyterLab, driven by a real headless Chromium through Playwright."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from harness import CHROMIUM, CHROMIUM_ARGS, JupyterServer, ServerProcess

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium (scripts/install-system-deps installs it), never a download.

    One per module, not per session: Playwright's sync API keeps an event loop running
    on the main thread while it is open, and tests after the browser's (``asyncio.run``
    in tests/server/test_merger.py) would find it there."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, and CI must run the browser tests: "
                        "run scripts/test")
        pytest.skip("chromium is not installed here (scripts/install-system-deps installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(params=["jupyterlab"])
def lab_server(request, tmp_path):
    """A panda-lab server, and a JupyterLab (or, where a test asks, Notebook 7) whose
    kernels find it (PANDA_LAB_HOME)."""
    home = tmp_path / "home"
    home.mkdir()
    panda = ServerProcess(home).start()
    work = tmp_path / "work"
    work.mkdir()
    jlab = JupyterServer(home, work, app=request.param).start()
    try:
        yield {"url": jlab.url, "token": jlab.token, "work": work, "panda": panda,
               "jupyter": jlab}
    finally:
        jlab.stop()
        panda.stop()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
