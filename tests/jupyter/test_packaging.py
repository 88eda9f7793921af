"""The wheel carries the prebuilt panel; without Node a source install still works and
says the panel was not built."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build_wheel(src: Path, out: Path, env: dict | None = None) -> tuple[Path, str]:
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                        "--no-build-isolation", "-v", "-w", str(out), str(src)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = out.glob("panda_lab-*.whl")
    return wheel, r.stdout + r.stderr


def test_the_wheel_carries_the_panel_and_enables_the_server_extension(tmp_path):
    assert shutil.which("node"), "Node.js is needed to build the panel (scripts/test has it)"
    wheel, _ = build_wheel(ROOT, tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    data = "panda_lab-0.1.0.data/data/"
    assert f"{data}share/jupyter/labextensions/panda-lab/package.json" in names
    assert any(n.startswith(f"{data}share/jupyter/labextensions/panda-lab/static/remoteEntry.")
               for n in names)
    assert f"{data}etc/jupyter/jupyter_server_config.d/panda_lab.json" in names
    assert "panda_lab/jupyter/server_extension.py" in names


def test_without_node_the_package_installs_and_says_the_panel_was_not_built(tmp_path):
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for f in files:  # a clean clone: no node_modules, no built panel
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "git").symlink_to(shutil.which("git"))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{bare}")
    wheel, output = build_wheel(src, tmp_path / "out", env=env)
    assert "the JupyterLab panel was NOT built: Node.js and npm are not installed" in output
    names = zipfile.ZipFile(wheel).namelist()
    assert "panda_lab/__init__.py" in names
    assert not any("labextensions/panda-lab" in n for n in names)
