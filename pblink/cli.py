"""`pblink`: the command line of pblink-mqtt.

Each command lives in its own module `pblink/cmd_<name>.py` exposing
`register(subparsers)`, which adds its parser (use `pblink.common.add_command`)
and sets `func` to a callable `(args) -> int` (the exit status). Heavy imports
belong inside that callable, so `pblink --help` stays fast and one command's
missing dependency cannot break the others. Adding a command is one line in
COMMANDS below. Numbers and addresses are parsed with the types in
`pblink.common` (ranges checked), broker options added with
`pblink.common.add_broker_options`.

Expected failures raise `pblink.common.CliError` or one of its kinds (or an
exception `pblink.common.error_from` knows): printed as one line on stderr, no
traceback, with the kind's exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from pblink.common import EXIT_CODES_HELP, Parser, error_from, setup_logging

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
    "run",
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pblink",
        description="pblink-mqtt: a Pyboard talks MQTT through an ESP8266 wired over I2C.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging on stderr (repeatable)")
    parser.add_argument("--version", action="version", version=f"pblink {_version()}")
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pblink-mqtt")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown (not installed)"


def _option_before_command(parser: argparse.ArgumentParser, words: list[str]) -> str | None:
    """The first word before the command that looks like an option pblink does not have."""
    commands = set(_subparsers(parser))
    known = set(parser._option_string_actions)
    for word in words:
        if word in commands:
            return None
        if word.startswith("-") and word not in known and word.strip("v") != "-":
            return word
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    stray = _option_before_command(parser, words)
    if stray is not None:  # "pblink --bogus server": pblink's own option, not server's
        parser.error(f"unrecognized arguments: {stray}")
    args, unknown = parser.parse_known_args(words)
    if unknown:  # named by the command's parser: "pblink server: error: ..."
        _subparsers(parser)[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    setup_logging(args.verbose + int(getattr(args, "log_boost", 0)))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        logging.getLogger("pblink").info("interrupted")
        return 130
    except Exception as exc:
        error = error_from(exc)
        if error is None:
            raise
        print(f"pblink {args.command}: error: {error}", file=sys.stderr)
        return error.code


if __name__ == "__main__":
    sys.exit(main())
