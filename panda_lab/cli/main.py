"""``panda-lab``: the command line.  pbook's verbs, the server, pilots and the demo.

Exit codes: 0 success, 1 failure of the work itself (a task that failed, a check that
did not hold), 2 bad usage or input, 3 no server to talk to.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from panda_lab.model import JobState, TaskState

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NO_SERVER = 0, 1, 2, 3


JSON_HELP = "print the server's records as JSON instead of a table"


def _positive(text: str) -> int:
    """An argparse type: a whole number above 0."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not above 0")
    return n


def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="database URL (default: SQLite in the home directory), e.g. "
                                "postgresql+psycopg://user@host/db")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    p.add_argument("--sites", type=Path, help="sites.toml (default: three local sites)")
    p.add_argument("--heartbeat-timeout", type=float, default=60.0,
                   help="seconds without heartbeat before a job is failed and retried")
    p.add_argument("--task-lease", type=float, default=60.0,
                   help="seconds an open task (an executor's) stays open without word from "
                        "its client; then it is closed and ends when its jobs end")
    p.add_argument("--watchdog-interval", type=float, default=2.0,
                   help="seconds between two rounds of the watchdog (lost pilots and jobs, "
                        "lapsed leases)")
    p.add_argument("--heartbeat-interval", type=float, default=5.0,
                   help="how often pilots heartbeat")
    p.add_argument("--network", choices=("active", "passive", "off"), default="active",
                   help="brokerage's network term: weighed (active, the default), computed "
                        "and shown only (passive), or not computed (off)")
    p.add_argument("--stall-after", type=float, default=300.0,
                   help="seconds without dispatch after which a site's waiting jobs are "
                        "brokered again while other sites have free slots (0: never)")
    p.add_argument("--broker-seed", type=int,
                   help="seed brokerage's random picks (reproducible decisions)")
    p.add_argument("--merge-memory", metavar="SIZE",
                   help="memory the merged results of analyses may take in the server, e.g. "
                        "256M or 2G (default: $PANDA_LAB_MERGE_MEMORY, else a share of the "
                        "memory this process may use)")
    p.add_argument("--no-pilots", action="store_true",
                   help="start no local pilots (run `panda-lab pilot` yourself)")
    p.add_argument("--scrape-token-file", type=Path,
                   help="a file holding the token Prometheus sends to /metrics (default: "
                        "$PANDA_LAB_SCRAPE_TOKEN; without either, the user token only)")
    p.add_argument("--jupyterhub", action="store_true",
                   help="run as a JupyterHub service: identify notebook users by their hub "
                        "token ($JUPYTERHUB_API_URL and $JUPYTERHUB_API_TOKEN, which the hub "
                        "sets for a managed service)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="panda-lab", description="PanDA-style distributed analysis from the notebook.",
        epilog="Exit codes: 0 success, 1 the work failed, 2 bad usage or input (an unknown "
               "task, a refused action), 3 no server to talk to.")
    parser.add_argument("--home", type=Path, help="runtime directory (default: $PANDA_LAB_HOME "
                                                   "or the user's data directory)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    srv = sub.add_parser("server", help="run, start, stop or query the server")
    ssub = srv.add_subparsers(dest="action", metavar="ACTION", required=True)
    _server_args(ssub.add_parser("run", help="run in the foreground (a deployment)"))
    _server_args(ssub.add_parser("start", help="start detached; writes the connection file"))
    ssub.add_parser("stop", help="stop the detached server and its local pilots")
    st = ssub.add_parser("status", help="is the server running, and where")
    st.add_argument("--json", action="store_true", help=JSON_HELP)

    pil = sub.add_parser("pilot", help="run a pilot that pulls jobs for a site")
    pil.add_argument("--server", required=True, help="server URL")
    pil.add_argument("--site", required=True, help="site name")
    pil.add_argument("--token", help="pilot token (default: $PANDA_LAB_PILOT_TOKEN, or "
                                     "--token-file)")
    pil.add_argument("--token-file", type=Path, help="file holding the pilot token")
    pil.add_argument("--slots", type=int, default=1, help="jobs run at once")
    pil.add_argument("--max-jobs", type=int, default=0, help="exit after this many jobs")
    pil.add_argument("--idle-exit", type=float, default=0.0,
                     help="exit after this many seconds without work")
    pil.add_argument("--server-lost-timeout", type=float, default=300.0,
                     help="seconds without an answer from the server before the pilot exits")
    pil.add_argument("--walltime", type=float, default=0.0,
                     help="seconds the allocation lasts: drain before it ends (0: no limit)")
    pil.add_argument("--shared-cores", type=int, default=0, metavar="N",
                     help="payloads run at once by all the pilots given the same --cores-dir "
                          "(this machine's cores; 0: no limit)")
    pil.add_argument("--cores-dir", type=Path,
                     help="directory of the lock files the pilots of --shared-cores share")

    t = sub.add_parser("tasks", help="list tasks, newest first, with their outcome")
    t.add_argument("--limit", type=_positive, default=50, help="at most this many (default 50)")
    t.add_argument("--state", choices=[str(s) for s in TaskState], metavar="STATE",
                   help="only tasks in this state: " + ", ".join(map(str, TaskState)))
    t.add_argument("--json", action="store_true", help=JSON_HELP)
    one = sub.add_parser("task", help="one task's outcome: what was done, lost, how long")
    one.add_argument("task", help="task id or name")
    one.add_argument("--json", action="store_true", help=JSON_HELP)
    j = sub.add_parser("jobs", help="list the jobs of a task")
    j.add_argument("task", help="task id or name")
    j.add_argument("--all", action="store_true", help="every attempt, not only the latest")
    j.add_argument("--state", choices=[str(s) for s in JobState], metavar="STATE",
                   help="only jobs in this state: " + ", ".join(map(str, JobState)))
    j.add_argument("--limit", type=_positive, help="at most this many (default: all)")
    j.add_argument("--json", action="store_true", help=JSON_HELP)
    jb = sub.add_parser("job", help="one job attempt in full: attempts, brokerage, history, "
                                    "error and traceback, output")
    jb.add_argument("job", type=int, help="job id (an attempt: see `panda-lab jobs TASK`)")
    jb.add_argument("--json", action="store_true", help=JSON_HELP)
    o = sub.add_parser("output", help="all that is kept of a job's stdout (or stderr)",
                       description="Print one job attempt's full output as the pilot kept it "
                                   "(up to the task's output_limit characters; its tail in "
                                   "`jobs` starts with a marker line when it is not all).")
    o.add_argument("job", type=int, help="job id (an attempt: see `panda-lab jobs TASK`)")
    o.add_argument("--stderr", action="store_true", help="stderr instead of stdout")
    o.add_argument("--json", action="store_true", help=JSON_HELP)
    for verb, text in (("kill", "kill a task"), ("retry", "retry the failed jobs of a task")):
        v = sub.add_parser(verb, help=text)
        v.add_argument("task", help="task id or name")
        v.add_argument("--json", action="store_true", help=JSON_HELP)
    s = sub.add_parser("sites", help="sites, their pilots, queued and running jobs")
    s.add_argument("--json", action="store_true", help=JSON_HELP)
    lk = sub.add_parser("links", help="learned throughput and latency of each (storage "
                                      "endpoint, site) link, with observations and age")
    lk.add_argument("--json", action="store_true", help=JSON_HELP)

    ms = sub.add_parser("make-sample", help="write a synthetic NanoAOD-like dimuon dataset")
    ms.add_argument("outdir", type=Path, help="directory to write the ROOT files into")
    ms.add_argument("--files", type=int, default=4, help="number of files (default 4)")
    ms.add_argument("--events", type=int, default=2_000_000, help="events per file")
    ms.add_argument("--seed", type=int, default=2024, help="random seed (same seed, same files)")
    ms.add_argument("--basket-events", type=int, default=100_000,
                    help="entries per basket, hence per cluster the splitter may cut at")

    from panda_lab.cli import users

    users.add_parser(sub)

    from panda_lab.cli import share, simulate

    simulate.add_parser(sub)
    share.add_parser(sub)

    d = sub.add_parser("demo", help="run the demo on the embedded default")
    d.add_argument("--jobs", type=int, default=300, help="Monte Carlo jobs in the first part")
    d.add_argument("--events", type=int, default=500_000,
                   help="events per file of the generated dimuon dataset (4 files)")
    d.add_argument("--keep-server", action="store_true",
                   help="leave a server the demo started running")
    from panda_lab.cli import teach

    teach.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command line (``argv``, default ``sys.argv[1:]``); return its exit code.

    Errors a user can cause are not raised but printed on stderr as one line, with the
    exit codes of the module docstring: a bad configuration, a client error (HTTP 4xx)
    or bad options give 2, no server (``ConnectionError``) 3, a server error 1, an
    interrupt 130.  argparse's own usage errors exit with 2 (``SystemExit``).  Output
    cut short by its reader (``panda-lab tasks | head``) ends the command quietly with 0.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose or args.command in ("server", "pilot")
                        else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from panda_lab.http import ApiError
    from panda_lab.provisioners.config import ConfigError
    from panda_lab.server.main import ServerError

    try:
        code = _dispatch(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except BrokenPipeError:  # before ConnectionError, of which it is one
        # The reader went away (``| head``): what it wanted it has; say nothing more, and
        # let no flush at exit fail on the closed pipe either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except (ConfigError, ConnectionError, ServerError) as exc:
        # ServerUnreachable is a ConnectionError: no server to talk to.
        print(f"panda-lab: {exc}", file=sys.stderr)
        return (EXIT_USAGE if isinstance(exc, ConfigError)
                else EXIT_NO_SERVER if isinstance(exc, ConnectionError) else EXIT_FAIL)
    except ApiError as exc:
        print(f"panda-lab: {exc.text}", file=sys.stderr)
        return EXIT_USAGE if 400 <= exc.status < 500 else EXIT_FAIL
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "server":
        from panda_lab.cli import server_cmd

        return server_cmd.run(args)
    if args.command == "pilot":
        return _pilot(args)
    if args.command == "make-sample":
        return _make_sample(args)
    if args.command == "simulate":
        from panda_lab.cli import simulate

        return simulate.run(args)
    if args.command == "demo":
        from panda_lab.cli import demo

        return demo.run(args)
    if args.command == "teach":
        from panda_lab.cli import teach

        return teach.run(args)
    if args.command == "users":
        from panda_lab.cli import users

        return users.run(args)
    if args.command == "share":
        from panda_lab.cli import share

        return share.run(args)
    from panda_lab.cli import verbs

    return verbs.run(args)


def _pilot(args: argparse.Namespace) -> int:
    from panda_lab.pilot import Pilot, PilotOptions

    token = args.token or os.environ.get("PANDA_LAB_PILOT_TOKEN")
    if token is None and args.token_file:
        token = args.token_file.read_text().strip()
    if not token:
        print("panda-lab pilot: no token; pass --token, --token-file or set "
              "PANDA_LAB_PILOT_TOKEN", file=sys.stderr)
        return EXIT_USAGE
    from panda_lab.pilot import allocator

    try:
        allocator.check()
    except ValueError as exc:
        print(f"panda-lab pilot: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.shared_cores < 0 or (args.shared_cores and args.cores_dir is None):
        print("panda-lab pilot: --shared-cores takes a number of cores (0: no limit) and "
              "needs --cores-dir", file=sys.stderr)
        return EXIT_USAGE
    return Pilot(PilotOptions(server=args.server, site=args.site, token=token, slots=args.slots,
                              max_jobs=args.max_jobs, idle_exit=args.idle_exit,
                              server_lost_timeout=args.server_lost_timeout,
                              walltime=args.walltime, shared_cores=args.shared_cores,
                              cores_dir=str(args.cores_dir or ""))).run()


def _make_sample(args: argparse.Namespace) -> int:
    import time

    from panda_lab.analysis.sample import make_sample

    if args.files < 1 or args.events < 1 or args.basket_events < 1:
        print("panda-lab make-sample: --files, --events and --basket-events must be positive",
              file=sys.stderr)
        return EXIT_USAGE
    t = time.monotonic()
    paths = make_sample(args.outdir, files=args.files, events=args.events, seed=args.seed,
                        basket_events=args.basket_events)
    size = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} files, {args.files * args.events:,} events, {size / 1e6:.1f} MB "
          f"to {args.outdir} in {time.monotonic() - t:.1f} s")
    return EXIT_OK


def print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


if __name__ == "__main__":
    sys.exit(main())
