"""Each exception the public API documents is the one a user sees, with a message that
names the problem (checked without a server where the error comes before one is needed)."""

from __future__ import annotations

import pytest

from panda_lab.client.session import connect


def test_connect_remote_without_token_raises_value_error(monkeypatch):
    monkeypatch.delenv("PANDA_LAB_TOKEN", raising=False)
    monkeypatch.delenv("PANDA_LAB_TOKEN_FILE", raising=False)
    with pytest.raises(ValueError, match="token is needed"):
        connect("http://127.0.0.1:9")


def test_connect_local_without_server_and_no_start_raises_connection_error(tmp_path):
    with pytest.raises(ConnectionError, match="no panda-lab server runs") as info:
        connect(home=tmp_path, start=False)
    assert str(tmp_path) in str(info.value)


def test_executor_map_with_chunksize_below_one_raises_value_error():
    from types import SimpleNamespace

    from panda_lab.client.executor import PandaExecutor

    lab = SimpleNamespace(url="http://127.0.0.1:9", api=SimpleNamespace(token="t"))
    ex = PandaExecutor(lab)
    with pytest.raises(ValueError, match="chunksize"):
        ex.map(abs, [1], chunksize=0)
