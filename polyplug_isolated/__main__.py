"""Command line: ``polyplug-isolated demo`` and ``polyplug-isolated bench [...]``."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="polyplug-isolated", description="polyplug bundles in isolated workers"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="load a fixture, call it, crash one and survive, reload, report")
    commands.add_parser(
        "bench", help="run the benchmark (python -m bench in the source tree); options follow"
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        # bench/ is part of the source tree, not of the installed package.
        root = Path(__file__).resolve().parent.parent
        if not (root / "bench" / "__main__.py").is_file():
            print("polyplug-isolated bench: needs the source tree (bench/ beside polyplug_isolated/)")
            return 2
        return subprocess.call([sys.executable, "-m", "bench", *rest], cwd=root)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "demo":
        from ._demo import run_demo

        logging.basicConfig(format="  [log] %(name)s: %(message)s", level=logging.WARNING)
        return run_demo()
    return 2


if __name__ == "__main__":
    sys.exit(main())
