"""Command line: ``python -m polyplug_isolated demo``."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="polyplug-isolated", description="polyplug bundles in isolated workers"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="load a fixture, call it, crash one and survive, reload, report")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        logging.basicConfig(format="  [log] %(name)s: %(message)s", level=logging.WARNING)
        return run_demo()
    return 2


if __name__ == "__main__":
    sys.exit(main())
