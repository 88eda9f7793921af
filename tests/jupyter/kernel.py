"""A real IPython kernel driven over ZeroMQ, as Jupyter drives it."""

from __future__ import annotations

import os
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Reply:
    """What one execution produced: the reply status and the iopub messages."""

    status: str
    stdout: str = ""
    stderr: str = ""
    error: dict | None = None
    displays: list[dict] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)

    @property
    def traceback(self) -> str:
        import re

        text = "\n".join(self.error["traceback"]) if self.error else ""
        return re.sub(r"\x1b\[[0-9;]*m", "", text)


class Kernel:
    """``python3`` kernel with ``PANDA_LAB_HOME`` pointing at the test's server."""

    def __init__(self, home: Path) -> None:
        from jupyter_client import KernelManager

        self.km = KernelManager(kernel_name="python3")
        env = dict(os.environ, PANDA_LAB_HOME=str(home))
        self.km.start_kernel(env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 60.0, on_message=None) -> Reply:
        """Execute ``code`` and collect its output until the kernel is idle again."""
        msg_id = self.kc.execute(code)
        reply = Reply(status="?")
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no end of execution within {timeout} s: {code[:80]!r}")
            try:
                msg = self.kc.get_iopub_msg(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            reply.messages.append(msg)
            kind, content = msg["msg_type"], msg["content"]
            if on_message is not None:
                on_message(msg)
            if kind == "stream":
                if content["name"] == "stdout":
                    reply.stdout += content["text"]
                else:
                    reply.stderr += content["text"]
            elif kind == "error":
                reply.error = content
            elif kind in ("display_data", "execute_result"):
                reply.displays.append(content)
            elif kind == "status" and content["execution_state"] == "idle":
                break
        # this execution's reply: a slow kernel start leaves a second kernel_info_reply
        # (wait_for_ready asks again), which must not be taken for it
        while True:
            shell = self.kc.get_shell_msg(timeout=10)
            if shell["parent_header"].get("msg_id") == msg_id:
                break
        reply.status = shell["content"]["status"]
        return reply

    def ok(self, code: str, timeout: float = 60.0) -> Reply:
        reply = self.run(code, timeout)
        assert reply.status == "ok", reply.traceback
        return reply

    def value(self, expr: str):
        """The value of ``expr`` in the kernel, through its repr."""
        import ast

        reply = self.ok(f"print(repr({expr}))")
        return ast.literal_eval(reply.stdout.strip())

    def interrupt(self) -> None:
        self.km.interrupt_kernel()

    def restart(self) -> None:
        self.km.restart_kernel(now=True)
        self.kc.wait_for_ready(timeout=60)

    def stop(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)
