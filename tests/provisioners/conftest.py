"""A real single-node Slurm cluster, started once per test session by scripts/start-slurm."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from harness import GatewayServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def slurm():
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("starting Slurm daemons needs root (CI runs as root)")
    r = subprocess.run([str(ROOT / "scripts" / "start-slurm")], capture_output=True, text=True,
                       timeout=300)
    if r.returncode != 0:
        pytest.fail(f"Slurm did not start: {r.stderr[-2000:]}")
    conf = r.stdout.strip().splitlines()[-1]
    os.environ["SLURM_CONF"] = conf  # the server and its sbatch calls inherit it
    return conf


@pytest.fixture
def gateway(tmp_path):
    """``dask-gateway-server`` with its local backend: clusters are processes here."""
    gw = GatewayServer(tmp_path).start()
    yield gw.url
    gw.stop()
