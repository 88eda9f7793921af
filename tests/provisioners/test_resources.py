"""The container's CPUs and memory, read from cgroup trees, and the embedded default sized to them.

Kind tested: a limit the process lives under that the default does not see (the host's
CPUs and memory taken for the container's, so a Binder demo is OOM-killed).  Members: v2
``cpu.max``/``memory.max``/``memory.high``, v1 CFS quota and ``memory.limit_in_bytes``,
"no limit" in each spelling (``max``, ``-1``, v1's huge page-rounded number), a limit
set on an ancestor of the process's cgroup (nested), a cgroup path not visible under the
mount (a container's own namespace), and garbage in any of the files (skipped with a
note, never a crash).  The overrides are checked the same way, bad values named.
The trees are real files in temporary directories read through ``PANDA_LAB_SYSROOT`` or
the ``root`` argument.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from panda_lab import resources
from panda_lab.provisioners.config import ConfigError, default_sites
from panda_lab.resources import ResourceError, Resources, detect, parse_size, plan_local

GB = 2**30
HOST_MEM_KB = 16 * 2**20  # a 16 GiB host


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def host(root: Path, cpus: int = 8) -> Path:
    write(root, "proc/meminfo", f"MemTotal:       {HOST_MEM_KB} kB\nMemFree: 1 kB\n")
    write(root, "sys/devices/system/cpu/online", f"0-{cpus - 1}\n")
    return root


def v2(root: Path, cgroup: str = "/", **files: str) -> Path:
    """A cgroup v2 tree; ``files`` keyed ``"path/relative/to/mount:file"``."""
    host(root)
    write(root, "proc/self/cgroup", f"0::{cgroup}\n")
    write(root, "sys/fs/cgroup/cgroup.controllers", "cpu memory io\n")
    for key, text in files.items():
        where, _, name = key.rpartition(":")
        write(root, f"sys/fs/cgroup/{where}/{name}".replace("//", "/"), text)
    return root


def v1(root: Path, cgroup: str = "/", cpu_dir: str = "cpu,cpuacct", **files: str) -> Path:
    host(root)
    write(root, "proc/self/cgroup",
          f"12:memory:{cgroup}\n4:cpu,cpuacct:{cgroup}\n1:name=systemd:/init.scope\n")
    (root / "sys/fs/cgroup/memory").mkdir(parents=True, exist_ok=True)
    (root / f"sys/fs/cgroup/{cpu_dir}").mkdir(parents=True, exist_ok=True)
    for key, text in files.items():
        where, _, name = key.rpartition(":")
        write(root, f"sys/fs/cgroup/{where}/{name}".replace("//", "/"), text)
    return root


def test_v2_quota_and_memory(tmp_path):
    r = detect(v2(tmp_path, "/", **{":cpu.max": "150000 100000\n",
                                    ":memory.max": f"{int(1.5 * GB)}\n"}), environ={})
    assert r.cpus == 1.5 and r.cores == 2
    assert r.memory == int(1.5 * GB)
    assert r.host_cpus == 8 and r.host_memory == HOST_MEM_KB * 1024
    assert r.source.startswith("cgroup v2") and "cpu.max" in r.source and not r.notes


def test_v2_max_means_the_host(tmp_path):
    r = detect(v2(tmp_path, "/", **{":cpu.max": "max 100000\n", ":memory.max": "max\n"}),
               environ={})
    assert (r.cpus, r.memory, r.source) == (8, HOST_MEM_KB * 1024, "host")


def test_v2_nested_cgroup_smallest_limit_wins(tmp_path):
    """The parent slice limits memory, the process's own cgroup the CPUs; memory.high of
    the leaf is lower still than the parent's memory.max."""
    root = v2(tmp_path, "/user.slice/lab.scope", **{
        ":cpu.max": "max 100000",
        "user.slice:memory.max": str(3 * GB),
        "user.slice:cpu.max": "400000 100000",
        "user.slice/lab.scope:cpu.max": "100000 50000",
        "user.slice/lab.scope:memory.max": "max",
        "user.slice/lab.scope:memory.high": str(2 * GB),
    })
    r = detect(root, environ={})
    assert r.cpus == 2.0 and r.memory == 2 * GB


def test_v2_cgroup_not_visible_reads_the_mount(tmp_path):
    """In a container's own cgroup namespace /proc/self/cgroup may name a path that is
    not under the mount: the mount's files are the container's."""
    root = v2(tmp_path, "/kubepods/pod1/abc", **{":cpu.max": "200000 100000",
                                                 ":memory.max": str(GB)})
    r = detect(root, environ={})
    assert (r.cpus, r.memory) == (2.0, GB)


def test_v1_quota_and_limit(tmp_path):
    root = v1(tmp_path, "/docker/abc", **{
        "cpu,cpuacct/docker/abc:cpu.cfs_quota_us": "200000",
        "cpu,cpuacct/docker/abc:cpu.cfs_period_us": "100000",
        "memory/docker/abc:memory.limit_in_bytes": str(int(1.5 * GB)),
    })
    r = detect(root, environ={})
    assert (r.cpus, r.memory) == (2.0, int(1.5 * GB))
    assert r.source.startswith("cgroup v1")


def test_v1_unlimited_spellings_mean_the_host(tmp_path):
    """Quota -1, and the huge page-rounded number a v1 kernel shows for no limit."""
    root = v1(tmp_path, "/", cpu_dir="cpu", **{
        "cpu:cpu.cfs_quota_us": "-1", "cpu:cpu.cfs_period_us": "100000",
        "memory:memory.limit_in_bytes": "9223372036854771712",
    })
    r = detect(root, environ={})
    assert (r.cpus, r.memory, r.source) == (8, HOST_MEM_KB * 1024, "host")


def test_v1_nested_parent_limit(tmp_path):
    root = v1(tmp_path, "/a/b", **{
        "memory/a:memory.limit_in_bytes": str(GB),
        "memory/a/b:memory.limit_in_bytes": "9223372036854771712",
        "cpu,cpuacct/a:cpu.cfs_quota_us": "50000",
        "cpu,cpuacct/a:cpu.cfs_period_us": "100000",
        "cpu,cpuacct/a/b:cpu.cfs_quota_us": "-1",
        "cpu,cpuacct/a/b:cpu.cfs_period_us": "100000",
    })
    r = detect(root, environ={})
    assert (r.cpus, r.memory, r.cores) == (0.5, GB, 1)


@pytest.mark.parametrize("tree", ["v2", "v1"])
def test_garbage_is_skipped_with_a_note(tmp_path, tree):
    if tree == "v2":
        root = v2(tmp_path, "/x", **{":cpu.max": "lots 100000", "x:cpu.max": "",
                                     ":memory.max": "1.5 gigabytes",
                                     "x:memory.max": str(GB)})
        expected_mem = GB
    else:
        root = v1(tmp_path, "/", **{"cpu,cpuacct:cpu.cfs_quota_us": "\x00\x01",
                                    "cpu,cpuacct:cpu.cfs_period_us": "100000",
                                    "memory:memory.limit_in_bytes": "-"})
        expected_mem = HOST_MEM_KB * 1024
    r = detect(root, environ={})
    assert r.cpus == 8 and r.memory == expected_mem
    assert r.notes and all("ignored" in n for n in r.notes)


def test_broken_proc_and_sys_fall_back_to_the_host(tmp_path):
    """No cgroup file, an unreadable /proc/self/cgroup, garbage in meminfo and the CPU
    list: the values of this machine, no exception."""
    write(tmp_path, "proc/self/cgroup", "\xff garbage without colons\n::\n")
    write(tmp_path, "proc/meminfo", "MemTotal: lots\n")
    write(tmp_path, "sys/devices/system/cpu/online", "zero-one")
    r = detect(tmp_path, environ={})
    assert r.cpus >= 1 and r.memory > 0 and r.source == "host"


def test_overrides_win_and_bad_ones_name_the_variable(tmp_path):
    root = v2(tmp_path, "/", **{":cpu.max": "100000 100000", ":memory.max": str(GB)})
    r = detect(root, environ={"PANDA_LAB_CPUS": "3", "PANDA_LAB_MEMORY": "2.5G"})
    assert (r.cpus, r.memory) == (3.0, int(2.5 * GB))
    assert "PANDA_LAB_CPUS" in r.source and "PANDA_LAB_MEMORY" in r.source
    for env, name in (({"PANDA_LAB_CPUS": "two"}, "PANDA_LAB_CPUS"),
                      ({"PANDA_LAB_CPUS": "0"}, "PANDA_LAB_CPUS"),
                      ({"PANDA_LAB_CPUS": "nan"}, "PANDA_LAB_CPUS"),
                      ({"PANDA_LAB_MEMORY": "lots"}, "PANDA_LAB_MEMORY"),
                      ({"PANDA_LAB_MEMORY": "0M"}, "PANDA_LAB_MEMORY")):
        with pytest.raises(ResourceError, match=name):
            detect(root, environ=env)


def test_parse_size():
    assert parse_size("1536M") == 1536 * 2**20 == parse_size("1.5GiB") == parse_size("1.5g")
    assert parse_size("1048576") == 2**20 and parse_size("2 GB") == 2 * GB
    for bad in ("", "1.5 gigs", "-1G", "G"):
        with pytest.raises(ValueError):
            parse_size(bad)


def res(cpus: float, mb: int) -> Resources:
    return Resources(cpus, mb * 2**20, 64, 2**40)


def _footprint(plan) -> int:
    """MB the plan's processes take at most: server with its merged results, pilots,
    workers with their chunks."""
    workers = plan.sites * plan.pilots * plan.slots
    return (resources.SERVER_MB + plan.merge_mb + plan.sites * plan.pilots * resources.PILOT_MB
            + workers * (resources.WORKER_MB + plan.chunk_mb + plan.cache_mb))


@pytest.mark.parametrize("cpus,mb", [(1, 1024), (2, 1536), (2, 2048), (0.5, 2048), (4, 4096),
                                     (8, 8192), (16, 65536)])
def test_plan_stays_under_the_limit_with_room_for_the_kernel(cpus, mb):
    plan = plan_local(res(cpus, mb))
    reserve = max(resources.RESERVE_MB, int(resources.RESERVE_SHARE * mb))
    assert _footprint(plan) <= mb - reserve
    assert plan.sites in (1, 3) and plan.slots >= 1 and plan.pilots == 1
    assert plan.sites * plan.slots <= max(plan.sites, res(cpus, mb).cores)
    assert plan.max_events_per_job == plan.chunk_mb * resources.EVENTS_PER_MB


def test_plan_shapes():
    assert (plan_local(res(2, 1536)).sites, plan_local(res(2, 1536)).slots) == (3, 1)
    small = plan_local(res(2, 1024))
    assert (small.sites, small.slots) == (1, 1)
    big = plan_local(res(8, 16384))
    assert (big.sites, big.slots) == (3, 2)
    assert big.cache_mb == resources.CACHE_MAX_MB
    binder = plan_local(res(2, 2048))  # the read cache fits in Binder's 2 GB with the rest
    assert 0 < binder.cache_mb < resources.CACHE_MAX_MB
    # three pilots taking turns on two cores hold, together, what two workers' caches would
    laptop = plan_local(res(2, 24 * 1024))
    assert (laptop.sites, laptop.slots, laptop.shared_cores) == (3, 1, 2)
    assert laptop.cache_mb == resources.CACHE_MAX_MB * 2 // 3
    assert f"{laptop.cache_mb} MB of read cache per worker" in laptop.note
    assert plan_local(res(6, 24 * 1024)).cache_mb == resources.CACHE_MAX_MB  # not shared
    tiny = plan_local(res(1, 600))
    assert (tiny.sites, tiny.slots) == (1, 1) and "expect memory errors" in tiny.note
    assert "PANDA_LAB_MEMORY" in tiny.note


@pytest.mark.parametrize("mb,merge_mb", [(600, 18), (1024, 32), (2048, 64), (8192, 256),
                                         (65536, 512), (256, 16)])
def test_the_merged_results_get_a_share_of_the_memory_within_bounds(mb, merge_mb):
    plan = plan_local(res(2, mb))
    assert plan.merge_mb == merge_mb == resources.merge_share_mb(res(2, mb))
    assert f"{merge_mb} MB for the server's merged results" in plan.note
    assert resources.merge_memory(res(2, mb), environ={}) == (
        merge_mb * 2**20, f"3.1% of {res(2, mb).describe()}")


def test_a_read_cache_the_user_set_is_the_one_the_plan_states(monkeypatch):
    """The log line (and ``teach check``) state the read cache the workers will use: the
    user's ``PANDA_LAB_READ_CACHE`` when set, said so; the plan's when unset or empty; a
    value that is no size stops the embedded server, naming the variable."""
    from panda_lab.provisioners.config import local_plan

    plan = plan_local(res(2, 24 * 1024))
    planned = f"{plan.cache_mb} MB of read cache per worker,"
    assert planned in resources.plan_note(plan, {})
    assert planned in resources.plan_note(plan, {"PANDA_LAB_READ_CACHE": " "})
    assert ("1024 MB of read cache per worker (set by PANDA_LAB_READ_CACHE)"
            in resources.plan_note(plan, {"PANDA_LAB_READ_CACHE": "1 GiB"}))
    assert ("0 MB of read cache per worker (set by PANDA_LAB_READ_CACHE)"
            in resources.plan_note(plan, {"PANDA_LAB_READ_CACHE": "0"}))
    with pytest.raises(resources.ResourceError, match="PANDA_LAB_READ_CACHE='abc'"):
        resources.plan_note(plan, {"PANDA_LAB_READ_CACHE": "abc"})
    monkeypatch.setenv("PANDA_LAB_READ_CACHE", "abc")
    with pytest.raises(ConfigError, match="PANDA_LAB_READ_CACHE='abc'"):
        local_plan(res(2, 24 * 1024))
    monkeypatch.setenv("PANDA_LAB_READ_CACHE", "")  # empty: the plan's, passed to the pilots
    local_plan(res(2, 24 * 1024))
    assert os.environ["PANDA_LAB_READ_CACHE"] == f"{plan.cache_mb} MB"


def test_the_merge_budget_override_wins_and_a_bad_one_is_named(tmp_path, monkeypatch):
    from panda_lab.cli.main import build_parser
    from panda_lab.cli.server_cmd import config_from_args
    from panda_lab.server.config import ServerConfig

    plan = plan_local(res(2, 2048))
    assert resources.plan_note(plan, {}) == plan.note
    assert "3 MB for the server's merged results (set by PANDA_LAB_MERGE_MEMORY), for 2 " \
        in resources.plan_note(plan, {"PANDA_LAB_MERGE_MEMORY": "3M"})
    env = {"PANDA_LAB_MERGE_MEMORY": "3M", "PANDA_LAB_MEMORY": "2G"}
    assert resources.merge_memory(environ=env) == (3 * 2**20,
                                                   "set by PANDA_LAB_MERGE_MEMORY")
    assert resources.merge_memory(environ={"PANDA_LAB_MEMORY": "2G"})[0] == 64 * 2**20
    with pytest.raises(ResourceError, match="PANDA_LAB_MERGE_MEMORY: 'lots'"):
        resources.merge_memory(environ={"PANDA_LAB_MERGE_MEMORY": "lots"})
    monkeypatch.delenv("PANDA_LAB_CPUS", raising=False)
    monkeypatch.setenv("PANDA_LAB_MEMORY", "2G")
    monkeypatch.delenv("PANDA_LAB_MERGE_MEMORY", raising=False)
    home = ["--home", str(tmp_path / "home"), "server", "run"]
    # the embedded plan's share, the variable, then the option: each wins over the last
    assert config_from_args(build_parser().parse_args(home)).merge_memory == 64 * 2**20
    assert ServerConfig(home=tmp_path).merge_memory == 64 * 2**20
    monkeypatch.setenv("PANDA_LAB_MERGE_MEMORY", "5M")
    assert config_from_args(build_parser().parse_args(home)).merge_memory == 5 * 2**20
    assert ServerConfig(home=tmp_path).merge_memory == 5 * 2**20
    args = build_parser().parse_args([*home, "--merge-memory", "1.5G"])
    assert config_from_args(args).merge_memory == int(1.5 * GB)
    with pytest.raises(ConfigError, match="--merge-memory: 'x' is not a size"):
        config_from_args(build_parser().parse_args([*home, "--merge-memory", "x"]))
    monkeypatch.setenv("PANDA_LAB_MERGE_MEMORY", "-1")
    with pytest.raises(ConfigError, match="PANDA_LAB_MERGE_MEMORY"):
        config_from_args(build_parser().parse_args(home))
    with pytest.raises(ValueError, match="PANDA_LAB_MERGE_MEMORY"):
        ServerConfig(home=tmp_path)


def test_default_sites_follow_the_plan_and_bad_overrides_are_config_errors(monkeypatch):
    names = [s.name for s in default_sites(res(2, 1536))]
    assert names == ["LOCAL-GRID", "LOCAL-CLOUD", "LOCAL-HPC"]
    one = default_sites(res(1, 1024))
    assert [(s.name, s.kind, s.pilots, s.slots) for s in one] == [("LOCAL", "local", 1, 1)]
    monkeypatch.setenv("PANDA_LAB_MEMORY", "a lot")
    with pytest.raises(ConfigError, match="PANDA_LAB_MEMORY"):
        default_sites()


def test_server_config_carries_the_job_cap(tmp_path, monkeypatch):
    from panda_lab.cli.main import build_parser
    from panda_lab.cli.server_cmd import config_from_args

    root = v2(tmp_path / "sys", "/", **{":cpu.max": "200000 100000",
                                        ":memory.max": str(int(1.5 * GB))})
    monkeypatch.setenv("PANDA_LAB_SYSROOT", str(root))
    monkeypatch.delenv("PANDA_LAB_CPUS", raising=False)
    monkeypatch.delenv("PANDA_LAB_MEMORY", raising=False)
    args: argparse.Namespace = build_parser().parse_args(
        ["--home", str(tmp_path / "home"), "server", "run"])
    config = config_from_args(args)
    assert config.max_events_per_job == plan_local(detect()).max_events_per_job
    assert config.max_events_per_job < 1_000_000
    sites = tmp_path / "sites.toml"
    sites.write_text('[sites.A]\nprovisioner = "local"\n')
    args = build_parser().parse_args(
        ["--home", str(tmp_path / "home"), "server", "run", "--sites", str(sites)])
    assert config_from_args(args).max_events_per_job is None


def test_embedded_server_in_a_small_container_makes_the_planned_sites(tmp_path, monkeypatch):
    """A real server started on a fake cgroup v2 root of 2 CPUs and 1.5 GB records three
    sites of one single-worker pilot each (what its provisioners start), and logs the
    plan with the limits it read.  (Pilots are not started: their slots come from the
    site's config, tested with the provisioners.)"""
    import json
    import sqlite3

    from harness import ServerProcess

    monkeypatch.delenv("PANDA_LAB_CPUS", raising=False)
    monkeypatch.delenv("PANDA_LAB_MEMORY", raising=False)
    root = v2(tmp_path / "sys", "/", **{":cpu.max": "200000 100000",
                                        ":memory.max": str(int(1.5 * GB))})
    monkeypatch.setenv("PANDA_LAB_SYSROOT", str(root))
    (tmp_path / "home").mkdir()
    server = ServerProcess(tmp_path / "home", extra=["--no-pilots"]).start()
    try:
        assert sorted(s["name"] for s in server.lab().sites()) == [
            "LOCAL-CLOUD", "LOCAL-GRID", "LOCAL-HPC"]
        log = server.log_tail(20_000)
    finally:
        server.stop()
    with sqlite3.connect(tmp_path / "home" / "panda-lab.sqlite") as db:
        configs = {name: json.loads(cfg) for name, cfg in db.execute(
            "select name, config from sites")}
    shape = {n: (c["pilots"], c["slots"], c.get("shared_cores")) for n, c in configs.items()}
    assert shape == {
        "LOCAL-GRID": (1, 1, 2), "LOCAL-CLOUD": (1, 1, 2), "LOCAL-HPC": (1, 1, 2)}
    assert ("3 site(s) x 1 pilot x 1 worker(s), 2 job(s) at once over all of them, "
            "50 MB per job and 2 MB of read cache per worker, 48 MB for the server's "
            "merged results") in log
    assert "2 CPUs, 1536 MB (cgroup v2: cpu.max 200000/100000, memory.max" in log
