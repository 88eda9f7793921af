"""Build hook: the JupyterLab panel (extension/) is built into the wheel when Node.js is here.

``pip install .`` from a clean clone runs ``npm install`` and ``npm run build`` in
``extension/`` and ships the result as ``share/jupyter/labextensions/panda-lab``.  Without
Node the Python package still installs and says that the panel was not built (and the
server extension says it again when Jupyter starts); set ``PANDA_LAB_REQUIRE_PANEL=1`` to
make that an error, as a release build does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

ROOT = Path(__file__).parent
EXTENSION = ROOT / "extension"
BUILT = ROOT / "panda_lab" / "labextension"


def _newest(paths: list[Path]) -> float:
    return max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)


def _stale() -> bool:
    sources = [*EXTENSION.glob("src/**/*"), *EXTENSION.glob("style/**/*"),
               EXTENSION / "package.json"]
    return _newest(sources) > _newest([BUILT / "package.json"])


class PanelBuildHook(BuildHookInterface):
    PLUGIN_NAME = "panda-lab-panel"

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel":
            return
        if _stale() or not (BUILT / "package.json").exists():
            self._build()
        if (BUILT / "package.json").exists():
            build_data["shared_data"][str(BUILT)] = "share/jupyter/labextensions/panda-lab"
        build_data["shared_data"][str(ROOT / "jupyter-config" / "server-config" /
                                      "panda_lab.json")] = \
            "etc/jupyter/jupyter_server_config.d/panda_lab.json"

    def _build(self) -> None:
        npm = shutil.which("npm")
        if npm is None or shutil.which("node") is None:
            self._missing("Node.js and npm are not installed")
            return
        try:
            subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=EXTENSION,
                           check=True)
            subprocess.run([npm, "run", "build"], cwd=EXTENSION, check=True)
        except subprocess.CalledProcessError as exc:
            self._missing(f"building it failed ({exc})")

    def _missing(self, why: str) -> None:
        msg = (f"panda-lab: the JupyterLab panel was NOT built: {why}. The Python package "
               "works without it; install Node.js 20+ and reinstall for the panel.")
        if os.environ.get("PANDA_LAB_REQUIRE_PANEL"):
            raise RuntimeError(msg)
        print(msg, file=sys.stderr)
        self.app.display_warning(msg)
