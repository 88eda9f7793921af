"""Fixtures for the analysis tests: a small generated dataset, and the real ROOT files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from analysis_helpers import SAMPLE_BASKET, SAMPLE_EVENTS, SAMPLE_FILES

from panda_lab.analysis.sample import make_sample

#: the real ROOT files: ``$PANDA_LAB_SHARED_DATA``, by default ``../shared/data``
#: beside the repository
SHARED_DATA = Path(os.environ.get("PANDA_LAB_SHARED_DATA")
                   or Path(__file__).resolve().parents[2] / ".." / "shared" / "data")


@pytest.fixture(scope="session")
def sample_files(tmp_path_factory) -> list[Path]:
    """2 files x 20k events, baskets of 3,000 (so 7 clusters per file, the last one short)."""
    return make_sample(
        tmp_path_factory.mktemp("sample"),
        files=SAMPLE_FILES,
        events=SAMPLE_EVENTS,
        basket_events=SAMPLE_BASKET,
    )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``$PANDA_LAB_SHARED_DATA`` or ``../shared/data`` beside the repository: skipped
    where absent, but never in CI."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the real-file tests, and {SHARED_DATA} is missing")
        pytest.skip(f"{SHARED_DATA} is not here (real ROOT files from scikit-hep-testdata)")
    return SHARED_DATA


@pytest.fixture
def xrootd_server():
    """A real xrootd (``harness.XRootDServer``) serving its ``export`` directory, and the
    XRootD client bindings uproot and fsspec-xrootd read root:// with.  Missing in CI is
    a failure; elsewhere a skip that says how to get it."""
    try:
        import XRootD.client  # noqa: F401
        from harness import XRootDServer

        server = XRootDServer().start()
    except (ImportError, FileNotFoundError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must test XRootD reading: {exc}")
        pytest.skip(f"no XRootD here ({exc}); scripts/test installs it")
    yield server
    server.stop()
