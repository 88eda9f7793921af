"""The runtime directory and the connection file that lets clients find the local server.

The connection file holds the URL and both tokens, so it is written readable by the
user only, and replaced atomically so a reader never sees half of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import platformdirs

CONNECTION_FILE = "server.json"


def home(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``PANDA_LAB_HOME``, else the user's data directory (platformdirs):
    where the server keeps its state.  Returns it absolute, created (mode 0700) if
    missing; ``OSError`` when it cannot be created."""
    if path is None:
        path = os.environ.get("PANDA_LAB_HOME") or platformdirs.user_data_dir("panda-lab")
    p = Path(path).expanduser().resolve()
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    return p


def connection_path(home_: Path) -> Path:
    """Where the connection file of the server at ``home_`` is (it may not exist)."""
    return home_ / CONNECTION_FILE


def write_connection(home_: Path, info: dict) -> Path:
    """Write ``info`` (JSON-able: URL, tokens, pid) as the connection file, mode 0600,
    replacing any old one atomically; returns its path.  ``OSError`` when it cannot be
    written, ``TypeError`` when ``info`` is not JSON-able."""
    path = connection_path(home_)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=2)
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return path


def read_connection(home_: Path) -> dict | None:
    """The connection file's contents, or ``None`` when there is none or it is not JSON
    (a torn write cannot be seen: the file is replaced atomically)."""
    try:
        return json.loads(connection_path(home_).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def remove_connection(home_: Path, pid: int | None = None) -> None:
    """Remove the file, but only if it is still ours (``pid`` matches) when given; a
    missing or unreadable file is left alone.  Returns nothing, raises nothing for a file
    that is already gone."""
    info = read_connection(home_)
    if info is None or (pid is not None and info.get("pid") != pid):
        return
    connection_path(home_).unlink(missing_ok=True)


def finder(home_: Path):
    """A function that says where the server of ``home_`` is now: ``(url, user token)``
    from its connection file, or None without one.  A client given it
    (:class:`panda_lab.http.ApiClient`'s ``find``) follows a server restarted on a new
    port."""
    def find() -> tuple[str, str] | None:
        info = read_connection(home_)
        if not info or "url" not in info or "user_token" not in info:
            return None
        return info["url"], info["user_token"]
    return find
