"""``panda-lab server run|start|stop|status``."""

from __future__ import annotations

import argparse
import os
import time

from panda_lab import runtime
from panda_lab.cli.main import EXIT_FAIL, EXIT_NO_SERVER, EXIT_OK, print_json


def config_from_args(args: argparse.Namespace):
    from panda_lab.pilot import allocator
    from panda_lab.provisioners.config import ConfigError, default_sites, load_sites, local_plan
    from panda_lab.provisioners.links import load_links
    from panda_lab.server.config import ServerConfig

    if args.task_lease <= 0:
        raise ConfigError(f"--task-lease {args.task_lease:g} must be more than 0 seconds")
    try:  # read by the local pilots' workers: refused here, where the user sees it
        allocator.check()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    # The embedded default is sized to the container (panda_lab/resources.py); a site
    # file says its own sizes.
    plan = None if args.sites else local_plan()
    sites = load_sites(args.sites) if args.sites else default_sites(plan=plan)
    return ServerConfig(
        home=runtime.home(args.home), db_url=args.db, host=args.host, port=args.port,
        sites=sites, links=load_links(args.sites, sites) if args.sites else [],
        network=args.network, stall_after=args.stall_after, broker_seed=args.broker_seed,
        max_events_per_job=plan.max_events_per_job if plan else None,
        merge_memory=_merge_memory(args, plan),
        heartbeat_timeout=args.heartbeat_timeout, heartbeat_interval=args.heartbeat_interval,
        task_lease=args.task_lease, watchdog_interval=args.watchdog_interval,
        provision=not args.no_pilots, scrape_token=_scrape_token(args),
        **_hub(args))


def _merge_memory(args: argparse.Namespace, plan) -> int:
    """The merged results' budget in bytes: ``--merge-memory``, else
    ``$PANDA_LAB_MERGE_MEMORY``, else the embedded plan's share, else the share of what
    this process may use.  A bad value is a ``ConfigError`` naming the option."""
    from panda_lab.provisioners.config import ConfigError
    from panda_lab.resources import ResourceError, merge_memory, parse_size

    if getattr(args, "merge_memory", None):
        try:
            return parse_size(args.merge_memory)
        except ValueError as exc:
            raise ConfigError(f"--merge-memory: {exc}") from None
    if plan is not None and plan.merge_mb and not os.environ.get("PANDA_LAB_MERGE_MEMORY"):
        return plan.merge_mb * 2**20
    try:
        return merge_memory()[0]
    except ResourceError as exc:
        raise ConfigError(str(exc)) from None


def _hub(args: argparse.Namespace) -> dict:
    """The hub's API URL and the service's token, from the environment JupyterHub gives a
    service, with ``--jupyterhub``; nothing without it."""
    from panda_lab.provisioners.config import ConfigError

    if not getattr(args, "jupyterhub", False):
        return {}
    url, token = os.environ.get("JUPYTERHUB_API_URL"), os.environ.get("JUPYTERHUB_API_TOKEN")
    if not url or not token:
        raise ConfigError("--jupyterhub needs $JUPYTERHUB_API_URL and $JUPYTERHUB_API_TOKEN "
                          "(JupyterHub sets them for a service it runs)")
    return {"hub_api_url": url, "hub_api_token": token}


def _scrape_token(args: argparse.Namespace) -> str | None:
    """The scrape token from ``--scrape-token-file`` or ``$PANDA_LAB_SCRAPE_TOKEN``
    (never a command-line value: those show in ``ps``)."""
    from panda_lab.provisioners.config import ConfigError

    path = getattr(args, "scrape_token_file", None)
    if path is not None:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--scrape-token-file {path}: {exc.strerror}") from None
        if not token:
            raise ConfigError(f"--scrape-token-file {path} is empty")
        return token
    return os.environ.get("PANDA_LAB_SCRAPE_TOKEN") or None


def _forward(args: argparse.Namespace) -> list[str]:
    out = ["--host", args.host, "--port", str(args.port),
           "--heartbeat-timeout", str(args.heartbeat_timeout),
           "--task-lease", str(args.task_lease),
           "--heartbeat-interval", str(args.heartbeat_interval),
           "--watchdog-interval", str(args.watchdog_interval),
           "--network", args.network, "--stall-after", str(args.stall_after)]
    if args.db:
        out += ["--db", args.db]
    if args.sites:
        out += ["--sites", str(args.sites.resolve())]
    if args.no_pilots:
        out.append("--no-pilots")
    if getattr(args, "merge_memory", None):
        out += ["--merge-memory", args.merge_memory]
    if getattr(args, "jupyterhub", False):
        out.append("--jupyterhub")
    if getattr(args, "scrape_token_file", None) is not None:
        out += ["--scrape-token-file", str(args.scrape_token_file.resolve())]
    if args.broker_seed is not None:
        out += ["--broker-seed", str(args.broker_seed)]
    return out


def run(args: argparse.Namespace) -> int:
    from panda_lab.server.main import run_server, server_alive, start_detached, stop_detached

    home = runtime.home(args.home)
    if args.action == "run":
        run_server(config_from_args(args))
        return EXIT_OK
    if args.action == "start":
        config_from_args(args)  # validate here, where the user sees the error
        t = time.monotonic()
        info = start_detached(home, _forward(args))
        print(f"panda-lab server running at {info['url']} (pid {info['pid']}, "
              f"{time.monotonic() - t:.1f} s); connection file {runtime.connection_path(home)}")
        return EXIT_OK
    if args.action == "stop":
        if stop_detached(home):
            print("panda-lab server stopped")
            return EXIT_OK
        print("no panda-lab server was running")
        return EXIT_OK
    info = runtime.read_connection(home)
    alive = server_alive(info)
    status = {"running": alive, "home": str(home)}
    if info and alive:
        status.update(url=info["url"], pid=info["pid"], database=info.get("database"),
                      monitor=f"{info['url'].rstrip('/')}/monitor/",
                      connection_file=str(runtime.connection_path(home)))
    if getattr(args, "json", False):
        print_json(status)
    elif alive:
        print(f"running at {status['url']} (pid {status['pid']}), database {status['database']}")
        print(f"web monitor at {status['monitor']} (log in with the user_token of "
              f"{status['connection_file']})")
    else:
        print(f"not running (home {home})")
    return EXIT_OK if alive else (EXIT_NO_SERVER if info is None else EXIT_FAIL)
