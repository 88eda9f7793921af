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


@pytest.mark.parametrize("split, names", [({"files_per_job": 0}, "files_per_job"),
                                          ({"events_per_job": -5}, "events_per_job"),
                                          ({"events_per_job": True}, "events_per_job")])
def test_analyze_with_a_bad_split_raises_value_error_naming_it(split, names):
    from panda_lab.client.analysis import analyze

    with pytest.raises(ValueError, match=names):
        analyze(None, object(), "ds", **split)


@pytest.mark.parametrize("line, names", [("--parallel 0", "--parallel"),
                                         ("--over xs", "--over"),
                                         ("--output-limit -1", "--output-limit"),
                                         ("--bogus", "unknown option")])
def test_panda_magic_bad_options_raise_usage_error(line, names):
    from IPython.core.error import UsageError

    from panda_lab.jupyter.magics import parse

    with pytest.raises(UsageError, match=names):
        parse(line)


def test_cli_pilot_without_token_exits_with_usage_code(monkeypatch, capsys):
    from panda_lab.cli.main import EXIT_USAGE, main

    monkeypatch.delenv("PANDA_LAB_PILOT_TOKEN", raising=False)
    assert main(["pilot", "--server", "http://127.0.0.1:9", "--site", "LOCAL"]) == EXIT_USAGE
    assert "no token" in capsys.readouterr().err


def test_cli_make_sample_with_no_events_exits_with_usage_code(tmp_path, capsys):
    from panda_lab.cli.main import EXIT_USAGE, main

    assert main(["make-sample", str(tmp_path), "--events", "0"]) == EXIT_USAGE
    assert "must be positive" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
