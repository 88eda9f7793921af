"""``panda-lab teach reset|check``: a room's machine made ready between and before classes.

``reset`` brings the room back to a fresh start: the room's embedded server stopped and
its database, results and logs removed (every task, dataset and result gone; the next
``panda_lab.connect()`` starts a new one), the generated sample data rebuilt, and every
notebook under the course folder restored to its unrun state (outputs and execution
counts cleared with nbformat; what a student typed stays, git restores that).

``check`` says, one line per check, whether what a course needs works here, in under a
minute: Python and the packages, the resources the embedded default is sized to, the
JupyterLab panel and server extension, a server of its own (in a temporary home: the
room's server is left alone) with its sites' pilots running, jobs there and back, an
analysis over a small generated sample, the course's data and notebooks.  Exit code 0
when all hold, 1 when one does not.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from panda_lab import runtime
from panda_lab.cli.main import EXIT_FAIL, EXIT_OK, EXIT_USAGE

#: The course's sample: what ``example_notebooks/02-dimuon-analysis.ipynb`` writes to its
#: ``data/`` and binder/postBuild generates (same seed, same files).
SAMPLE = {"files": 4, "events": 1_000_000, "basket_events": 50_000, "seed": 2024}
#: What the server of a home keeps: removed by ``reset`` (SQLite with its journal files).
SERVER_STATE = ("panda-lab.sqlite", "panda-lab.sqlite-wal", "panda-lab.sqlite-shm",
                "panda-lab.sqlite-journal", "results", "logs", "server.json", "server.tmp")
#: Packages a course's notebooks import.
PACKAGES = ("numpy", "awkward", "uproot", "hist", "scipy", "matplotlib", "ipykernel",
            "ipywidgets", "nbformat", "nbclient", "jupyterlab")


def add_parser(sub: Any) -> None:
    """``teach`` and its actions on the ``panda-lab`` parser's subcommands."""
    t = sub.add_parser("teach", help="reset a teaching room, or check it before a class")
    tsub = t.add_subparsers(dest="action", metavar="ACTION", required=True)
    r = tsub.add_parser("reset", help="every task, dataset and result gone, the sample data "
                                      "rebuilt, the notebooks unrun")
    r.add_argument("--notebooks", type=Path, default=Path("example_notebooks"),
                   help="the course folder (default: example_notebooks)")
    r.add_argument("--events", type=int, default=SAMPLE["events"],
                   help="events per file of the rebuilt sample (default %(default)s)")
    r.add_argument("--yes", action="store_true", help="do not ask")
    c = tsub.add_parser("check", help="everything a course needs works here (one line each)")
    c.add_argument("--notebooks", type=Path, default=Path("example_notebooks"),
                   help="the course folder (default: example_notebooks)")
    c.add_argument("--timeout", type=float, default=50.0,
                   help="seconds the server checks may take together")


def run(args: argparse.Namespace) -> int:
    return reset(args) if args.action == "reset" else check(args)


# ---- reset ---------------------------------------------------------------------------------

def _is_sample_dir(d: Path) -> bool:
    """Whether ``d`` holds only a generated sample: ``dimuon_*.root`` files and the records
    ``make_sample`` keeps beside them (``.dimuon_*.root.json``)."""
    files = [p for p in d.iterdir()]
    return bool(files) and all(
        p.is_file() and ((p.name.startswith("dimuon_") and p.suffix == ".root")
                         or (p.name.startswith(".dimuon_") and p.name.endswith(".root.json")))
        for p in files)


def clear_outputs(path: Path) -> bool:
    """Restore one notebook to its unrun state (outputs, execution counts, execution
    timing and saved widget state removed); True when it changed.  Raises nbformat's
    errors for a file that is not a notebook."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    after = nbformat.writes(nb)
    if after != before:
        nbformat.write(nb, path)  # as Jupyter saves it (a newline at the end)
    return after != before


def reset(args: argparse.Namespace) -> int:
    """The room back to a fresh start; see the module docstring."""
    from panda_lab.analysis.sample import make_sample
    from panda_lab.server.main import stop_detached

    home = runtime.home(args.home)
    folder = args.notebooks
    if not folder.is_dir():
        print(f"panda-lab teach reset: --notebooks {folder} is not a folder", file=sys.stderr)
        return EXIT_USAGE
    if args.events < 1:
        print("panda-lab teach reset: --events must be positive", file=sys.stderr)
        return EXIT_USAGE
    info = runtime.read_connection(home) or {}
    own_db = f"sqlite:///{home / 'panda-lab.sqlite'}"
    if info.get("database") not in (None, own_db):
        print(f"panda-lab teach reset: the server of {home} keeps its data in "
              f"{info['database']}, not in its home: reset that database with its own tools",
              file=sys.stderr)
        return EXIT_USAGE
    if not args.yes:
        answer = input(f"Remove every task, dataset and result of the server in {home}, "
                       f"rebuild {folder / 'data'} and clear the outputs of the notebooks "
                       f"in {folder}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing done")
            return EXIT_FAIL
    t = time.monotonic()
    stopped = stop_detached(home)
    for name in SERVER_STATE:
        p = home / name
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    print(f"server: {'stopped, ' if stopped else ''}tasks, datasets and results removed "
          f"from {home}")
    notebooks = sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    for d in sorted({p.parent for p in folder.rglob("dimuon_*.root")}):
        if _is_sample_dir(d):
            shutil.rmtree(d)
    for cp in list(folder.rglob(".ipynb_checkpoints")):
        shutil.rmtree(cp, ignore_errors=True)
    paths = make_sample(folder / "data", **{**SAMPLE, "events": args.events})
    print(f"data: {len(paths)} files of {args.events:,} events rebuilt in {folder / 'data'}")
    changed = sum(clear_outputs(p) for p in notebooks)
    print(f"notebooks: {len(notebooks)} unrun ({changed} had outputs)")
    print(f"reset in {time.monotonic() - t:.1f} s; the next panda_lab.connect() starts a "
          "fresh server")
    return EXIT_OK


# ---- check ---------------------------------------------------------------------------------

class Checks:
    """Runs checks in order and prints one line for each: ``ok``/``FAIL``, its name, what
    it found, how long it took.  A check is a function returning its detail line; an
    exception is its failure (message shown)."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def __call__(self, name: str, fn: Callable[[], str]) -> bool:
        t = time.monotonic()
        try:
            detail, ok = fn(), True
        except Exception as exc:
            detail, ok = f"{type(exc).__name__}: {exc}".splitlines()[0][:300], False
        took = time.monotonic() - t
        print(f"{'ok  ' if ok else 'FAIL'} {name:<12} {detail} ({took:.1f} s)", flush=True)
        if not ok:
            self.failed.append(name)
        return ok


def _python() -> str:
    from panda_lab import __version__

    return f"Python {sys.version.split()[0]}, panda-lab {__version__}"


def _packages() -> str:
    from importlib.metadata import version

    missing = []
    for name in PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise RuntimeError(f"not importable: {', '.join(missing)} (pip install "
                           "'panda-lab[lab]')")
    return ", ".join(f"{n} {version(n)}" for n in ("numpy", "awkward", "uproot", "jupyterlab"))


def _resources() -> str:
    from panda_lab.resources import detect, plan_local, plan_note

    plan = plan_local(detect())
    if "expect memory errors" in plan.note:
        raise RuntimeError(plan_note(plan))
    return plan_note(plan)


def _panel() -> str:
    """The panel as JupyterLab finds it: a federated extension on Jupyter's paths, not
    disabled in any page config (what ``jupyter labextension list`` reads, without its
    start-up cost)."""
    from jupyter_core.paths import jupyter_path
    from jupyterlab_server.config import get_federated_extensions, get_page_config

    paths = jupyter_path("labextensions")
    ext = get_federated_extensions(paths).get("panda-lab")
    if ext is None:
        raise RuntimeError("the panda-lab panel is not installed (a wheel built without "
                           "Node.js has none: see the README's JupyterLab panel section)")
    disabled = get_page_config(paths).get("disabledExtensions") or []
    if "panda-lab" in disabled or (isinstance(disabled, dict) and disabled.get("panda-lab")):
        raise RuntimeError("the panda-lab panel is disabled: jupyter labextension enable "
                           "panda-lab")
    return f"panda-lab {ext.get('version', '?')} enabled in {ext.get('ext_path', '?')}"


def _server_extension() -> str:
    """The server extension enabled in Jupyter's config (``jupyter server extension
    list``'s source) and importable."""
    from jupyter_core.paths import jupyter_config_path
    from jupyter_server.extension.config import ExtensionConfigManager

    enabled = ExtensionConfigManager(
        read_config_path=jupyter_config_path()).get_jpserver_extensions()
    if not enabled.get("panda_lab"):
        raise RuntimeError("the panda_lab server extension is not enabled: jupyter server "
                           "extension enable panda_lab")
    importlib.import_module("panda_lab.jupyter.server_extension")
    return "panda_lab enabled"


def _data(folder: Path) -> Callable[[], str]:
    def check() -> str:
        import uproot

        files = sorted((folder / "data").glob("dimuon_*.root"))
        if len(files) != SAMPLE["files"]:
            raise RuntimeError(f"{len(files)} sample files in {folder / 'data'}, not "
                               f"{SAMPLE['files']}: run `panda-lab teach reset`")
        entries = sum(uproot.open(f)["Events"].num_entries for f in files)
        return f"{len(files)} files, {entries:,} events in {folder / 'data'}"
    return check


def _notebooks(folder: Path) -> Callable[[], str]:
    def check() -> str:
        import nbformat
        from jupyter_client.kernelspec import KernelSpecManager

        paths = sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
        if not paths:
            raise RuntimeError(f"no notebook in {folder}")
        for p in paths:
            nbformat.validate(nbformat.read(p, as_version=4))
        KernelSpecManager().get_kernel_spec("python3")
        return f"{len(paths)} notebooks valid in {folder}, kernel python3 found"
    return check


def _on_server(checks: Checks, deadline: float) -> None:
    """A server in a temporary home, sized as the room's: pilots, jobs, an analysis."""
    from panda_lab.analysis.dimuon import process
    from panda_lab.analysis.sample import make_sample
    from panda_lab.client.session import connect
    from panda_lab.server.main import stop_detached

    tmp = Path(tempfile.mkdtemp(prefix="panda-lab-check-"))
    lab: Any = None
    try:
        def server() -> str:
            nonlocal lab
            lab = connect(home=tmp)
            while True:
                sites = {s["name"] for s in lab.sites()}
                running = {p["site"] for p in lab.pilots() if p["state"] == "running"}
                if sites and running >= sites:
                    return f"{len(sites)} sites, pilots running at each: {', '.join(sorted(sites))}"
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pilots running at {sorted(running)} of {sorted(sites)}")
                time.sleep(0.2)

        if not checks("server", server):
            return

        def jobs() -> str:
            with lab.executor(name="teach-check") as ex:
                fs = [ex.submit(pow, i, 2) for i in range(12)]
                got = [f.result(timeout=max(1.0, deadline - time.monotonic())) for f in fs]
                where = sorted({f.site for f in fs})
            if got != [i * i for i in range(12)]:
                raise RuntimeError(f"wrong results: {got}")
            return f"12 jobs right, run at {', '.join(where)}"

        def analysis() -> str:
            files = make_sample(tmp / "sample", files=2, events=20_000, basket_events=5_000)
            ds = lab.datasets.register("teach-check", [str(f) for f in files], tree="Events")
            task = lab.analyze(process, ds, events_per_job=10_000, name="teach-check-analysis")
            result = task.result(timeout=max(1.0, deadline - time.monotonic()))
            if result["events"] != 40_000:
                raise RuntimeError(f"{result['events']} events merged, not 40,000")
            return (f"dimuon analysis: 40,000 events merged from {len(task.jobs())} jobs, "
                    f"{int(result['mass'].sum()):,} pairs")

        checks("jobs", jobs)
        checks("analysis", analysis)
    finally:
        if lab is not None:
            lab.close()
        stop_detached(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def check(args: argparse.Namespace) -> int:
    """Every check, one line each; EXIT_OK when all hold, EXIT_FAIL otherwise."""
    t = time.monotonic()
    checks = Checks()
    checks("python", _python)
    checks("packages", _packages)
    checks("resources", _resources)
    checks("panel", _panel)
    checks("server-ext", _server_extension)
    checks("data", _data(args.notebooks))
    checks("notebooks", _notebooks(args.notebooks))
    _on_server(checks, time.monotonic() + args.timeout)
    took = time.monotonic() - t
    if checks.failed:
        print(f"{len(checks.failed)} check(s) failed: {', '.join(checks.failed)} ({took:.0f} s)")
        return EXIT_FAIL
    print(f"all checks passed in {took:.0f} s")
    return EXIT_OK
