"""``panda-lab simulate SCENARIO.toml``: a workload run in virtual time under each
brokerage policy (:mod:`panda_lab.sim`), printed as a table or as JSON.

Exit codes: 0 the scenario ran, 2 a bad scenario (the message names the key) or a bad
option.  Shipped scenarios can be named without their path (``data-at-one-site``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from panda_lab.cli.main import EXIT_OK, EXIT_USAGE, print_json
from panda_lab.model.brokerage import Policy

if TYPE_CHECKING:
    from panda_lab.sim.engine import Result

SHIPPED = Path(__file__).resolve().parents[1] / "sim" / "scenarios"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``simulate`` subcommand of the ``panda-lab`` parser ``sub``."""
    shipped = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.toml")))
    p = sub.add_parser(
        "simulate", help="run a scenario through each brokerage policy in virtual time",
        description="Run a workload (sites, datasets with replicas, network links, tasks) "
                    "in virtual time through the server's own splitter and brokerage, once "
                    "per policy, and print the makespan, the bytes read over each link, "
                    "each site's utilisation and the mean job wait.  Shipped scenarios: "
                    f"{shipped}.")
    p.add_argument("scenario", help="a scenario TOML file, or the name of a shipped one")
    p.add_argument("--policy", action="append", choices=[str(x) for x in Policy],
                   help="a policy to run (repeat for several; default: the scenario's, "
                        "else all five)")
    p.add_argument("--seed", type=int, help="random seed (default: the scenario's)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def _path(name: str) -> Path:
    path = Path(name)
    if not path.exists() and (SHIPPED / f"{name}.toml").exists():
        return SHIPPED / f"{name}.toml"
    return path


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f}"


def run(args: argparse.Namespace) -> int:
    """Run the ``simulate`` command line; returns its exit code (0, or 2 for a bad
    scenario, said on stderr with the key)."""
    # imported here: building the parser for other commands needs none of it
    from panda_lab.sim import ScenarioError, load, simulate

    try:
        scenario = load(_path(args.scenario))
    except ScenarioError as exc:
        print(f"panda-lab simulate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    results = simulate(scenario, args.policy, args.seed)
    if args.json:
        print_json({"scenario": scenario.name, "source": scenario.source,
                    "seed": scenario.seed if args.seed is None else args.seed,
                    "results": [r.as_dict() for r in results]})
        return EXIT_OK
    _print(scenario.name, results)
    return EXIT_OK


def _print(name: str, results: list[Result]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{name}[/]")
    t = Table("policy", "makespan s", "mean wait s", "jobs", "attempts", "failed",
              "remote GB", "broker µs/job")
    best = min(r.makespan_s for r in results)
    for r in results:
        t.add_row(r.policy, f"{r.makespan_s:,.0f}" + (" *" if r.makespan_s == best else ""),
                  f"{r.mean_wait_s:,.1f}", str(r.jobs), str(r.attempts), str(r.failed),
                  _gb(r.remote_bytes), f"{r.broker_us_per_job:.1f}")
    console.print(t)
    links = sorted({k for r in results for k in r.bytes_by_link})
    lt = Table("GB read over link", *(r.policy for r in results))
    for k in links:
        lt.add_row(k, *(_gb(r.bytes_by_link.get(k, 0)) for r in results))
    console.print(lt)
    sites = sorted({k for r in results for k in r.utilisation})
    ut = Table("site utilisation", *(r.policy for r in results))
    for s in sites:
        ut.add_row(s, *(f"{r.utilisation.get(s, 0):.0%}" for r in results))
    console.print(ut)
