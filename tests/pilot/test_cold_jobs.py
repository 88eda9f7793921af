"""A site's speed is learned from warm jobs: the first job of a task in a new worker
process carries its imports and first opens (``cold``), and must not make the site look
slow for many jobs after (store/rows/links.py ``observe_sites``).

The kind of fault: a start-up cost taken for the site's speed.  Members: the worker's
first job ever (a new process), a new task's first job in a worker that ran another
task before (its function and imports are new there too), and jobs after it (warm).
"""

from __future__ import annotations

import pytest
from harness import ServerProcess

from panda_lab.store import Store
from panda_lab.store.rows.links import site_statistics

SITES = """
[sites.ONE]
kind = "local"
pilots = 1
slots = 1
"""


def slow_first(i: int, tag: str) -> int:
    """1 s the first time this worker process runs a job of this tag, 0.05 s after."""
    import os
    import time

    from panda_lab.reads import processed

    key = f"PANDA_TEST_WARM_{tag}"
    time.sleep(0.05 if key in os.environ else 1.0)
    os.environ[key] = "1"
    processed(1_000)
    return i


@pytest.mark.slow
def test_a_sites_speed_is_its_warm_jobs(tmp_path):
    (tmp_path / "sites.toml").write_text(SITES)
    home = tmp_path / "home"
    home.mkdir()
    server = ServerProcess(home, extra=["--sites", str(tmp_path / "sites.toml")]).start()
    try:
        lab = server.lab()
        for tag in ("a", "b"):  # the second task: a new task's first job in an old worker
            t = lab.submit(slow_first, [(i, tag) for i in range(5)], name=f"cold-{tag}")
            assert lab.wait(t, timeout=60)["state"] == "done"
            store = Store(f"sqlite:///{home / 'panda-lab.sqlite'}", home / "results")
            try:
                with store.tx() as conn:
                    rate, _, mean = site_statistics(conn)["ONE"]
            finally:
                store.close()
            # warm jobs take 0.05 s for 1,000 events: 20,000 events/s.  Had the cold
            # 1 s job counted, the smoothed mean would still be above 0.6 s.
            assert mean < 0.3 and rate > 10_000, (tag, rate, mean)
    finally:
        server.stop()
