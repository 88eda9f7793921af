"""One real server (three local sites, three pilots) shared by the client tests of a module."""

from __future__ import annotations

import pytest
from harness import ServerProcess


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    s = ServerProcess(home).start()
    yield s
    s.stop()


@pytest.fixture
def mlab(shared_server, monkeypatch):
    monkeypatch.setenv("PANDA_LAB_HOME", str(shared_server.home))
    lab = shared_server.lab()
    yield lab
    lab.close()
