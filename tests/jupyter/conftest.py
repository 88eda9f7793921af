"""A real server and a real IPython kernel, shared by a module's notebook tests."""

from __future__ import annotations

import pytest
from harness import ServerProcess
from kernel import Kernel


@pytest.fixture(scope="module")
def nb_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    s = ServerProcess(home).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def kernel(nb_server):
    k = Kernel(nb_server.home)
    k.ok("%load_ext panda_lab")
    yield k
    k.stop()


@pytest.fixture
def nlab(nb_server):
    lab = nb_server.lab()
    yield lab
    lab.close()
