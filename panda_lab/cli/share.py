"""``panda-lab share TASK``: a read-only, expiring link to one task's monitor page, for
someone without a token (a colleague, a site administrator, a projector); also
``--list`` a task's links and ``--revoke ID|all``.

The link's URL is printed alone on stdout (``URL=$(panda-lab share 12)``), what it opens
and until when on stderr; ``--json`` prints the server's record instead.  Exit codes as
every verb's (:func:`panda_lab.cli.main.main`): 2 for a bad ``--expires`` or an unknown
task or link, 3 when no server answers.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys

from panda_lab.cli.main import EXIT_OK, EXIT_USAGE, JSON_HELP, print_json

#: The longest a link may live (the server's bound too): a year.
MAX_S = 366 * 86400
#: Seconds per unit of ``--expires``.
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def duration(text: str) -> float:
    """``--expires``'s value in seconds: a number and a unit (``90s``, ``30m``, ``12h``,
    ``7d``, ``2w``; no unit: seconds), above 0 and at most :data:`MAX_S`.  Raises
    ``argparse.ArgumentTypeError`` saying what is accepted."""
    m = _DURATION.match(text)
    seconds = float(m.group(1)) * UNITS[m.group(2) or "s"] if m else 0.0
    if not 0 < seconds <= MAX_S:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a duration above 0 and at most a year, such as 90s, 30m, 12h, 7d "
            "or 2w")
    return seconds


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``share`` command, on the main parser's subparsers."""
    p = sub.add_parser("share", help="a read-only, expiring link to one task's monitor page",
                       description="Make a link that opens one task's monitor page (and its "
                                   "JSON) read-only, without a token, until it expires or "
                                   "is revoked; it opens nothing else.")
    p.add_argument("task", help="task id or name")
    p.add_argument("--expires", type=duration, default=7 * 86400, metavar="DURATION",
                   help="how long the link opens the page: 90s, 30m, 12h, 7d (default), 2w; "
                        "at most a year")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true",
                      help="list the task's links instead (no tokens): live, expired, revoked")
    what.add_argument("--revoke", metavar="ID|all",
                      help="revoke one link (its id, as --list shows it) or all of the task's")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def run(args: argparse.Namespace) -> int:
    """Make, list or revoke links; returns the exit code.  Raises what the client raises
    (``ApiError``, ``ServerUnreachable``), which ``main`` turns into a line and a code."""
    from panda_lab.client.session import connect

    lab = connect(home=args.home, start=False)
    if args.revoke is not None:
        which = args.revoke.strip().lower()
        if which != "all" and not which.isdigit():
            print(f"panda-lab share: --revoke {args.revoke!r}: a link id or 'all'",
                  file=sys.stderr)
            return EXIT_USAGE
        ids = lab.revoke_share(args.task, None if which == "all" else int(which))
        if args.json:
            print_json({"task": args.task, "revoked": ids})
        else:
            print(f"revoked {len(ids)} link(s) of task {args.task}"
                  + (f": {', '.join(map(str, ids))}" if ids else ""))
        return EXIT_OK
    if args.list:
        rows = lab.shares(args.task)
        if args.json:
            print_json(rows)
            return EXIT_OK
        print(f"{'ID':>5} {'STATE':8} {'BY':16} {'CREATED':24} EXPIRES")
        for r in rows:
            print(f"{r['id']:>5} {r['state']:8} {r['created_by']:16} "
                  f"{_when(r['created_at']):24} {_when(r['expires_at'])}")
        return EXIT_OK
    link = lab.share(args.task, args.expires)
    if args.json:
        print_json(link)
        return EXIT_OK
    print(link["url"])
    print(f"opens task {link['task']}'s monitor page, read-only, until "
          f"{_when(link['expires_at'])} (link {link['id']}; revoke: "
          f"panda-lab share {link['task']} --revoke {link['id']})", file=sys.stderr)
    return EXIT_OK
