"""The result store's disk full, in a real server process.

Kind (a result lost while its job is counted finished): the server cannot write what a
pilot sends because the file system of its result directory is full.  Members: a large
result uploaded before its report (``PUT /api/pilot/results``), a large result inside a
report (written in the report's transaction), an attempt's full output.  None may leave
a job finished without its result, nor a half-written file taking space; the job fails
with an error that says the disk is full, the server serves on, and once space is freed
a retry gives the exact result.

The result directory is a 2 MB tmpfs the test mounts (root only: CI runs as root; a
developer's machine skips with the reason).
"""

from __future__ import annotations

import os
import subprocess

import pytest
from harness import ServerProcess

from panda_lab.model.states import JobState, TaskState

SITE = """
[sites.ONE]
provisioner = "local"
pilots = 1
slots = 2
"""

#: Each job's result: over the inline limit (64 KiB), so it goes to the result store.
SIZE = 300_000


@pytest.fixture
def small_results(home):
    """``home/results`` on a 2 MB tmpfs, most of it taken by a filler file: room for two
    results.  Yields the filler's path; unmounted afterwards."""
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    results = home / "results"
    results.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(results)],
                   check=True, capture_output=True, timeout=30)
    try:
        filler = results / "filler"
        filler.write_bytes(b"\0" * 1_300_000)
        yield filler
    finally:
        subprocess.run(["umount", "-l", str(results)], check=False, timeout=30)


def big(i):
    """A result of ``SIZE`` bytes that tells its job apart."""
    return bytes([i]) * 300_000


def used(results) -> int:
    """Bytes in use on the result directory's file system."""
    st = os.statvfs(results)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@pytest.mark.slow
def test_results_that_do_not_fit_fail_their_jobs_and_a_retry_after_freeing_gets_them(
        home, small_results):
    (home / "sites.toml").write_text(SITE)
    server = ServerProcess(home, extra=["--sites", str(home / "sites.toml")]).start()
    try:
        lab = server.lab()
        n = 6
        task = lab.submit(big, [(i,) for i in range(n)], name="disk-full", retries=0)
        info = lab.wait(task, timeout=60)
        # room for two results: those jobs finished (the task partly) with their
        # results; the others failed saying why, none finished without its result
        kept = lab.results(task)
        assert info["state"] == TaskState.FINISHED and info["n_done"] == len(kept) == 2
        assert all(kept[i] == big(i) for i in kept)
        failed = [a for a in lab.jobs(task) if a["state"] == JobState.FAILED]
        assert sorted(a["job_index"] for a in failed) == sorted(set(range(n)) - set(kept))
        for a in failed:
            assert a["error_category"] == "system"
            assert "result store is full (No space left on device)" in a["error_message"]
        # nothing half-written takes space; the pilot lived through it
        results = small_results.parent
        assert not list(results.rglob("*.tmp"))
        assert used(results) < small_results.stat().st_size + 3 * SIZE
        assert "error serving" not in server.log_tail(10**6)  # a 507, never a 500
        assert len(server.pilot_pids()) == 1
        # space freed: a retry gives every result, each counted once
        small_results.unlink()
        lab.retry(task)
        info = lab.wait(task, timeout=60)
        assert info["state"] == TaskState.DONE and info["n_done"] == n
        assert lab.results(task) == {i: big(i) for i in range(n)}
        finished = [a["job_index"] for a in lab.jobs(task, all_attempts=True)
                    if a["state"] == JobState.FINISHED]
        assert sorted(finished) == list(range(n))
        lab.close()
    finally:
        server.stop()


def test_a_large_result_inside_a_report_that_does_not_fit_fails_only_its_job(
        tmp_path, small_results):
    """The report's other updates are applied: the disk full fails one job, not the
    report (a refused report would lose every result in it)."""
    from panda_lab.store import ResultStoreFull, Store

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}", small_results.parent)
    try:
        store.upsert_sites([{"name": "A", "kind": "local", "provisioner": "local",
                             "pilots": 1, "slots": 4}])
        task, ids, _ = store.create_task("inline", [{"payload": b"x"}] * 3,
                                         options={"max_attempts": 1})
        pilot = store.register_pilot("A", "host", 1, 4, {})
        store.acquire(pilot, "A", 3)
        too_big = b"b" * 1_000_000  # more than the room left
        _, ignored = store.apply_updates(pilot, [
            {"id": ids[0], "attempt": 1, "state": "finished", "result": b"small"},
            {"id": ids[1], "attempt": 1, "state": "finished", "result": too_big},
            {"id": ids[2], "attempt": 1, "state": "finished", "result": b"s" * 100_000}])
        assert ignored == []
        jobs = {j["id"]: j for j in store.list_jobs(task)}
        assert [jobs[i]["state"] for i in ids] == ["finished", "failed", "finished"]
        assert "result store is full" in jobs[ids[1]]["error_message"]
        assert {r["index"]: r["data"] for r in store.results(task)} == {
            0: b"small", 2: b"s" * 100_000}
        # an attempt's full output that does not fit: refused (a 507 to the pilot, which
        # reports the job all the same), nothing of it left
        with pytest.raises(ResultStoreFull, match="No space left on device"):
            store.write_output(task, ids[1], "stdout", b"o" * 1_000_000)
        assert not list(small_results.parent.rglob("*.tmp"))
        assert not list(small_results.parent.rglob("*.stdout"))
    finally:
        store.close()
