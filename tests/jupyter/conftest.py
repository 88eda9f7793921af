"""A real server and a real IPython kernel, shared by a module's notebook tests."""

from __future__ import annotations

import pytest
from kernel import Kernel


@pytest.fixture(scope="module")
def kernel(module_server):
    k = Kernel(module_server.home)
    k.ok("%load_ext panda_lab")
    yield k
    k.stop()


@pytest.fixture
def nlab(module_server):
    lab = module_server.lab()
    yield lab
    lab.close()
