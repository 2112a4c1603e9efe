"""`pblink demo`: `pblink run` with the demo apps and the demo's own bookkeeping."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pblink.cmd_run import add_run_arguments
from pblink.common import add_command, number

DESCRIPTION = """\
Run the whole system with no hardware: `pblink run` (docs/RUN.md) with the
demo apps, the demo Pyboard app `pb_link.pb_client` and the demo server app
(server_apps/s_app.py), on the virtual bench (docs/BENCH.md).

Every --period-ms each Pyboard writes [conn_id, tx_count, rx_count]; the server
app answers [conn_id, tx_count, rx_count, server_count]. The view shows per
device the link state, lines each way, lost/duplicated/reordered lines, the
round trip and the ESP8266's reports; it is a refreshing status block on a
terminal and plain event lines otherwise (--view).

Keys, when stdin is a terminal: w cut WiFi, c crash the ESP8266, h hang the
ESP8266, b restart the broker, s restart the server app, i corrupt I2C bytes,
1-9 choose the device they act on, q quit.

--duration S runs for S seconds (no keyboard needed) and prints a summary.
The verdict is OK (exit 0) only when lines went both ways on every device,
no qos line was lost or duplicated and neither app raised or died; otherwise
it names what failed and exits 1. An unreachable broker exits 3, refused
credentials 4, before anything starts. --chaos injects every kind of fault at
random (none in the last quarter of a timed run, so every outage is over
before the count). Beside a demo, `pblink tail 1` (with the same --broker and
--root) shows device 1's lines; the demo prints that command."""


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "demo", help="run the demo apps on the virtual bench",
                         description=DESCRIPTION)
    parser.add_argument("--period-ms", type=number(int, 10), default=1000, metavar="MS",
                        help="the demo's send period, at least 10 (default %(default)s)")
    add_run_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pblink.cmd_run import bench_main, external_broker_for_bench
    from pblink.common import check_root
    from virtual_bench.demo import Demo

    check_root(args.root)
    broker = external_broker_for_bench(args)
    demo = Demo(devices=args.devices, period_ms=args.period_ms, duration=args.duration,
                chaos=args.chaos, broker=broker, view=args.view, root=args.root, seed=args.seed,
                timeout_ms=args.timeout_ms,
                workdir=Path(args.workdir) if args.workdir else None, out=sys.stdout,
                timeline=Path(args.timeline) if args.timeline else None)
    return bench_main(demo)
