"""`shotstream` command line. Each sub-command lives beside the code it drives and registers
itself through an `add_parser(subparsers)` function listed in COMMANDS."""

from __future__ import annotations

import argparse
import importlib
import sys

from shotstream import runtime

# Each module exposes add_parser(subparsers), which sets `func` on its parser.
COMMANDS = [
    "shotstream.world.cli",
    "shotstream.generate",
    "shotstream.importer",
    "shotstream.training.cli",
    "shotstream.training.ode",
]


class CLIError(Exception):
    """An error the user caused: printed as one line, exit code 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shotstream",
        description="ShotStream: streaming multi-shot video generation. "
        "Run `shotstream <command> --help` for the options of each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return dispatch(runtime.parse_args(build_parser(), argv))


def dispatch(args) -> int:
    """Run a parsed command; user errors become one line on stderr and exit code 2."""
    try:
        return args.func(args) or 0
    except (CLIError, OSError, ValueError, KeyError) as e:  # (OSError: missing files, full disk, no permission)
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"shotstream {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"shotstream {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
