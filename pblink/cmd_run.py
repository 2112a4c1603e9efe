"""`pblink run`: your Pyboard app and your server app on the virtual bench."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pblink.common import (
    LINK_TIMEOUT_MS,
    MAX_DEVICES,
    SECONDS,
    add_broker_options,
    add_command,
    number,
    output_file,
    output_folder,
)

DESCRIPTION = """\
Run your two applications with no hardware (docs/RUN.md): a broker (the
embedded amqtt, or --broker HOST:PORT with --user/--password), your server
application, and per device (conn_ids 1..N) a virtual Pyboard running your
AppBase subclass wired to a virtual ESP8266 running the real bridge, each a
MicroPython process on the virtual bench (docs/BENCH.md).

  --board-app FILE.py:CLASS      an AppBase subclass in a file of yours, or
              PKG_DIR:CLASS      in a package (its __init__.py), or
              PKG_DIR/MOD.py:CLASS  (default CLASS: App). The bench builds it
                                 as a main.py would: CLASS(config.conn_id,
                                 config.config, config.hardware, verbose).
  --server-app MODULE:CALLABLE   an async callable app(server, conn_ids) of
              FILE.py:CALLABLE   yours, given a started server_apps.LinkServer
                                 (default CALLABLE: app); run in its own process
                                 with `pblink server --app`.

The view shows per device the link state, the lines each way (counted on the
I2C bus; a line up counts as received once the server acknowledged it), what
the Pyboard app prints and the recent events; a refreshing status block on a
terminal, plain event lines otherwise (--view).

Keys, when stdin is a terminal: w cut WiFi, c crash the ESP8266, h hang the
ESP8266, b restart the broker, s restart the server app, i corrupt I2C bytes,
1-9 choose the device they act on, q quit. --chaos injects every kind at random.

The verdict is OK (exit 0) only when every device exchanged lines with the
server app, the server app read lines itself (readline or async for: the
library acknowledges lines unread up to its queue; the summary says how many
it read and wrote) and no app raised, failed to import or died; a traceback from your
code is shown with its file and line. An unreachable broker exits 3, refused
credentials 4, before anything starts."""


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """What `pblink run` and `pblink demo` share."""
    parser.add_argument("--devices", type=number(int, 1, MAX_DEVICES), default=1,
                        metavar="N", help="Pyboard + ESP8266 pairs, conn_ids 1..N, 1 to "
                        f"{MAX_DEVICES} "
                        "(default %(default)s)")
    parser.add_argument("--duration", type=SECONDS, default=None, metavar="S",
                        help="run S seconds, print a summary, exit 0 only if the verdict "
                        "is OK (default: until q or Ctrl-C)")
    parser.add_argument("--chaos", action="store_true",
                        help="inject every kind of fault at random (a timed run needs "
                        "--duration of at least 21 s for the first one)")
    parser.add_argument("--seed", type=number(int), default=None,
                        help="random seed for --chaos")
    parser.add_argument("--timeout-ms", type=LINK_TIMEOUT_MS, default=1500, metavar="MS",
                        help="the link's timeout_ms on both ends (default %(default)s)")
    parser.add_argument("--view", choices=("auto", "block", "lines", "quiet"), default="auto",
                        help="status block, event lines or summary only "
                        "(default: block on a terminal, lines otherwise)")
    parser.add_argument("--workdir", type=output_folder, default=None, metavar="DIR",
                        help="keep the logs of every process here, a folder (created with its "
                        "parents; default: a temporary folder)")
    parser.add_argument("--timeline", type=output_file, default=None, metavar="FILE.html",
                        help="record the run and draw it as one timeline per device: lines, "
                        "acks, retransmissions, U/D, online, faults, resets, reports "
                        "(a self-contained HTML file; checked before the run starts, missing "
                        "folders are created)")
    add_broker_options(parser, embedded=True)


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "run", help="run your Pyboard app and server app on the bench",
                         description=DESCRIPTION)
    parser.add_argument("--board-app", required=True, metavar="FILE.py:CLASS",
                        help="your AppBase subclass (see above)")
    parser.add_argument("--server-app", required=True, metavar="MODULE:CALLABLE",
                        help="your server application (see above)")
    add_run_arguments(parser)
    parser.set_defaults(func=run)


def external_broker_for_bench(args: argparse.Namespace) -> Any:
    """The --broker of a bench run, checked and reachable (UnreachableError,
    RefusedError now rather than a run that cannot work), or None."""
    from pblink.common import UsageError, external_broker, probe_broker, random_client_id
    from virtual_bench.demo import ExternalBroker

    opts = external_broker(args)
    if opts is None:
        return None
    if opts.tls:
        raise UsageError("the bench's virtual ESP8266s connect without TLS: give a broker "
                         "listener without --tls/--cafile")
    probe_broker(opts, random_client_id("probe"))
    return ExternalBroker(opts.host, opts.port, opts.user, opts.password)


def bench_main(bench_run: Any) -> int:
    import asyncio
    import logging

    from virtual_bench.demo import CHAOS_MIN_DURATION_S

    if bench_run.chaos and bench_run.duration and bench_run.duration < CHAOS_MIN_DURATION_S:
        logging.getLogger("pblink").warning(
            "--chaos needs --duration of at least %g s to inject faults (given %g s)",
            CHAOS_MIN_DURATION_S, bench_run.duration)

    return int(asyncio.run(bench_run.run()))


def run(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from pblink.apps import BoardApp, resolve_server_spec
    from pblink.common import check_root
    from virtual_bench.demo import BenchRun, BoardCode, Tracker

    app = BoardApp.locate(args.board_app)
    server_app = resolve_server_spec(args.server_app)
    check_root(args.root)
    broker = external_broker_for_bench(args)
    conn_ids = [str(i) for i in range(1, args.devices + 1)]
    base = app.path / Path(*app.module.split("."))
    files = sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
    with tempfile.TemporaryDirectory(prefix="pblink-run-") as tmp:
        launcher = Path(tmp) / "pblink_run_main.py"
        launcher.write_text(app.launcher())
        board = BoardCode("pblink_run_main", (Path(tmp), app.path), tuple(map(str, files)))
        tracker = Tracker(conn_ids, app_files=board.files)
        bench_run = BenchRun(
            tracker=tracker, board=board, server_app=server_app, duration=args.duration,
            chaos=args.chaos, broker=broker, view=args.view, root=args.root, seed=args.seed,
            timeout_ms=args.timeout_ms, workdir=Path(args.workdir) if args.workdir else None,
            title="pblink run", out=sys.stdout,
            timeline=Path(args.timeline) if args.timeline else None)
        return bench_main(bench_run)
