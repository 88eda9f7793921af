"""``panda-lab users add|add-pilot|list|revoke``: identities of a shared server.

They work on the server's database directly, as ``panda-lab server`` does (the same
``--home`` and ``--db``), so an admin needs no token to issue the first ones; a running
server sees a new or revoked token on its next request.  A token is printed once, when it
is made: the database keeps only its hash (:mod:`panda_lab.store.rows.users`).
"""

from __future__ import annotations

import argparse
import datetime
import sys

from panda_lab import runtime
from panda_lab.cli.main import EXIT_OK, EXIT_USAGE, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``users`` command and its actions, on the main parser's subparsers."""
    u = sub.add_parser("users", help="per-user and per-site tokens of a shared server")
    usub = u.add_subparsers(dest="action", metavar="ACTION", required=True)

    def db(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--db", help="the server's database URL (default: SQLite in the home "
                                    "directory)")
        return p

    add = db(usub.add_parser("add", help="issue a token to a new user (printed once)"))
    add.add_argument("name", help="the user's name: owner of what they submit")
    role = add.add_mutually_exclusive_group()
    role.add_argument("--admin", action="store_true", help="sees and acts on everyone's work")
    role.add_argument("--read-only", action="store_true",
                      help="sees everyone's work, acts on nothing (monitors)")
    pil = db(usub.add_parser("add-pilot", help="issue a pilot token for one site only"))
    pil.add_argument("site", help="the site its pilots serve (the identity is pilot@SITE)")
    ls = db(usub.add_parser("list", help="the identities, revoked ones too (no tokens)"))
    ls.add_argument("--json", action="store_true", help="as JSON, one object per identity")
    rv = db(usub.add_parser("revoke", help="revoke a token: refused from the next request"))
    rv.add_argument("name", help="the identity to revoke (as `users list` shows it)")


def run(args: argparse.Namespace) -> int:
    """Run one ``users`` action; returns the exit code (2 for a taken or unknown name)."""
    from panda_lab.server import users
    from panda_lab.server.config import ServerConfig

    config = ServerConfig(home=runtime.home(args.home), db_url=args.db)
    try:
        if args.action in ("add", "add-pilot"):
            if args.action == "add":
                name, role, site = args.name, ("admin" if args.admin else "read-only"
                                               if args.read_only else "user"), None
            else:
                name, role, site = f"pilot@{args.site}", "pilot", args.site
            if not name or not name.isprintable() or len(name) > 128:
                print(f"panda-lab users: name {name!r}: 1 to 128 printable characters",
                      file=sys.stderr)
                return EXIT_USAGE
            token = users.add_user(config, name, role, site)
            print(f"{role} {name!r} added; its token, shown only now:", file=sys.stderr)
            print(token)
            return EXIT_OK
        if args.action == "list":
            rows = [{"name": r.name, "role": r.role, "site": r.site, "created_at": r.created_at,
                     "revoked_at": r.revoked_at} for r in users.list_users(config)]
            if args.json:
                print_json(rows)
                return EXIT_OK
            print(f"{'NAME':24} {'ROLE':10} {'SITE':12} {'CREATED':20} REVOKED")
            for r in rows:
                print(f"{r['name']:24} {r['role']:10} {r['site'] or '-':12} "
                      f"{_when(r['created_at']):20} {_when(r['revoked_at'])}")
            return EXIT_OK
        users.revoke_user(config, args.name)
        print(f"{args.name!r} revoked")
        return EXIT_OK
    except (users.UserExists, users.UnknownUser, ValueError) as exc:
        print(f"panda-lab users: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
