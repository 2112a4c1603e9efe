"""`pblink server [ARGS...]`: run the demo server application (server_apps/s_app.py)."""

from __future__ import annotations

import argparse
from typing import Any

from pblink.common import add_command

DESCRIPTION = """\
Run the demo server application, `python -m server_apps.s_app`: every
argument after `server` goes to it (`pblink server --help` shows its options),
and it sets up its own logging (`pblink -v server` passes -v on)."""


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "server", help="run the demo server application",
                         description=DESCRIPTION, add_help=False)
    # passthrough: pblink/cli.py hands every argument after `server` to the app
    parser.set_defaults(func=run, app_args=[], passthrough=True)


def run(args: argparse.Namespace) -> int:
    from pblink.common import CliError

    try:
        from server_apps import s_app
    except ImportError as exc:
        if "-h" in args.app_args or "--help" in args.app_args:
            print(f"usage: pblink server [ARGS...]\n\n{DESCRIPTION}")
            return 0
        raise CliError(f"the demo server application is not available: {exc}") from None
    try:
        result = s_app.main(list(args.app_args))
    except SystemExit as exc:  # its argparse: --help, bad arguments
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return int(result or 0)
