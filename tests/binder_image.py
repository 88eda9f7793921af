"""The Binder image, replayed here once per test session: what repo2docker's Dockerfile
would do, from ``binder/``'s files only (no Docker engine here).

:func:`build` makes a copy of the checkout as a clone would have it, a fresh venv of
``binder/runtime.txt``'s Python, ``pip install -r binder/requirements.txt`` and
``binder/postBuild``, and a kernelspec whose kernel is started the way the image starts
everything: through ``binder/start`` (``exec "$@"`` at its end), with the image's Python
and without this test environment's ``PYTHONPATH`` or venv.  The Binder replay
(``tests/binder``) checks the image; the notebook tests (``tests/notebooks``) run every
example and teaching notebook's kernel with it, under the 2 GB of ``tests/memlimit.py``.
One build serves both: the pip install is most of the replay's time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
#: Where CI may keep the image's venv between runs (opt-in): one per requirements.txt.
VENV_CACHE = "PANDA_LAB_BINDER_VENV_CACHE"
#: The kernel name of the image's kernelspec.
KERNEL = "panda-lab-binder-image"


@dataclass
class Image:
    """A replayed image: the checkout copy it was built from (``repo``), its ``venv``,
    the environment its commands run in (``env``), where its kernelspec is
    (``kernels``) and what each step took (``times``, seconds)."""

    repo: Path
    venv: Path
    env: dict[str, str]
    kernels: Path
    times: dict[str, float] = field(default_factory=dict)

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def kernel_manager_class(self) -> type:
        """An nbclient ``kernel_manager_class`` that finds the image's kernelspec."""
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import AsyncKernelManager
        from traitlets import default

        kernels = str(self.kernels)

        class ImageKernelManager(AsyncKernelManager):
            @default("kernel_spec_manager")
            def _kernel_spec_manager_default(self) -> KernelSpecManager:
                return KernelSpecManager(kernel_dirs=[kernels])

        return ImageKernelManager


def copy_checkout(dest: Path) -> None:
    """The checkout's files as a clone would have them (tracked and new, not ignored),
    and the panel as this checkout built it when it is there and current (hatch_build.py
    then skips ``npm install`` and the build: the panel's build has its own tests, and
    npm is what made the replay slow); else the panel's ``node_modules`` linked, as a
    warm npm cache would be."""
    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    built = ROOT / "panda_lab" / "labextension"
    sources = [p for p in (ROOT / "extension").glob("src/**/*") if p.is_file()]
    if (built / "package.json").is_file() and all(
            p.stat().st_mtime <= (built / "package.json").stat().st_mtime for p in sources):
        shutil.copytree(built, dest / "panda_lab" / "labextension")
    elif (ROOT / "extension" / "node_modules").is_dir():
        (dest / "extension" / "node_modules").symlink_to(ROOT / "extension" / "node_modules")


#: What of this machine's environment the image does not see.
HIDDEN = ("PANDA_LAB_", "JUPYTER", "VIRTUAL_ENV", "PYTHON", "OMP_", "DASK_")


def clean_env(venv: Path, tmp: Path) -> dict[str, str]:
    """This machine's environment without the test venv, panda-lab's or Jupyter's
    settings: the image's venv first on PATH, Jupyter's user dirs empty."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(HIDDEN)}
    env["PATH"] = image_path(venv)
    for var, sub in (("PANDA_LAB_HOME", "panda-home"), ("JUPYTER_CONFIG_DIR", "jconfig"),
                     ("JUPYTER_DATA_DIR", "jdata"), ("JUPYTER_RUNTIME_DIR", "jruntime"),
                     ("IPYTHONDIR", "ipython"), ("MPLCONFIGDIR", "mpl")):
        env[var] = str(tmp / sub)
    return env


def image_path(venv: Path) -> str:
    """``$PATH`` with the image's venv first and no other venv on it."""
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep)
            if p and not Path(p).parent.joinpath("pyvenv.cfg").exists()]
    return os.pathsep.join([str(venv / "bin"), *path])


def run(cmd: list[str], cwd: Path, env: dict, timeout: float, **kw) -> float:
    """Run ``cmd``; asserts it succeeded (its output's tail in the message); seconds."""
    t = time.monotonic()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout, **kw)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{(r.stdout + r.stderr)[-4000:]}"
    return time.monotonic() - t


def venv_place(tmp: Path, version: str) -> tuple[Path, bool]:
    """The image's venv: a new one in ``tmp``, or with ``$PANDA_LAB_BINDER_VENV_CACHE``
    set, the one kept there for this exact requirements.txt and Python (``True``: it
    exists already and only postBuild runs again)."""
    base = os.environ.get(VENV_CACHE)
    if not base:
        return tmp / "image", False
    import hashlib

    text = (BINDER / "requirements.txt").read_text()
    key = hashlib.sha256(f"{version}\n{text}".encode()).hexdigest()[:16]
    venv = Path(base) / f"binder-{key}"
    return venv, (venv / "requirements.txt").is_file() and \
        (venv / "requirements.txt").read_text() == text


def build(tmp: Path) -> Image:
    """Replay the image's build in ``tmp``: checkout copy, venv, pip install, postBuild,
    and the kernelspec.  Raises ``AssertionError`` with the failing step's output."""
    version = (BINDER / "runtime.txt").read_text().strip().removeprefix("python-")
    python = shutil.which(f"python{version}")
    assert python, f"binder/runtime.txt asks for Python {version}: python{version} is not here"
    repo = tmp / "repo"
    copy_checkout(repo)
    venv, cached = venv_place(tmp, version)
    env = clean_env(venv, tmp)
    times: dict[str, float] = {}
    t = time.monotonic()
    if not cached:
        subprocess.run([python, "-m", "venv", "--clear", str(venv)], check=True)
        # --no-compile: bytecode is written on first import anyway; compiling 140
        # packages up front was most of this step's time
        run([str(venv / "bin/pip"), "install", "-q", "--no-compile", "-r",
             "binder/requirements.txt"], repo, env, 900)
        (venv / "requirements.txt").write_text((BINDER / "requirements.txt").read_text())
    times["venv and pip install -r binder/requirements.txt"
          + (" (cached)" if cached else "")] = time.monotonic() - t
    times["postBuild"] = run(["binder/postBuild"], repo, env, 600)
    kernels = tmp / "kernels"
    spec = kernels / KERNEL
    spec.mkdir(parents=True)
    # Started as the image starts its processes: through binder/start, the image's
    # Python first on PATH, nothing of this test environment's Python settings.
    unset = sorted({k for k in os.environ if k.startswith(("PYTHON", "VIRTUAL_ENV"))})
    argv = ["env", *[a for k in unset for a in ("-u", k)], f"PATH={image_path(venv)}",
            str(repo / "binder" / "start"), str(venv / "bin" / "python"), "-m",
            "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps(
        {"argv": argv, "display_name": "panda-lab Binder image", "language": "python"}))
    return Image(repo, venv, env, kernels, times)
