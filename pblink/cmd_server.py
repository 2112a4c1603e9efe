"""`pblink server`: run a server application (the demo by default) against a broker."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pblink.common import (
    BROKER_ENV_HELP,
    LINK_TIMEOUT_MS,
    add_broker_options,
    add_command,
    client_id,
)

DESCRIPTION = f"""\
Run a server application until Ctrl-C or SIGTERM: the demo (server_apps/s_app.py,
which answers each [conn_id, tx_count, rx_count] line with [conn_id, tx_count,
rx_count, server_count]) or yours with --app. A server application is an async
callable app(server, conn_ids) taking a started server_apps.LinkServer and the
conn_ids to serve (docs/RUN.md).

The link state is kept in <state-dir>/<client-id>.json, or with --state-db
in a PostgreSQL table that several server processes share (each conn_id
leased to one at a time; not with --state-dir), so stopping the server and
starting it again loses and duplicates no line. A fresh state with a
leftover broker session of the same client id replays that session's queued
lines as new ones (docs/SERVER.md). Every line in and out of the demo is
logged (INFO).

{BROKER_ENV_HELP}"""

DEFAULT_IDS = ("1", "2", "3", "4")
DEFAULT_STATE_DIR = ".pblink-state"  # server_apps.s_app.DEFAULT_STATE_DIR (no import at start)


def state_dir_of(args: argparse.Namespace) -> str:
    """--state-dir as given, or its default (``None`` in args tells "not given")."""
    return DEFAULT_STATE_DIR if args.state_dir is None else str(args.state_dir)


def state_folder(text: str) -> str:
    """--state-dir: '' (no state file) or a folder `output_folder` accepts."""
    from pblink.common import output_folder

    return output_folder(text) if text else text


state_folder.__name__ = "folder"  # argparse names the type in its messages

DB_TIMEOUT_MS = 5000  # server_apps.store_pg.DEFAULT_TIMEOUT_MS (no psycopg import at start)


def db_timeout_ms(text: str) -> int:
    """--state-db-timeout-ms: whole milliseconds, 100 to 600000 (store_pg.check_timeout_ms)."""
    from server_apps.store_pg import check_timeout_ms

    try:
        return check_timeout_ms(int(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number of milliseconds from 100 to 600000") from None


db_timeout_ms.__name__ = "milliseconds"


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """What a server application is run with, besides the broker and its conn_ids."""
    parser.add_argument("--timeout-ms", type=LINK_TIMEOUT_MS, default=1500, metavar="MS",
                        help="the link's timeout_ms (default %(default)s)")
    parser.add_argument("--client-id", type=client_id, default="pblink.server",
                        help="the server's MQTT client id, also the state file's name: 1 to "
                        "65535 UTF-8 bytes (with a state file: at most 245 and not starting "
                        "with '.'), no control characters, '/', '\\' or '..' "
                        "(default %(default)s)")
    parser.add_argument("--state-dir", metavar="DIR", type=state_folder,
                        help=f"folder of the state file (default {DEFAULT_STATE_DIR}; "
                        "'' for none; not with --state-db)")


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "server", help="run a server application (default: the demo)",
                         description=DESCRIPTION)
    parser.add_argument("--app", metavar="MODULE:CALLABLE",
                        help="your server application: MODULE:CALLABLE or FILE.py:CALLABLE "
                        "(default: the demo, server_apps.s_app:app)")
    parser.add_argument("--ids", nargs="+", default=list(DEFAULT_IDS), metavar="CONN_ID",
                        help=f"conn_ids to serve (default {' '.join(DEFAULT_IDS)})")
    add_server_arguments(parser)
    parser.add_argument("--state-db", metavar="URL",
                        help="keep the link state in PostgreSQL instead of a file "
                        "(postgresql://user:password@host/db, postgres://..., or a libpq "
                        "key=value string; not with --state-dir): several server processes "
                        "share it, each conn_id leased to one at a time (docs/SERVER.md); "
                        "needs pip install 'pblink-mqtt[postgres]'")
    parser.add_argument("--state-db-timeout-ms", metavar="MS", type=db_timeout_ms,
                        help="with --state-db: the longest a database statement or commit may "
                        "take; past it the database counts as lost and the server exits "
                        f"(status 1) for its supervisor to restart it (default {DB_TIMEOUT_MS}, "
                        "100 to 600000)")
    add_broker_options(parser)
    parser.set_defaults(func=run, log_boost=1)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib
    import logging
    import signal
    from pathlib import Path

    from pblink.apps import AppLoadError, counted, format_user_traceback, load_server_app
    from pblink.common import (
        BrokerOptions,
        CliError,
        UsageError,
        check_conn_id,
        check_state_file,
        probe_broker,
        random_client_id,
    )
    from server_apps.s_app import AppError, serve

    ids = [check_conn_id(conn_id) for conn_id in args.ids]  # before connecting
    state_dir = state_dir_of(args)
    if args.state_db is not None:
        from server_apps.store_pg import check_dsn

        if args.state_dir is not None:
            raise UsageError("give --state-dir (a state file) or --state-db (PostgreSQL), "
                             "not both")
        try:
            check_dsn(args.state_db)
        except ValueError as exc:
            raise UsageError(f"--state-db: {exc}") from None
    elif args.state_db_timeout_ms is not None:
        raise UsageError("--state-db-timeout-ms needs --state-db")
    if state_dir and args.state_db is None:
        check_state_file(state_dir, args.client_id)  # before anything is created
    opts = BrokerOptions.from_args(args)
    try:
        application = counted(load_server_app(args.app)) if args.app else None
    except AppLoadError as exc:
        if exc.details:
            sys.stderr.write(exc.details)
        raise
    # The broker first, then the state folder: an unreachable broker (exit 3) or
    # refused credentials (exit 4) print one line and leave nothing behind.
    quiet = logging.getLogger("pblink")  # the server's own connection says "connected"
    level = quiet.level
    quiet.setLevel(max(level, logging.WARNING))
    try:
        probe_broker(opts, random_client_id("probe"))
    finally:
        quiet.setLevel(level)
    if state_dir and args.state_db is None:
        try:
            Path(state_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--state-dir {state_dir}: cannot create it: "
                             f"{exc.strerror or exc}") from None

    async def main() -> bool:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await serve(opts.host, opts.port, ids=ids, root=opts.root, username=opts.user,
                    password=opts.password, tls=opts.ssl_context(), client_id=args.client_id,
                    state_dir=state_dir or None, state_db=args.state_db,
                    state_db_timeout_ms=args.state_db_timeout_ms or DB_TIMEOUT_MS,
                    timeout_ms=args.timeout_ms,
                    connect_timeout=opts.connect_timeout, stop=stop, application=application)
        return stop.is_set()

    try:
        stopped = asyncio.run(main())
    except AppError as exc:
        assert exc.__cause__ is not None
        sys.stderr.write(format_user_traceback(exc.__cause__))
        raise CliError(str(exc)) from None
    if not stopped:  # the app returned by itself: the devices are no longer served
        raise CliError("server app exited: it returned before Ctrl-C/SIGTERM "
                       "(a server app serves until cancelled)")
    return 0
