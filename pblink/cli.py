"""`pblink`: the command line of pblink-mqtt.

Each command lives in its own module `pblink/cmd_<name>.py` exposing
`register(subparsers)`, which adds its parser (use `pblink.common.add_command`)
and sets `func` to a callable `(args) -> int` (the exit status). Heavy imports
belong inside that callable, so `pblink --help` stays fast and one command's
missing dependency cannot break the others. Adding a command is one line in
COMMANDS below. A command whose parser has the default `passthrough=True`
receives every argument after its name untouched in `args.app_args`
(`pblink server --help` is the server application's help).

Expected failures raise `pblink.common.CliError(message, code)`: printed as one
line on stderr, no traceback; see `pblink.common` for the exit codes.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from pblink.common import EXIT_CODES_HELP, CliError, setup_logging

COMMANDS: list[str] = [
    "broker",
    "server",
    "tail",
    "send",
    "passwd",
    "install",
    "flash",
    "build_firmware",
    "demo",
    "bench",
    "monitor",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pblink",
        description="pblink-mqtt: a Pyboard talks MQTT through an ESP8266 wired over I2C.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging on stderr (repeatable)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"pblink.cmd_{name}").register(subparsers)
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def command_names(parser: argparse.ArgumentParser | None = None) -> list[str]:
    """The command names as typed (a module may register e.g. `build-firmware`)."""
    return list(_subparsers(parser or build_parser()))


def _split_passthrough(argv: list[str], names: set[str]) -> tuple[list[str], list[str] | None]:
    """Cut argv after a passthrough command's name: (ours, theirs or None)."""
    for i, arg in enumerate(argv):
        if not arg.startswith("-"):
            return (argv[: i + 1], argv[i + 1 :]) if arg in names else (argv, None)
    return argv, None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    passthrough = {name for name, sub in _subparsers(parser).items()
                   if sub.get_default("passthrough")}
    ours, theirs = _split_passthrough(list(sys.argv[1:] if argv is None else argv), passthrough)
    args = parser.parse_args(ours)
    if theirs is not None:
        # The application parses its own arguments and sets up its own logging.
        args.app_args = (["-v"] if args.verbose and "-v" not in theirs else []) + theirs
    else:
        setup_logging(args.verbose + int(getattr(args, "log_boost", 0)))
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"pblink {args.command}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        logging.getLogger("pblink").info("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
