"""`python -m fledge.stack up|status|down [--home PATH] [--serve MODEL...] [--purge]`: the team stack without the
`fledge` CLI (which wires the same three functions as `fledge stack ...`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fledge.core.home import FledgeHome
from fledge.stack.errors import StackError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fledge.stack", description=__doc__)
    parser.add_argument("command", choices=["up", "status", "down"])
    parser.add_argument("--home", type=Path, help="FLEDGE_HOME (default: $FLEDGE_HOME, else ./.fledge)")
    parser.add_argument("--purge", action="store_true", help="with down: remove the stack's data too")
    parser.add_argument("--serve", nargs="+", metavar="MODEL",
                        help="with up: the plane serves these models' champions (remembered for later `up`s)")
    parser.add_argument("--plane-policy", type=Path, help="with up --serve: the policy YAML of the plane's serving settings")
    args = parser.parse_args(argv)
    home = FledgeHome(args.home.expanduser().resolve()) if args.home else FledgeHome.from_env()

    from fledge.stack import down, status, up

    try:
        if args.command == "up":
            up(home, serve=args.serve, plane_policy=args.plane_policy)
        elif args.command == "status":
            return 0 if all(row.healthy for row in status(home)) else 1
        else:
            down(home, purge=args.purge)
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
