"""The exceptions documented by the modules below the client (HTTP, payloads, remote
errors, files, samples, the connection file) are the ones raised, with a message that
names the problem; all without a server (a stand-in for urllib3's connection pool, named
``MockPool`` here, answers for one)."""

from __future__ import annotations

import io
import pickle
import threading
from urllib.parse import urlsplit

import orjson
import pytest
import urllib3
from urllib3.exceptions import NewConnectionError

from panda_lab.http import ApiClient, ApiError, ServerUnreachable


class MockPool:
    """Stands in for urllib3's ``PoolManager`` (no server here): ``handler(path)`` gives
    each request's response, or raises as a transport failure would."""

    def __init__(self, handler) -> None:
        self.handler = handler

    def urlopen(self, method: str, url: str, **kw) -> urllib3.HTTPResponse:
        return self.handler(urlsplit(url).path)

    def clear(self) -> None:
        """What closing the pool calls: this stand-in holds no connection."""


def response(status: int, *, json=None, text: str | None = None,
             content: bytes = b"") -> urllib3.HTTPResponse:
    body = orjson.dumps(json) if json is not None else (
        text.encode() if text is not None else content)
    return urllib3.HTTPResponse(body=io.BytesIO(body), status=status, preload_content=True)


def _client(handler) -> ApiClient:
    api = ApiClient("http://lab.invalid", "t")
    api._http = MockPool(handler)
    return api


def test_request_without_answer_raises_server_unreachable_naming_the_url():
    def refuse(path):
        raise NewConnectionError(None, "Failed to establish a new connection: [Errno 111] "
                                       "Connection refused")

    with _client(refuse) as api, pytest.raises(ServerUnreachable) as info:
        api.get("/api/tasks")
    assert "the panda-lab server at http://lab.invalid does not answer" in str(info.value)
    assert "(Failed to establish a new connection: [Errno 111] Connection refused)" in str(
        info.value)
    assert isinstance(info.value, ConnectionError)


def test_error_status_raises_api_error_with_the_servers_detail():
    def not_found(path):
        return response(404, json={"detail": "dataset 'x' not found"})

    with _client(not_found) as api, pytest.raises(ApiError) as info:
        api.get("/api/datasets/x")
    assert info.value.status == 404
    assert info.value.detail == "dataset 'x' not found"
    assert str(info.value) == "GET /api/datasets/x: HTTP 404: dataset 'x' not found"


def test_error_status_with_a_body_not_json_keeps_its_text_as_detail():
    def broken(path):
        return response(502, text="Bad Gateway")

    with _client(broken) as api, pytest.raises(ApiError) as info:
        api.post("/api/tasks", {"name": "t"})
    assert (info.value.status, info.value.detail) == (502, "Bad Gateway")


@pytest.mark.parametrize("no_proxy,through", [("", True), ("lab.example,other", False)])
def test_requests_go_through_the_proxy_the_environment_names(monkeypatch, no_proxy, through):
    """As httpx did: ``HTTP_PROXY`` for an http server, unless ``NO_PROXY`` names it."""
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    api = ApiClient("http://lab.example:8000", "t")
    assert isinstance(api._http, urllib3.ProxyManager) is through
    if through:
        assert api._http.proxy.host == "proxy.example"
    monkeypatch.delenv("HTTP_PROXY")
    assert not isinstance(ApiClient("http://lab.example:8000", "t")._http,
                          urllib3.ProxyManager)


def test_request_returns_decoded_json_none_for_empty_body_and_bytes_when_raw():
    bodies = {"/a": response(200, json={"n": 1}), "/b": response(204),
              "/c": response(200, content=b"\x00raw")}

    with _client(lambda path: bodies[path]) as api:
        assert api.get("/a") == {"n": 1}
        assert api.get("/b") is None
        assert api.request("GET", "/c", raw=True) == b"\x00raw"


def test_dumps_fn_of_an_unpicklable_callable_raises_payload_error_naming_it():
    from panda_lab.payload import PayloadError, dumps_fn

    class Holder:
        def __init__(self):
            self.lock = threading.Lock()

        def __call__(self):
            return 1

    with pytest.raises(PayloadError, match=r"cannot pickle .*Holder.*lock") as info:
        dumps_fn(Holder())
    assert isinstance(info.value, TypeError)


def test_loads_exception_of_bytes_that_are_no_record_raises_value_error():
    from panda_lab.remote_errors import loads_exception

    with pytest.raises(ValueError, match="not a job's exception"):
        loads_exception(pickle.dumps({"format": "something else"}), RuntimeError)
    with pytest.raises(pickle.UnpicklingError):
        loads_exception(b"not a pickle", RuntimeError)


@pytest.mark.parametrize("kw", [{"events": -1}, {"basket_events": 0}])
def test_write_file_with_bad_sizes_raises_value_error_before_writing(tmp_path, kw):
    from panda_lab.analysis.sample import write_file

    with pytest.raises(ValueError, match="events must be >= 0 and basket_events >= 1"):
        write_file(tmp_path / "f.root", **kw)
    assert not (tmp_path / "f.root").exists()


def test_check_columns_names_the_missing_column_and_close_branches():
    from panda_lab.analysis.files import UnknownColumns, check_columns

    files = [{"branches": ["nMuon", "Muon_pt", "Muon_eta"]}, {"branches": ["nMuon"]}]
    assert check_columns(files, ["Muon", "Muon.pt", "nMuon"], "dataset 'd'") is None
    with pytest.raises(UnknownColumns) as info:
        check_columns(files, ["Muon_ptt", "Jet"], "dataset 'd'")
    assert isinstance(info.value, ValueError)
    assert str(info.value) == ("no file of dataset 'd' has the columns 'Muon_ptt' "
                               "(did you mean 'Muon_pt', 'Muon_eta', 'nMuon'?), 'Jet'")


def test_open_file_of_a_missing_or_non_root_file_raises_data_error(tmp_path):
    from panda_lab.analysis.errors import DataError
    from panda_lab.analysis.files import open_file

    with pytest.raises(DataError, match="file not found") as info:
        open_file(tmp_path / "nope.root", "Events")
    assert info.value.reason == "file not found"
    text = tmp_path / "notes.root"
    text.write_text("not ROOT at all\n" * 10)
    with pytest.raises(DataError, match="not a ROOT file or corrupt"):
        open_file(text, "Events")


def test_read_connection_is_none_for_a_missing_or_torn_file(tmp_path):
    from panda_lab import runtime

    assert runtime.read_connection(tmp_path) is None
    runtime.connection_path(tmp_path).write_text('{"url": "http://')
    assert runtime.read_connection(tmp_path) is None
    runtime.remove_connection(tmp_path, pid=1)  # unreadable: left alone, no error
    assert runtime.connection_path(tmp_path).exists()


def test_package_docstring_names_every_export_and_unknown_names_raise_attribute_error():
    import panda_lab

    for name in panda_lab.__all__:
        assert f"``{name}``" in panda_lab.__doc__, f"{name} is exported but not described"
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        panda_lab.Nope  # noqa: B018


def test_split_into_no_jobs_raises_cell_error():
    from panda_lab.jupyter.cells import CellError, split

    with pytest.raises(CellError, match="--parallel needs at least 1 job"):
        split([1, 2], 0)


def test_panel_link_without_a_server_raises_server_down_naming_why(tmp_path):
    import asyncio

    from panda_lab import runtime
    from panda_lab.jupyter.server_extension import PandaLink, ServerDown

    link = PandaLink(str(tmp_path))
    with pytest.raises(ServerDown, match="no panda-lab server has run for") as info:
        link.connection()
    assert str(tmp_path.resolve()) in str(info.value)
    runtime.write_connection(tmp_path, {"url": "http://127.0.0.1:9", "user_token": "t"})
    with pytest.raises(ServerDown, match=r"server at http://127\.0\.0\.1:9 does not answer"):
        asyncio.run(link.request("GET", "/api/info"))


class _CellLab:
    """Just what bring_back asks of a lab, with canned answers."""

    def __init__(self, results=None, failures=()):
        self._results, self._failures = results or {}, list(failures)

    def results(self, task):
        return self._results

    def failures(self, task):
        return self._failures


def test_bring_back_of_a_task_that_is_no_cell_raises_usage_error():
    from IPython.core.error import UsageError

    from panda_lab.jupyter.magics import bring_back

    info = {"state": "done", "n_jobs": 1}
    with pytest.raises(UsageError, match="task 7 is not a %%panda cell"):
        bring_back(_CellLab({0: 42}), 7, info, {})


def test_bring_back_of_a_failed_task_without_failed_jobs_raises_runtime_error():
    from panda_lab.jupyter.magics import bring_back

    info = {"state": "aborted", "n_jobs": 2}
    with pytest.raises(RuntimeError, match="task 7 ended aborted without a failed job"):
        bring_back(_CellLab(), 7, info, {})


def test_bring_back_raises_the_first_failed_jobs_job_failed():
    from panda_lab.client.futures import JobFailed
    from panda_lab.jupyter.magics import bring_back

    failed = {"id": 3, "job_index": 0, "state": "failed", "error_category": "system",
              "error_message": "lost heartbeat"}
    with pytest.raises(JobFailed, match="lost heartbeat"):
        bring_back(_CellLab(failures=[failed]), 7, {"state": "failed", "n_jobs": 1}, {})


def test_pilot_run_exit_codes_for_an_unreachable_and_a_refusing_server():
    import signal

    from panda_lab.pilot import Pilot, PilotOptions

    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        gone = Pilot(PilotOptions("http://127.0.0.1:9", "LOCAL", "t", server_lost_timeout=0))
        assert gone.run() == 3
        assert not gone.spool.exists()
        refused = Pilot(PilotOptions("http://lab.invalid", "LOCAL", "t"))
        refused.api._http = MockPool(lambda path: response(401, json={"detail": "wrong token"}))
        assert refused.run() == 2
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
