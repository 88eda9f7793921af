"""A 2 GB memory limit as mybinder.org gives, for the processes a test starts: a memory
cgroup made under this process's own (v2, then v1), else an address-space limit per
process.  Used by the Binder replay (tests/binder) and by the notebook tests, which run
their kernels in it and assert the peak stayed under the limit."""

from __future__ import annotations

import os
import re
import resource
import signal
import time
from pathlib import Path

#: mybinder.org's most (bytes).
LIMIT = 2 * 2**30


class MemoryLimit:
    """A memory cgroup of ``limit`` bytes made under this process's own (v2, then v1);
    where none can be made, an address-space limit on each process (weaker: per process,
    and on virtual memory).  ``enter`` is a ``preexec_fn``; ``report`` gives the kind,
    the peak and whether the kernel killed anything for memory."""

    def __init__(self, limit: int, name: str) -> None:
        self.limit, self.path, self.kind = limit, None, "rlimit-as"
        own = {}
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctl, path = line.split(":", 2)
            for c in ctl.split(",") if ctl else [""]:
                own[c] = path
        base = Path("/sys/fs/cgroup")
        for kind, parent, limit_file in (
                ("cgroup-v2", base / own.get("", "/").lstrip("/"), "memory.max"),
                ("cgroup-v1", base / "memory" / own.get("memory", "/").lstrip("/"),
                 "memory.limit_in_bytes")):
            if kind == "cgroup-v2" and not (base / "cgroup.controllers").exists():
                continue
            try:
                path = parent / name
                path.mkdir()
            except OSError:
                continue
            try:
                (path / limit_file).write_text(str(limit))
                if kind == "cgroup-v1":
                    (path / "memory.swappiness").write_text("0")
            except OSError:
                path.rmdir()
                continue
            self.path, self.kind = path, kind
            break

    def enter(self) -> None:
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))
        else:
            resource.setrlimit(resource.RLIMIT_AS, (self.limit, self.limit))

    def add(self, pid: int) -> None:
        """Put a running process (a notebook's kernel, once started) under the limit: into
        the cgroup, or an address-space limit set on it with ``prlimit``."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(pid))
        else:
            resource.prlimit(pid, resource.RLIMIT_AS, (self.limit, self.limit))

    def report(self) -> dict:
        if self.path is None:
            return {"kind": self.kind}
        if self.kind == "cgroup-v2":
            peak = (self.path / "memory.peak").read_text() if (
                self.path / "memory.peak").exists() else "0"
            events = (self.path / "memory.events").read_text()
        else:
            peak = (self.path / "memory.max_usage_in_bytes").read_text()
            events = (self.path / "memory.oom_control").read_text()
        kills = re.search(r"oom_kill (\d+)", events)
        return {"kind": self.kind, "peak": int(peak), "oom_kills": int(kills.group(1))
                if kills else None}

    def close(self) -> None:
        """End what is left in the cgroup (the processes the replay started) and remove it."""
        if self.path is None:
            return
        for _ in range(50):
            pids = [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        try:
            self.path.rmdir()
        except OSError:
            pass


def execute(nb, workdir: Path, limit: MemoryLimit, timeout: float = 120,
            image=None) -> float:
    """Run notebook ``nb`` (an nbformat node, outputs written into it) with nbclient in
    ``workdir``, its kernel under ``limit``; the seconds it took.  With ``image`` (a
    ``binder_image.Image``) the kernel is the image's: started through ``binder/start``
    with the image's Python, which is asserted.  Asserts the kernel was not killed for
    memory and the cgroup's peak so far is under the limit (with the ``prlimit``
    fall-back there is no peak to read: an allocation past the limit fails in the kernel
    and so fails the notebook)."""
    from nbclient import NotebookClient

    kw = {"kernel_name": "python3"}
    if image is not None:
        from binder_image import KERNEL

        kw = {"kernel_name": KERNEL, "kernel_manager_class": image.kernel_manager_class()}
    client = NotebookClient(nb, timeout=timeout, **kw,
                            resources={"metadata": {"path": str(workdir)}})
    kernels: list[list[str]] = []

    def started(notebook) -> None:
        pid = client.km.provisioner.pid
        limit.add(pid)
        kernels.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0"))

    client.on_notebook_start = started
    start = time.monotonic()
    client.execute()
    took = time.monotonic() - start
    memory = limit.report()
    if "peak" in memory:
        assert memory["oom_kills"] in (0, None) and memory["peak"] < limit.limit, memory
    if image is not None:  # the kernel was the image's Python (exec'd by binder/start)
        assert kernels and kernels[0][0] == str(image.python), kernels
    return took
