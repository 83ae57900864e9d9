"""``polyplug-isolated``: check, inspect and call a bundle; the demo; the benchmark.

Exit status, for scripts: 0 success; 1 the bundle has problems (check) or the
call failed; 2 bad usage; 130 interrupted (Ctrl-C); 141 stdout closed early
(``| head``), as for a tool killed by SIGPIPE. Output uses ``rich`` when it is
installed (``pip install 'polyplug_isolated[cli]'``), plain text otherwise.
"""

from __future__ import annotations

import argparse
import enum
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import __version__

OK, PROBLEMS, USAGE, INTERRUPTED, BROKEN_PIPE = 0, 1, 2, 130, 141


class Output:
    """Lines and tables, through rich when it is installed (and wanted), else plain text."""

    def __init__(self, plain: bool = False) -> None:
        self.console: Any = None
        if not plain:
            try:
                from rich.console import Console
            except ImportError:
                pass
            else:
                self.console = Console(highlight=False, soft_wrap=True)
                self.console.on_broken_pipe = _broken_pipe  # rich would exit 1; main() says 141

    def line(self, text: str = "", style: str = "") -> None:
        if self.console is None:
            print(text, flush=True)
        else:
            from rich.markup import escape

            self.console.print(f"[{style}]{escape(text)}[/]" if style else escape(text))

    def status(self, ok: bool | None, text: str) -> None:
        """One check's outcome: ok, problem (False) or warning (None)."""
        mark, style = {True: ("ok  ", "green"), False: ("FAIL", "bold red"), None: ("warn", "yellow")}[ok]
        self.line(f"{mark} {text}", style)

    def table(self, title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        if self.console is not None:
            from rich.table import Table

            table = Table(title=title, title_justify="left")
            for name in header:
                table.add_column(name)
            for row in rows:
                table.add_row(*row)
            self.console.print(table)
            return
        widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
        self.line(title)
        for row in (header, *rows):
            self.line("  " + "  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=True)).rstrip())


def _broken_pipe() -> None:
    raise BrokenPipeError


# ---- commands ------------------------------------------------------------------------


def check(bundle: Path, out: Output) -> int:
    """Validates manifest.toml and api.toml, dry-loads the bundle and cross-checks them."""
    from ._idl import parse_api
    from ._manifest import KNOWN_KEYS, did_you_mean, parse_manifest, read_toml, unknown_keys
    from ._runtime import Runtime
    from .errors import PolyplugIsolatedError

    logging.getLogger("polyplug_isolated").setLevel(logging.CRITICAL)  # check reports, it does not log
    problems = 0
    manifest = api = None
    directory = bundle if bundle.is_dir() else bundle.parent
    try:
        manifest = parse_manifest(bundle)
    except PolyplugIsolatedError as exc:
        out.status(False, f"manifest.toml: {exc}")
        problems += 1
    else:
        provides = ", ".join(manifest.provides) or "nothing declared"
        out.status(
            True, f"manifest.toml: {manifest.name} {manifest.version or '(no version)'}, provides {provides}"
        )
        for key in unknown_keys(read_toml(directory / "manifest.toml")):
            out.status(None, f"manifest.toml: unknown key {key!r} is ignored{did_you_mean(key, KNOWN_KEYS)}")
    if (directory / "api.toml").is_file():
        try:
            api = parse_api(directory / "api.toml")
        except PolyplugIsolatedError as exc:
            out.status(False, f"api.toml: {exc}")
            problems += 1
        else:
            names = ", ".join(f"{c.name}@{c.major}" for c in api.guest_contracts) or "no guest contract"
            out.status(True, f"api.toml: declares {names}")
    else:
        out.status(None, "api.toml: none (typed calls and `inspect` signatures need one)")
    if manifest is None:
        return PROBLEMS
    with Runtime(load_timeout=10.0, drain_timeout=5.0) as rt:
        try:
            loaded = rt.load_bundle(bundle)
        except PolyplugIsolatedError as exc:
            out.status(False, f"load in a worker: {exc}")
            return PROBLEMS
        registered = {c.name.split("@", 1)[0]: c for c in loaded.contracts}
        out.status(True, f"load in a worker: registered {', '.join(registered) or 'no contract'}")
        for entry in manifest.provides:
            if entry.split("@", 1)[0] not in registered:
                out.status(
                    False, f"manifest.toml provides {entry!r}, but the library registered no such contract"
                )
                problems += 1
        for contract in api.guest_contracts if api is not None else ():
            info = registered.get(contract.name)
            if info is None or info.version[0] != contract.major:
                out.status(
                    False,
                    f"api.toml declares {contract.name}@{contract.major}; the library did not register it",
                )
                problems += 1
            elif info.function_count != len(contract.functions):
                out.status(
                    False,
                    f"{contract.name}: api.toml declares {len(contract.functions)} functions, "
                    f"the library registered {info.function_count}",
                )
                problems += 1
    out.line(f"{bundle}: {'no problems' if not problems else f'{problems} problem(s)'}", "bold")
    return PROBLEMS if problems else OK


def inspect_bundle(bundle: Path, out: Output) -> int:
    """Loads the bundle and lists its contracts and their functions, typed from api.toml."""
    from ._idl import parse_api
    from ._runtime import Runtime

    with Runtime(load_timeout=10.0) as rt:
        loaded = rt.load_bundle(bundle)
        out.line(
            f"bundle {loaded.name} {loaded.version or '(no version)'}  id 0x{loaded.id:016X}  {loaded.path}"
        )
        api_file = loaded.path / "api.toml"
        declared = {c.name: c for c in parse_api(api_file).guest_contracts} if api_file.is_file() else {}
        for info in loaded.contracts:
            name = info.name.split("@", 1)[0]
            version = ".".join(map(str, info.version))
            title = f"{name}@{version}  id 0x{info.contract_id:016X}  plugin {info.plugin_name}"
            if name in declared:
                typed = loaded.contract(name, min_version=0)
                rows = [
                    [str(f.index), f"{f.name}{_idl_signature(f)}", _signature(typed.functions[f.name])]
                    for f in declared[name].functions
                ]
            else:
                rows = [[str(i), "(not in api.toml: raw calls only)", ""] for i in range(info.function_count)]
            out.table(title, ["#", "api.toml", "Python"], rows)
    return OK


def call(bundle: Path, target: str, raw_args: list[str], timeout: float | None, out: Output) -> int:
    """Calls CONTRACT.FUNCTION with arguments parsed by its api.toml signature; prints the result."""
    from ._runtime import Runtime

    contract_name, dot, function = target.rpartition(".")
    if not dot or not contract_name:
        raise _Usage(f"name the function as CONTRACT.FUNCTION, e.g. test.add.add_primitive, not {target!r}")
    with Runtime(load_timeout=10.0, call_timeout=timeout) as rt:
        typed = rt.load_bundle(bundle).contract(contract_name, min_version=0)
        method = typed.functions.get(function)
        if method is None:
            known = ", ".join(typed.functions)
            raise _Usage(f"{contract_name} has no function {function!r} (it has: {known})")
        parameters = list(inspect.signature(method).parameters.values())
        if len(raw_args) != len(parameters):
            raise _Usage(
                f"{target}{_signature(method)} takes {len(parameters)} argument(s), not {len(raw_args)}"
            )
        values = [_parse(text, p.annotation) for text, p in zip(raw_args, parameters, strict=True)]
        out.line(_show(method(*values)))
    return OK


class _Usage(Exception):
    """A mistake on the command line: exit status 2."""


def _idl_signature(function: Any) -> str:
    params = ", ".join(f"{p.name}: {p.type.name}" for p in function.params)
    return f"({params}) -> {function.returns.name if function.returns is not None else 'void'}"


def _signature(method: Callable[..., Any]) -> str:
    signature = inspect.signature(method)

    def name(annotation: Any) -> str:
        return getattr(annotation, "__name__", str(annotation))

    params = ", ".join(f"{p.name}: {name(p.annotation)}" for p in signature.parameters.values())
    returns = signature.return_annotation
    return f"({params}) -> {'None' if returns is None else name(returns)}"


def _parse(text: str, annotation: Any) -> Any:
    """A command-line argument as the parameter's Python type (JSON for structs, a name for enums)."""
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        if text in annotation.__members__:
            return annotation[text]
        return annotation(int(text, 0))
    if annotation is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise _Usage(f"{text!r} is not a bool: use true or false")
        return text.lower() in ("true", "1")
    if annotation is int:
        return int(text, 0)
    if annotation is float:
        return float(text)
    if annotation is bytes:
        return os.fsencode(text)
    if annotation is str:
        return text
    return json.loads(text)  # a struct: a JSON object with its fields


def _show(value: Any) -> str:
    """A result as a script wants it: text and numbers as they are, anything else as its repr."""
    if isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, enum.Enum)):
        return str(value)
    return "" if value is None else repr(value)


# ---- the parser ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polyplug-isolated",
        description="polyplug bundles in isolated worker processes: check, inspect and call a bundle, "
        "run the demo or the benchmark.",
        epilog="exit status: 0 ok, 1 problems found or the call failed, 2 usage, 130 Ctrl-C, "
        "141 output closed early",
    )
    parser.add_argument("--version", action="version", version=f"polyplug-isolated {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--plain",
        action="store_true",
        default=argparse.SUPPRESS,
        help="plain text even when rich is installed",
    )
    parser.add_argument("--plain", action="store_true", help="plain text even when rich is installed")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    one = commands.add_parser(
        "check", parents=[common], help="validate manifest.toml and api.toml, dry-load in a worker"
    )
    one.add_argument("bundle", type=Path, help="the bundle directory")
    one = commands.add_parser(
        "inspect", parents=[common], help="list contracts and functions with their typed signatures"
    )
    one.add_argument("bundle", type=Path, help="the bundle directory")
    one = commands.add_parser(
        "call",
        parents=[common],
        help="call CONTRACT.FUNCTION with arguments typed by api.toml",
        description="Arguments are parsed by the function's api.toml signature: integers (0x... too), "
        "floats, true/false, text for StringView and Buffer, an enum member's name, JSON for a struct.",
    )
    one.add_argument("bundle", type=Path, help="the bundle directory")
    one.add_argument("function", metavar="CONTRACT.FUNCTION", help="e.g. test.add.add_primitive")
    one.add_argument("args", nargs="*", metavar="ARG")
    one.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    commands.add_parser(
        "demo", parents=[common], help="load a fixture, call it, crash one and survive, reload, report"
    )
    commands.add_parser("bench", help="run the benchmark; `bench --help` lists its options", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with _quiet_exits() as status:
        status.append(_dispatch(argv))
    return status[-1]


def _dispatch(argv: list[str]) -> int:
    if argv[:1] == ["bench"]:
        from .bench.__main__ import main as bench_main  # its own options and --help

        status: int = bench_main(argv[1:])
        return status
    parser = _parser()
    args = parser.parse_args(argv)
    out = Output(plain=args.plain)
    try:
        if args.command == "demo":
            from ._demo import run_demo

            logging.basicConfig(format="  [log] %(name)s: %(message)s", level=logging.WARNING)
            return run_demo(out.line)
        if args.command == "check":
            return check(args.bundle, out)
        logging.basicConfig(format="[log] %(name)s: %(message)s", level=logging.ERROR)
        if args.command == "inspect":
            return inspect_bundle(args.bundle, out)
        return call(args.bundle, args.function, args.args, args.timeout, out)
    except _Usage as exc:
        parser.exit(USAGE, f"polyplug-isolated {args.command}: {exc}\n")
    except (ValueError, TypeError, LookupError, json.JSONDecodeError) as exc:
        parser.exit(USAGE, f"polyplug-isolated {args.command}: {exc}\n")
    except Exception as exc:
        from .errors import PolyplugIsolatedError

        if not isinstance(exc, PolyplugIsolatedError):
            raise
        print(f"polyplug-isolated {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return PROBLEMS


@contextmanager
def _quiet_exits() -> Iterator[list[int]]:
    """Ctrl-C and a reader that went away end the program with a status, not a traceback."""
    status: list[int] = []
    try:
        yield status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status.append(INTERRUPTED)
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit: point it at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        status.append(BROKEN_PIPE)
