"""A server told to stop answers every request it holds open, at once.

The kind of fault: a request the server holds open holds its stop back.  uvicorn waits
for open requests before it stops, for ``timeout_graceful_shutdown`` (5 s), then cancels
them, so every stop with a notebook attached took 5 s more and ended its requests badly.
Members, each through a real server stopped by SIGTERM:

- a client's ``wait`` long poll (``task.result()``, ``lab.wait``): it got an HTTP 500
  after 5 s; now it answers with the task as it is, not final, and the client's next
  request finds the server gone;
- an event stream (the JupyterLab panel, the live widgets): it was cut without a word
  after 5 s; now it gets its ``shutdown`` message and ends;
- a pilot's ``acquire`` long poll: it answers with no job.

Not a member: a client that stalls in the middle of sending a request (the server cannot
answer what it has not read); uvicorn's graceful timeout bounds it.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import httpx
from harness import ServerProcess, wait_for


def test_a_stop_answers_the_wait_the_event_stream_and_the_acquisition_held_open(home):
    server = ServerProcess(home, extra=["--no-pilots"]).start()
    try:
        url, user, pilot_token = (server.info["url"], server.info["user_token"],
                                  server.info["pilot_token"])
        lab = server.lab()
        # an open task with no job: its wait, and a pilot's acquisition, wait for ever
        task = lab.api.post("/api/tasks", {"name": "held", "jobs": [], "open": True})["task"]
        pilot = lab.api.__class__(url, pilot_token).post(
            "/api/pilot/register", {"site": "LOCAL-GRID", "host": socket.gethostname(),
                                    "pid": 1, "slots": 1, "info": {}})["pilot"]
        got: dict = {}

        def wait() -> None:
            r = httpx.get(f"{url}/api/tasks/{task}/wait", params={"timeout": 120},
                          headers={"Authorization": f"Bearer {user}"}, timeout=180)
            got["wait"] = (r.status_code, r.json().get("state"), time.monotonic())

        def events() -> None:
            with httpx.stream("GET", f"{url}/api/events",
                              headers={"Authorization": f"Bearer {user}"}, timeout=180) as r:
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        msg = json.loads(line[5:])
                        got.setdefault("events", []).append(msg)
            got["events_end"] = time.monotonic()

        def acquire() -> None:
            r = httpx.post(f"{url}/api/pilot/acquire",
                           json={"pilot": pilot, "site": "LOCAL-GRID", "n": 1, "wait": 60},
                           headers={"Authorization": f"Bearer {pilot_token}"}, timeout=180)
            got["acquire"] = (r.status_code, r.json().get("jobs"), time.monotonic())

        threads = [threading.Thread(target=f, daemon=True) for f in (wait, events, acquire)]
        for t in threads:
            t.start()
        wait_for(lambda: got.get("events"), 10, what="the event stream's hello")
        time.sleep(1.0)  # the wait and the acquisition are held by now
        assert "wait" not in got and "acquire" not in got
        stop = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
        for t in threads:
            t.join(10)
        exited = time.monotonic() - stop
        # each answered at once: not after the 5-s graceful timeout, nor with a 500
        status, state, at = got["wait"]
        assert (status, state) == (200, "ready") and at - stop < 2.5, got["wait"]  # not final
        status, jobs, at = got["acquire"]
        assert (status, jobs) == (200, []) and at - stop < 2.5, got["acquire"]
        assert any("shutdown" in m for m in got["events"]), got["events"]
        assert got["events_end"] - stop < 2.5
        assert exited < 4.0, f"the server took {exited:.1f} s to stop"
    finally:
        server.stop()  # a no-op once it stopped; a failure above leaves no server
