"""A pilot told to stop stops, even while its server does not answer.

The kind of fault: a stop waiting out a retry meant for a server that comes back.  A
pilot retries a server that does not answer for ``--server-lost-timeout`` (5 minutes by
default); a SIGTERM while it retried was logged and then waited out the whole timeout.
Members, each tested through the real command: a SIGTERM and a SIGINT while the pilot
registers with a server that is not there; and the client's own bound, which every
retrying request obeys (a transport failure, or a 503 that says to retry).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from panda_lab.http import ApiClient, ServerUnreachable


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_pilot_whose_server_is_gone_stops_when_told(sig):
    proc = subprocess.Popen(
        [sys.executable, "-m", "panda_lab.cli.main", "pilot", "--server",
         "http://127.0.0.1:9", "--site", "A", "--token", "t"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(2.0)          # registering: retrying a server that is not there
        assert proc.poll() is None
        t = time.monotonic()
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
        took = time.monotonic() - t
    finally:
        proc.kill()
    from panda_lab.pilot.pilot import STOP_RETRY_S

    # within its last retries' bound (and the backoff's last sleep), not 5 minutes
    assert took < STOP_RETRY_S + 3.0, (took, out[-2000:])
    assert proc.returncode == 3, out[-2000:]       # EXIT_NO_SERVER: it never got one
    assert "stopping" in out


def test_the_clients_bound_ends_every_retry():
    api = ApiClient("http://127.0.0.1:9", "t", timeout=1.0, retry_for=300.0)
    api.retry_until = time.monotonic() + 0.5
    t = time.monotonic()
    with pytest.raises(ServerUnreachable):
        api.request("GET", "/api/info")
    assert time.monotonic() - t < 3.0


def test_the_clients_bound_ends_retrying_a_503():
    """A server that keeps answering 503 with ``Retry-After``: the bound ends the retries
    and the 503 is the answer."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from panda_lab.http import ApiError

    class Busy(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"detail": "busy"}'
            self.send_response(503)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = ApiClient(f"http://127.0.0.1:{server.server_port}", "t", timeout=5.0,
                        retry_for=300.0)
        api.retry_until = time.monotonic() + 0.5
        t = time.monotonic()
        with pytest.raises(ApiError) as exc:
            api.request("GET", "/api/info")
        assert exc.value.status == 503
        assert time.monotonic() - t < 3.0
    finally:
        server.shutdown()
