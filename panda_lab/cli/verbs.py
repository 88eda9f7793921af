"""pbook's verbs on the command line: ``tasks``, ``jobs``, ``output``, ``kill``, ``retry``,
``sites``, ``links``.

What jobs said (error messages, output) is shown as plain text: never read as rich markup
(a message holding ``[/]`` would fail the whole table) nor as terminal control codes.
"""

from __future__ import annotations

import argparse
import sys
import time

from rich.console import Console
from rich.table import Table
from rich.text import Text

from panda_lab.cli.main import EXIT_OK, print_json
from panda_lab.client.session import connect
from panda_lab.text import strip_ansi


def _age(t: float | None) -> str:
    if not t:
        return "-"
    s = time.time() - t
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h"


def _why(task: dict) -> str:
    """What a task's state owes to: its message (how it ended, or why it was closed), or
    for a task its client holds open, until when the client's lease runs."""
    if task.get("open") and task.get("lease_until"):
        until = time.strftime("%H:%M:%S", time.localtime(task["lease_until"]))
        return f"open: client lease to {until}"
    return task.get("message") or ""


def run(args: argparse.Namespace) -> int:
    lab = connect(home=args.home, start=False)
    console = Console()
    if args.command == "tasks":
        tasks = lab.list_tasks(args.limit, args.state)
        if args.json:
            print_json(tasks)
            return EXIT_OK
        table = Table("id", "name", "state", "done", "jobs", "sites", "age", "why",
                      title="tasks")
        for t in tasks:
            table.add_row(str(t["id"]), Text(t["name"]), t["state"], str(t["n_done"]),
                          str(t["n_jobs"]), t["site"], _age(t["created_at"]), Text(_why(t)))
        console.print(table)
    elif args.command == "jobs":
        jobs = lab.jobs(args.task, all_attempts=args.all)
        if args.json:
            print_json(jobs)
            return EXIT_OK
        table = Table("job", "index", "attempt", "state", "site", "pilot", "error",
                      title=f"jobs of task {args.task}")
        for j in jobs:
            table.add_row(str(j["id"]), str(j["job_index"]), str(j["attempt"]), j["state"],
                          j["site"] or "-", str(j["pilot_id"] or "-"),
                          Text(strip_ansi(j["error_message"] or "")[:60]))
        console.print(table)
    elif args.command == "output":
        text = lab.job_output(args.job, "stderr" if args.stderr else "stdout")
        sys.stdout.flush()
        sys.stdout.buffer.write(text.encode("utf-8"))  # as kept, whatever the locale
        sys.stdout.buffer.flush()
    elif args.command in ("kill", "retry"):
        reply = lab.kill(args.task) if args.command == "kill" else lab.retry(args.task)
        if args.json:
            print_json(reply)
        elif args.command == "kill":
            print(f"task {reply['task']} killed: {len(reply['cancelled'])} job(s) cancelled")
        else:
            print(f"task {reply['task']} retried: {len(reply['jobs'])} new attempt(s)")
    elif args.command == "links":
        links = lab.api.get("/api/links")
        if args.json:
            print_json(links)
            return EXIT_OK
        table = Table("endpoint", "site", "MB/s", "latency ms", "source", "observations",
                      "age", "declared MB/s", title="links")
        for x in links:
            table.add_row(Text(x["endpoint"]), x["site"], f"{x['mbps']:.3g}",
                          f"{x['latency_ms']:.3g}", x["source"], str(x["observations"]),
                          _age(time.time() - x["age_s"]) if x["age_s"] is not None else "-",
                          "-" if x["declared_mbps"] is None else f"{x['declared_mbps']:g}")
        console.print(table)
    elif args.command == "sites":
        sites = lab.sites()
        if args.json:
            print_json(sites)
            return EXIT_OK
        table = Table("site", "kind", "provisioner", "state", "pilots", "queued", "running",
                      "description", title="sites")
        for s in sites:
            table.add_row(s["name"], s["kind"], s["provisioner"], s["state"], str(s["pilots"]),
                          str(s["queued"]), str(s["running"]), s["description"])
        console.print(table)
    return EXIT_OK
