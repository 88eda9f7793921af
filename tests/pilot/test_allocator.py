"""A payload worker keeps a chunk's freed memory for the next chunk.

The kind of cost removed here: memory the C library hands back to the kernel when a
job's arrays are freed, and that the next arrays fault in again, page by page (system
time: a tenth of the workers' CPU on the analysis benchmark).  Its members, each tested
in a real process: many arrays of a chunk freed together (its baskets, 1 MiB each; 2 MiB
each), the heap's top then trimmed; a few large ones (its columns, 24 MiB each), mapped
above the threshold glibc raised or trimmed.  Arrays of 32 MiB or more stay mapped and
unmapped each time: glibc takes no higher threshold.  And its configuration: the user's
own glibc settings win, ``PANDA_LAB_MALLOC=system`` leaves the library alone, and any
other value is refused by name, by the pilot and the server, before a job runs.  The
benchmark's (d_malloc) row measures what it is worth: benchmarks/README.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import cloudpickle
import pytest

from panda_lab.pilot import allocator
from panda_lab.pilot.worker import Worker


def _is_glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError, AttributeError):
        return False


needs_glibc = pytest.mark.skipif(not _is_glibc(), reason="mallopt is glibc's")

#: A chunk's arrays, allocated and freed together, each pattern run five times; the test
#: reads the page faults of the last four (the first grows the heap).  glibc's own rule
#: (a threshold raised to the size of a freed block) serves one array freed and made
#: again after two rounds; these it never serves.
PATTERNS = {
    # 20 arrays of 2 MiB: the heap's top trimmed after each round
    "twenty_of_2_mib": "[np.ones(2 << 18) for _ in range(20)]",
    # 60 arrays of 1 MiB, a chunk's baskets
    "sixty_of_1_mib": "[np.ones(1 << 17) for _ in range(60)]",
    # 3 arrays of 24 MiB, a chunk's columns: above the threshold the rule raised, or
    # trimmed when they came from the heap
    "three_of_24_mib": "[np.ones(3 << 20) for _ in range(3)]",
}


def faults_after_first(pattern: str) -> list[int]:
    """Minor page faults of rounds 2-5 of ``pattern``, in this process."""
    import resource

    import numpy as np

    out = []
    for _ in range(5):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = eval(pattern, {"np": np})  # the module's own constants
        del blocks
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return out[1:]


def _in_fresh_python(pattern: str, env: dict[str, str], tune: bool) -> list[int]:
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from panda_lab.pilot import allocator
        from test_allocator import faults_after_first
        set_ = allocator.keep_freed_memory() if {tune!r} else None
        print(json.dumps([set_, faults_after_first({pattern!r})]))
    """)
    full = {k: v for k, v in os.environ.items()
            if k not in allocator.GLIBC_SETTINGS and k != allocator.MALLOC_ENV}
    out = subprocess.run([sys.executable, "-c", code], env={**full, **env}, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    import json

    return json.loads(out.splitlines()[-1])


@needs_glibc
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_freed_arrays_are_reused_without_page_faults(name):
    pattern = PATTERNS[name]
    kept_set, kept = _in_fresh_python(pattern, {}, tune=True)
    plain_set, plain = _in_fresh_python(pattern, {}, tune=False)
    assert kept_set is True and plain_set is None
    # without: every round faults its megabytes in again (a fault per page, or per 64 KiB
    # where the kernel maps larger pages); with: the freed memory serves the next round
    assert min(plain) > 500, plain
    assert max(kept) < 100, kept


@needs_glibc
@pytest.mark.parametrize("env", [
    {"PANDA_LAB_MALLOC": "system"},
    {"MALLOC_TRIM_THRESHOLD_": "65536"},      # Dask's own setting, for example
    {"MALLOC_MMAP_THRESHOLD_": "131072"},
    {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=65536"},
])
def test_the_users_own_choice_stands(env):
    was_set, faults = _in_fresh_python(PATTERNS["twenty_of_2_mib"], env, tune=True)
    assert was_set is False
    assert min(faults) > 500, faults  # the library's behaviour, as the user asked


@pytest.mark.parametrize("value,expected", [
    (None, "keep"), ("", "keep"), ("keep", "keep"), (" Keep ", "keep"), ("system", "system"),
])
def test_the_setting_reads_its_values(value, expected):
    env = {} if value is None else {allocator.MALLOC_ENV: value}
    assert allocator.check(env) == expected


@pytest.mark.parametrize("value", ["off", "yes", "1", "keep system"])
def test_a_bad_setting_is_refused_by_name(value):
    with pytest.raises(ValueError, match="PANDA_LAB_MALLOC") as exc:
        allocator.check({allocator.MALLOC_ENV: value})
    assert "'keep'" in str(exc.value) and "'system'" in str(exc.value)
    # and a worker given it anyway changes nothing rather than fail a job
    assert allocator.keep_freed_memory({allocator.MALLOC_ENV: value}) is False


def test_the_pilot_and_the_server_refuse_a_bad_setting_before_any_job(tmp_path):
    env = {**os.environ, allocator.MALLOC_ENV: "sometimes"}
    pilot = subprocess.run(
        [sys.executable, "-m", "panda_lab.cli.main", "pilot", "--server",
         "http://127.0.0.1:9", "--site", "X", "--token", "t"],
        env=env, capture_output=True, text=True, timeout=60)
    assert pilot.returncode == 2, pilot.stderr
    assert "PANDA_LAB_MALLOC='sometimes'" in pilot.stderr
    server = subprocess.run(
        [sys.executable, "-m", "panda_lab.cli.main", "--home", str(tmp_path), "server",
         "start"], env=env, capture_output=True, text=True, timeout=60)
    assert server.returncode != 0
    assert "PANDA_LAB_MALLOC='sometimes'" in server.stdout + server.stderr


def _run(worker: Worker, fn, *args):
    payload = cloudpickle.dumps((cloudpickle.dumps(fn), args, {}))
    worker.run({"id": 1, "task": 1, "payload": payload}, None, time.time())
    while True:
        _, outcome = worker.receive()
        if outcome is None or hasattr(outcome, "ok"):
            return outcome


@needs_glibc
@pytest.mark.parametrize("setting", ["keep", "system"])
def test_the_pilots_payload_worker_applies_it(setting, monkeypatch):
    """Through the pilot's own worker process: its jobs' freed arrays serve the next."""
    monkeypatch.setenv(allocator.MALLOC_ENV, setting)
    for name in allocator.GLIBC_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    w = Worker()
    try:
        out = _run(w, faults_after_first, PATTERNS["twenty_of_2_mib"])
    finally:
        w.close()
    assert out.ok, out.error
    faults = cloudpickle.loads(out.result)
    if setting == "keep":
        assert max(faults) < 100, faults
    else:
        assert min(faults) > 500, faults
