"""Dask graphs computed through panda-lab give the answers of Dask's own scheduler."""

from __future__ import annotations

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pytest


def inc(x):
    return x + 1


def add(x, y):
    return x + y


def graphs():
    delayed = dask.delayed(sum)([dask.delayed(add)(dask.delayed(inc)(i), i) for i in range(40)])
    bag = db.from_sequence(range(1000), npartitions=20).map(inc).filter(lambda x: x % 3 == 0)
    bag_sum = bag.sum()
    bag_freq = db.from_sequence(["mu", "e", "mu", "tau", "e", "mu"] * 20, npartitions=6)\
        .frequencies()
    rng = da.random.default_rng(42)
    arr = rng.normal(size=(400, 300), chunks=(100, 100))
    arr_stats = (arr.mean(axis=0), (arr @ arr.T).trace(), arr.std())
    return {"delayed": delayed, "bag_sum": bag_sum, "bag_freq": bag_freq, "array": arr_stats}


def _same(a, b):
    if isinstance(a, tuple | list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif isinstance(a, np.ndarray):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    else:
        assert a == b or np.isclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("how", ["executor", "lab.get", "config"])
def test_dask_graphs_match_dask_scheduler(mlab, how):
    gs = graphs()
    expected = dask.compute(*gs.values(), scheduler="sync")
    if how == "executor":
        with mlab.executor(name=f"dask-{how}") as ex:
            got = dask.compute(*gs.values(), scheduler=ex)
            task = ex.task_id
    elif how == "lab.get":
        got = dask.compute(*gs.values(), scheduler=mlab.get, name="dask-get")
        task = mlab.task("dask-get").id
    else:
        with mlab.executor(name=f"dask-{how}") as ex, dask.config.set(scheduler=ex):
            got = dask.compute(*gs.values())
            task = ex.task_id
    for e, g in zip(expected, got, strict=True):
        if isinstance(e, list):  # bag.frequencies: order is not part of the answer
            assert sorted(e) == sorted(g)
        else:
            _same(e, g)
    info = mlab.task(task).wait(timeout=60).info()
    assert info["state"] == "done" and info["n_jobs"] > 0


def test_lab_get_packs_tasks_into_fewer_jobs(mlab):
    graph = dask.delayed(sum)([dask.delayed(inc)(i) for i in range(400)])
    with mlab.executor(name="dask-one-per-task") as ex:
        assert dask.compute(graph, scheduler=ex) == (sum(range(1, 401)),)
    per_task = mlab.task(ex.task_id).wait(timeout=60).info()["n_jobs"]
    assert graph.compute(scheduler=mlab.get, name="dask-packed") == sum(range(1, 401))
    packed = mlab.task("dask-packed").wait(timeout=60).info()["n_jobs"]
    assert per_task >= 400
    assert packed * 4 <= per_task
