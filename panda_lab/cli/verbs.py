"""pbook's verbs on the command line: ``tasks``, ``jobs``, ``job``, ``output``, ``kill``,
``retry``, ``sites``, ``links``; each also as JSON (``--json``), the server's records as it
sends them.

A task's state is shown as its one outcome label (:mod:`panda_lab.model.outcome`), the
label the panel, the widgets and the reprs show, coloured by its tone on a terminal.
What jobs said (error messages, tracebacks, output) is shown as plain text: never read as
rich markup (a message holding ``[/]`` would fail the whole table) nor as terminal
control codes.
"""

from __future__ import annotations

import argparse
import sys
import time

from rich.console import Console
from rich.table import Table
from rich.text import Text

from panda_lab.cli.main import EXIT_OK, print_json
from panda_lab.client.session import Lab, connect
from panda_lab.model import JOB_FINAL, TASK_FINAL
from panda_lab.model.outcome import duration, final_line, summary_of
from panda_lab.model.usage import job_usage, megabytes, pilot_usage
from panda_lab.text import strip_ansi

#: The terminal style of each outcome tone (rich's colour names).
TONE_STYLES: dict[str, str] = {"success": "green", "warning": "dark_orange", "danger": "red",
                               "active": "blue", "neutral": "bright_black"}


class _Console(Console):
    """rich's console, but a closed pipe ends the command as every other output's does
    (:func:`panda_lab.cli.main.main`: quietly, exit code 0), not with rich's exit 1."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


def _age(t: float | None) -> str:
    if not t:
        return "-"
    s = time.time() - t
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h"


def _when(t: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else "-"


def _why(task: dict) -> str:
    """What a task's state owes to: its message (how it ended, or why it was closed), or
    for a task its client holds open, until when the client's lease runs."""
    if task.get("open") and task.get("lease_until"):
        return f"open: client lease to {_when(task['lease_until'])}"
    return task.get("message") or ""


def outcome_text(task: dict) -> Text:
    """A task's outcome label, styled by its tone."""
    summary = summary_of(task)
    return Text(summary["label"], style=TONE_STYLES.get(summary["tone"], ""))


def _tasks(lab: Lab, args: argparse.Namespace, console: Console) -> int:
    tasks = lab.list_tasks(args.limit, args.state)
    if args.json:
        print_json(tasks)
        return EXIT_OK
    if not tasks:
        print("no tasks" + (f" in state {args.state}" if args.state else ""))
        return EXIT_OK
    table = Table("id", "name", "outcome", "done", "failed", "events", "duration", "age",
                  "why", title="tasks")
    for t in tasks:
        s = summary_of(t)
        total = t["options"].get("total_events")
        table.add_row(str(t["id"]), Text(t["name"]), outcome_text(t),
                      f"{t['n_done']}/{t['n_jobs']}", str(s["jobs_lost"] or "-"),
                      f"{total:,}" if total is not None else "-",
                      duration(s["wall_s"]) if s["wall_s"] is not None else "-",
                      _age(t["created_at"]), Text(_why(t)))
    console.print(table)
    return EXIT_OK


def _jobs(lab: Lab, args: argparse.Namespace, console: Console) -> int:
    jobs = lab.api.get(f"/api/tasks/{args.task}/jobs",
                       all_attempts="true" if args.all else "false", state=args.state)
    if args.limit:
        jobs = jobs[: args.limit]
    if args.json:
        print_json(jobs)
        return EXIT_OK
    if not jobs:
        print(f"no jobs of task {args.task}" + (f" in state {args.state}" if args.state else ""))
        return EXIT_OK
    table = Table("job", "index", "attempt", "state", "site", "pilot", "duration", "memory",
                  "CPU", "error", title=f"jobs of task {args.task}")
    for j in jobs:
        took = (duration(j["ended_at"] - j["started_at"])
                if j.get("ended_at") and j.get("started_at") else "-")
        error = strip_ansi(j["error_message"] or "")[:60]
        if j.get("error_category"):
            error = f"[{j['error_category']}] {error}"
        # what the payload used (peak memory, CPU seconds): "-" when not measured
        mem = megabytes(j["peak_rss_mb"]) if j.get("peak_rss_mb") is not None else "-"
        cpu = f"{j['cpu_s']:.1f} s" if j.get("cpu_s") is not None else "-"
        table.add_row(str(j["id"]), str(j["job_index"]), str(j["attempt"]), j["state"],
                      j["site"] or "-", str(j["pilot_id"] or "-"), took, mem, cpu,
                      Text(error))
    console.print(table)
    print("(more with `panda-lab job ID`: attempts, brokerage, traceback, output)")
    return EXIT_OK


def _job(lab: Lab, args: argparse.Namespace, console: Console) -> int:
    job = lab.api.get(f"/api/jobs/{args.job}")
    if args.json:
        print_json(job)
        return EXIT_OK
    out = console.print
    took = (f", ran {duration(job['ended_at'] - job['started_at'])}"
            if job.get("ended_at") and job.get("started_at") else "")
    out(Text(f"job {job['id']}: task {job['task_id']}, index {job['job_index']}, attempt "
             f"{job['attempt']} of at most {job['max_attempts']}: {job['state']}"
             f" at {job['site'] or '-'} (pilot {job['pilot_id'] or '-'}){took}", style="bold"))
    if job["state"] in JOB_FINAL or job.get("peak_rss_mb") is not None:
        out(Text(f"used: {job_usage(job)}"
                 + (f" (requested {job['memory_mb']} MB)" if job.get("memory_mb") else "")))
    if job.get("pilot_id"):
        pilot = next(iter(lab.api.get("/api/pilots", ids=str(job["pilot_id"]))), None)
        if pilot is not None:
            out(Text(f"pilot {pilot['id']} ({pilot['state']}) with its workers: "
                     f"{pilot_usage(pilot)}"))
    others = [a for a in job.get("attempts", []) if a != job["id"]]
    if others:
        out(Text(f"other attempts of this job: {', '.join(map(str, others))}"))
    b = job.get("broker_info") or {}
    if b:
        out(Text("brokerage:", style="bold"))
        out(Text(f"  sent to {b.get('picked', '-')}"
                 + (f" among {', '.join(b['sites'])}" if b.get("sites") else "")))
        for site, w in sorted((b.get("weights") or {}).items(), key=lambda x: -x[1]):
            out(Text(f"  weight {w:g}  {site}"))
        for site, why in (b.get("rejected") or {}).items():
            out(Text(f"  not {site}: {why}"))
        if b.get("note"):
            out(Text(f"  {b['note']}"))
        moved = b.get("moved")
        if isinstance(moved, dict) and moved.get("why"):  # store/rows/jobs.py, dispatch
            out(Text(f"  then {moved['why']}"))
    out(Text("history:", style="bold"))
    for h in job.get("history", []):
        out(Text(f"  {_when(h['time'])}  {h['state']}" + (f"  {h['info']}" if h["info"] else "")))
    if job.get("error_message"):
        out(Text(f"error [{job.get('error_category') or 'system'}]:", style="bold red"))
        out(Text("  " + strip_ansi(job["error_message"])))
    if job.get("error_traceback"):
        out(Text("traceback:", style="bold"))
        out(Text(strip_ansi(job["error_traceback"]).rstrip()))
    for stream in ("stdout", "stderr"):
        tail = job.get(f"{stream}_tail")
        if tail:
            out(Text(f"{stream} (tail; all of it: panda-lab output {job['id']}"
                     + (" --stderr" if stream == "stderr" else "") + "):", style="bold"))
            out(Text(strip_ansi(tail).rstrip()))
    return EXIT_OK


def _output(lab: Lab, args: argparse.Namespace) -> int:
    stream = "stderr" if args.stderr else "stdout"
    text = lab.job_output(args.job, stream)
    if args.json:
        print_json({"job": args.job, "stream": stream, "text": text})
        return EXIT_OK
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8"))  # as kept, whatever the locale
    sys.stdout.buffer.flush()
    return EXIT_OK


def _sites(lab: Lab, args: argparse.Namespace, console: Console) -> int:
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


def _links(lab: Lab, args: argparse.Namespace, console: Console) -> int:
    links = lab.api.get("/api/links")
    if args.json:
        print_json(links)
        return EXIT_OK
    if not links:
        print("no links: none declared in sites.toml, none measured yet")
        return EXIT_OK
    table = Table("endpoint", "site", "MB/s", "latency ms", "source", "observations",
                  "age", "declared MB/s", title="links")
    for x in links:
        table.add_row(Text(x["endpoint"]), x["site"], f"{x['mbps']:.3g}",
                      f"{x['latency_ms']:.3g}", x["source"], str(x["observations"]),
                      _age(time.time() - x["age_s"]) if x["age_s"] is not None else "-",
                      "-" if x["declared_mbps"] is None else f"{x['declared_mbps']:g}")
    console.print(table)
    return EXIT_OK


def _act(lab: Lab, args: argparse.Namespace) -> int:
    reply = lab.kill(args.task) if args.command == "kill" else lab.retry(args.task)
    if args.json:
        print_json(reply)
    elif args.command == "kill":
        print(f"task {reply['task']} killed: {len(reply['cancelled'])} job(s) cancelled")
    else:
        print(f"task {reply['task']} retried: {len(reply['jobs'])} new attempt(s)")
    return EXIT_OK


def _task(lab: Lab, args: argparse.Namespace, console: Console) -> int:
    task = lab.task_info(args.task)
    if args.json:
        print_json(task)
        return EXIT_OK
    s = summary_of(task)
    console.print(Text(f"task {task['id']} {task['name']!r}: ") + outcome_text(task))
    if task["state"] in TASK_FINAL:  # a summary, never a rate
        look = f"panda-lab jobs {task['id']} --state failed"
        print(f"  {final_line(s, look)}")
    else:
        print(f"  {task['n_done']} of {task['n_jobs']} jobs done")
    if task.get("message"):
        print(f"  {task['message']}")
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Run one of the verbs of this module (``args.command``) against the server of
    ``args.home``; returns the exit code.  Raises what the client raises (``ApiError``,
    ``ServerUnreachable``), which :func:`panda_lab.cli.main.main` turns into a line and
    an exit code."""
    lab = connect(home=args.home, start=False)
    # Into a pipe or a file (``| grep``, ``| head``) a row is one line: not wrapped to 80.
    console = _Console() if sys.stdout.isatty() else _Console(width=200)
    if args.command == "tasks":
        return _tasks(lab, args, console)
    if args.command == "task":
        return _task(lab, args, console)
    if args.command == "jobs":
        return _jobs(lab, args, console)
    if args.command == "job":
        return _job(lab, args, console)
    if args.command == "output":
        return _output(lab, args)
    if args.command in ("kill", "retry"):
        return _act(lab, args)
    if args.command == "sites":
        return _sites(lab, args, console)
    if args.command == "links":
        return _links(lab, args, console)
    raise ValueError(f"unknown command {args.command!r}")
