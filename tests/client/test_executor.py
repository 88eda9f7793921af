"""PandaExecutor under the standard library's own expectations of an executor
(the behaviours CPython's test_concurrent_futures checks), on a real server and pilots."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time

import pytest

import panda_lab
from panda_lab.client.futures import RemoteTraceback


def mul(x, y):
    return x * y


def power(x, exponent=2):
    return x**exponent


def sleep_and_return(t, value):
    time.sleep(t)
    return value


def wait_for_file(path, value):
    """Return ``value`` once ``path`` exists (at most 60 s): a job that cannot end before
    the test lets it."""
    from pathlib import Path
    end = time.monotonic() + 60
    while not Path(path).exists():
        if time.monotonic() > end:
            raise TimeoutError(path)
        time.sleep(0.02)
    return value


def raise_on(x, bad):
    if x == bad:
        raise ZeroDivisionError(f"bad value {x}")
    return x


class CustomError(Exception):
    pass


def raise_custom(msg):
    print("about to fail")
    raise CustomError(msg)


def test_submit_returns_a_real_future(mlab):
    with mlab.executor(name="t-submit") as ex:
        fut = ex.submit(mul, 6, 7)
        assert isinstance(fut, cf.Future)
        assert fut.result(timeout=30) == 42
        assert ex.submit(power, 3, exponent=3).result(timeout=30) == 27


def test_map_keeps_order_and_packs_chunks(mlab):
    with mlab.executor(name="t-map") as ex:
        assert list(ex.map(mul, range(50), range(50))) == [i * i for i in range(50)]
        res = list(ex.map(power, range(200), chunksize=40))
        assert res == [i * i for i in range(200)]
        task = ex.task_id
    # 50 single-call jobs + 5 chunk jobs of 40 calls each
    assert mlab.task(task).info()["n_jobs"] == 55


def test_map_is_lazy_in_results(mlab, tmp_path):
    # the second call cannot end until the first result has been read: a map that waited
    # for all its results before yielding the first would never yield (no timing involved)
    gate = tmp_path / "gate"
    with mlab.executor(name="t-lazy") as ex:
        it = ex.map(wait_for_file, [tmp_path / "open", gate], ["fast", "slow"])
        (tmp_path / "open").touch()  # the first may end at once
        assert next(it) == "fast"
        gate.touch()
        assert next(it) == "slow"


def test_map_timeout(mlab):
    with mlab.executor(name="t-timeout") as ex:
        it = ex.map(sleep_and_return, [0.0, 5.0], [1, 2], timeout=1.0)
        with pytest.raises(cf.TimeoutError):
            list(it)


def test_map_exception_is_raised_at_its_position(mlab):
    with mlab.executor(name="t-map-exc") as ex:
        it = ex.map(raise_on, range(5), [3] * 5)
        assert [next(it), next(it), next(it)] == [0, 1, 2]
        with pytest.raises(ZeroDivisionError, match="bad value 3"):
            next(it)


def test_remote_exception_keeps_type_and_traceback(mlab):
    with mlab.executor(name="t-exc") as ex:
        fut = ex.submit(raise_custom, "physics is hard")
        exc = fut.exception(timeout=30)
    assert type(exc).__name__ == "CustomError" and str(exc) == "physics is hard"
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert "raise_custom" in exc.__cause__.tb
    # a user error is never retried
    jobs = mlab.task("t-exc").jobs(all_attempts=True)
    assert list(jobs["attempt"]) == [1] and list(jobs["error_category"]) == ["user"]


def test_wait_and_as_completed(mlab):
    with mlab.executor(name="t-wait") as ex:
        futs = [ex.submit(sleep_and_return, 0.3 * (i % 3), i) for i in range(9)]
        done, not_done = cf.wait(futs, timeout=60)
        assert len(done) == 9 and not not_done
        fast = ex.submit(sleep_and_return, 0.0, "fast")
        slow = ex.submit(sleep_and_return, 2.0, "slow")
        order = [f.result() for f in cf.as_completed([slow, fast], timeout=60)]
        assert order == ["fast", "slow"]
        first = cf.wait([slow, ex.submit(mul, 1, 1)], return_when=cf.FIRST_COMPLETED)
        assert len(first.done) >= 1


def test_shutdown_waits_by_default(mlab):
    ex = mlab.executor(name="t-shutdown")
    futs = [ex.submit(sleep_and_return, 0.2, i) for i in range(6)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futs)
    assert [f.result() for f in futs] == list(range(6))
    assert mlab.task(ex.task_id).wait(timeout=30).status == "done"


def test_shutdown_without_wait_returns_at_once(mlab):
    ex = mlab.executor(name="t-nowait")
    futs = [ex.submit(sleep_and_return, 1.0, i) for i in range(3)]
    t = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - t < 0.5
    assert [f.result(timeout=60) for f in futs] == [0, 1, 2]


def test_shutdown_waits_for_a_batch_still_being_posted(mlab):
    """A batch on its way to the server is in neither the outbox nor the known futures;
    shutdown must still wait for it, not close the event stream under it."""
    ex = mlab.executor(name="t-inflight")
    post = ex._api.post
    posting = threading.Event()

    def slow_post(path, *args, **kwargs):
        if path.endswith("/jobs"):
            posting.set()
            time.sleep(0.5)
        return post(path, *args, **kwargs)

    ex._api.post = slow_post
    fut = ex.submit(sleep_and_return, 0.5, 7)     # one batch, taken off the outbox at once
    assert posting.wait(10)
    ex.shutdown(wait=True)
    assert fut.done()
    assert fut.result() == 7


def test_use_after_shutdown_raises_runtime_error(mlab):
    ex = mlab.executor(name="t-after")
    ex.submit(mul, 1, 2).result(timeout=30)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(mul, 1, 2)
    with pytest.raises(RuntimeError):
        list(ex.map(mul, [1], [2]))


def test_shutdown_cancel_futures_kills_waiting_jobs(mlab):
    ex = mlab.executor(name="t-cancel-all")
    blockers = [ex.submit(sleep_and_return, 2.0, i) for i in range(3)]
    waiting = [ex.submit(sleep_and_return, 2.0, i) for i in range(20)]
    # wait until the three pilots hold the first jobs
    deadline = time.monotonic() + 30
    while not any(f.running() for f in blockers) and time.monotonic() < deadline:
        time.sleep(0.05)
    ex.shutdown(wait=True, cancel_futures=True)
    cancelled = [f for f in waiting if f.cancelled()]
    assert len(cancelled) >= 10
    jobs = mlab.task(ex.task_id).jobs()
    ids = {f.job_id for f in cancelled if f.job_id is not None}
    assert set(jobs.loc[sorted(ids), "state"]) == {"cancelled"}


def test_cancel_of_a_waiting_future_kills_its_job(mlab):
    with mlab.executor(name="t-cancel", site="LOCAL-HPC") as ex:
        first = ex.submit(sleep_and_return, 1.5, "first")
        second = ex.submit(sleep_and_return, 1.5, "second")
        deadline = time.monotonic() + 30
        while second.job_id is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert second.cancel() is True
        assert first.result(timeout=30) == "first"
    job = mlab.api.get(f"/api/jobs/{second.job_id}")
    assert job["state"] == "cancelled" and job["error_category"] == "killed"


def test_unpicklable_call_fails_at_once(mlab):
    lock = threading.Lock()
    with mlab.executor(name="t-unpicklable") as ex, pytest.raises(panda_lab.PayloadError):
        ex.submit(mul, lock, 2)


def test_options_reach_the_jobs(mlab):
    with mlab.executor(name="t-options", site="LOCAL-GRID", retries=4, priority=7,
                       walltime=30) as ex:
        assert ex.submit(mul, 2, 3).result(timeout=30) == 6
        task = ex.task_id
    job = mlab.task(task).jobs().iloc[0]
    assert job["site"] == "LOCAL-GRID"
    full = mlab.api.get(f"/api/jobs/{int(mlab.task(task).jobs().index[0])}")
    assert (full["max_attempts"], full["priority"], full["walltime_s"]) == (5, 7, 30.0)


def test_environment_mismatch_warns(mlab, module_server):
    """A pilot whose reported versions differ from the client's triggers one clear warning."""
    import socket

    from panda_lab.http import ApiClient

    pilot_api = ApiClient(module_server.info["url"], module_server.info["pilot_token"])
    env = panda_lab.payload.environment() | {"numpy": "0.0.1"}
    pilot_api.post("/api/pilot/register", {"site": "LOCAL-CLOUD", "host": socket.gethostname(),
                                           "pid": 1, "info": {"environment": env}})
    ex = mlab.executor(name="t-env", site="LOCAL-CLOUD")
    with pytest.warns(panda_lab.EnvironmentMismatch, match="numpy"):
        assert ex.submit(mul, 2, 2).result(timeout=30) == 4
        ex.shutdown()
    assert any("0.0.1" in w for w in ex.environment_warnings)


def test_the_clients_environment_is_read_once_and_each_caller_gets_its_own(monkeypatch):
    """The versions are read from the installed packages' metadata once per process (it
    took 1-2 ms on every submission); a caller changing the dict it got changes no
    other caller's."""
    import importlib.metadata

    panda_lab.payload._environment.cache_clear()
    calls = []
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: calls.append(name) or real(name))
    first = panda_lab.payload.environment()
    first["numpy"] = "0.0.1"
    second = panda_lab.payload.environment()
    assert second["numpy"] == real("numpy") and second["python"] == first["python"]
    assert sorted(calls) == sorted(panda_lab.payload.KEY_PACKAGES)  # read once, not twice
    panda_lab.payload._environment.cache_clear()


def test_an_unknown_site_is_refused_at_once_and_leaves_no_task(mlab):
    """It used to be said only at the first ``result()``, with an empty task left open."""
    before = len(mlab.list_tasks())
    with pytest.raises(ValueError, match=r"unknown site 'NOPE-SITE'; known sites: LOCAL-"):
        mlab.executor(site="NOPE-SITE", name="badsite")
    with pytest.raises(ValueError, match="unknown site 'NOPE'"):
        mlab.executor(site=["LOCAL-GRID", "NOPE"])
    assert len(mlab.list_tasks()) == before
    with mlab.executor(site=["LOCAL-GRID"]) as ex:  # a known one, as a list
        assert ex.submit(abs, -2).result(timeout=60) == 2

