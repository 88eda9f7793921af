"""One real server (three local sites, three pilots) shared by the client tests of a module."""

from __future__ import annotations

import pytest


@pytest.fixture
def mlab(module_server, monkeypatch):
    monkeypatch.setenv("PANDA_LAB_HOME", str(module_server.home))
    lab = module_server.lab()
    yield lab
    lab.close()
