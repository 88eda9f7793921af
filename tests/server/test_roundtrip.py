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
