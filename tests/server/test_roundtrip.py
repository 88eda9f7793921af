"""A task travels through the real server and pilots and comes back whole."""

from __future__ import annotations


def square(x: int) -> int:
    return x * x


def test_task_of_jobs_runs_on_every_local_site(lab):
    task = lab.submit(square, [(i,) for i in range(60)], name="squares")
    info = lab.wait(task, timeout=60)
    assert info["state"] == "done", info
    assert lab.results(task) == {i: i * i for i in range(60)}
    sites = {j["site"] for j in lab.jobs(task)}
    assert sites == {"LOCAL-GRID", "LOCAL-CLOUD", "LOCAL-HPC"}


def test_the_server_speaks_http_with_uvicorns_c_parser_and_loop(server):
    """The server runs on httptools and uvloop, not on h11 and asyncio's own loop: both
    are dependencies, and uvicorn falls back to the pure-Python pair, silently, when they
    are missing (a third of the server's CPU outside its store calls, per pilot request).
    Read from the running server process's mapped libraries."""
    import sys
    from pathlib import Path

    import pytest

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/PID/maps")
    maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert "/httptools/" in maps, "the server parses HTTP with h11"
    assert "/uvloop/" in maps, "the server runs asyncio's own event loop"
