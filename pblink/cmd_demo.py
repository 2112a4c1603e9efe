"""`pblink demo`: the whole system on the virtual bench, with a live view and faults."""

from __future__ import annotations

import argparse
from typing import Any

from pblink.common import EXIT_USAGE, CliError, add_command

DESCRIPTION = """\
Run the whole system with no hardware: a broker (the embedded amqtt, or
--broker), the demo server app, and per device a virtual Pyboard running
`import pb_link.pb_client` wired to a virtual ESP8266 running the bridge, each
a MicroPython process on the virtual bench (docs/BENCH.md).

Every --period-ms each Pyboard writes [conn_id, tx_count, rx_count]; the server
app answers [conn_id, tx_count, rx_count, server_count]. The view shows per
device the link state, lines each way, lost/duplicated/reordered lines, the
round trip and the ESP8266's reports; it is a refreshing status block on a
terminal and plain event lines otherwise (--view).

Keys, when stdin is a terminal: w cut WiFi, c crash the ESP8266, h hang the
ESP8266, b restart the broker, s restart the server app, i corrupt I2C bytes,
1-9 choose the device they act on, q quit.

--duration S runs for S seconds (no keyboard needed) and prints a summary;
the exit status is 0 only if no qos line was lost or duplicated. --chaos
injects every kind of fault at random (none in the last quarter of a timed run,
so every outage is over before the count)."""


def _broker(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return host, int(port)


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "demo", help="run the system on the virtual bench",
                         description=DESCRIPTION)
    parser.add_argument("--devices", type=int, default=1, metavar="N",
                        help="Pyboard + ESP8266 pairs, conn_ids 1..N (default %(default)s)")
    parser.add_argument("--duration", type=float, default=None, metavar="S",
                        help="run S seconds, print a summary, exit 0 only if nothing was "
                        "lost or duplicated (default: until q or Ctrl-C)")
    parser.add_argument("--chaos", action="store_true",
                        help="inject every kind of fault at random")
    parser.add_argument("--broker", type=_broker, default=None, metavar="HOST:PORT",
                        help="use this MQTT broker instead of starting the embedded one")
    parser.add_argument("--root", default=None,
                        help="topic root (default pblink; pblink-demo-XXXX with --broker)")
    parser.add_argument("--period-ms", type=int, default=1000, metavar="MS",
                        help="the demo's send period (default %(default)s)")
    parser.add_argument("--timeout-ms", type=int, default=1500, metavar="MS",
                        help="the link's timeout_ms on both ends (default %(default)s)")
    parser.add_argument("--view", choices=("auto", "block", "lines", "quiet"), default="auto",
                        help="status block, event lines or summary only "
                        "(default: block on a terminal, lines otherwise)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for --chaos")
    parser.add_argument("--workdir", default=None,
                        help="keep the logs of every process here (default: a temporary folder)")
    parser.add_argument("--timeline", default=None, metavar="FILE.html",
                        help="record the run and draw it as one timeline per device: lines, "
                        "acks, retransmissions, U/D, online, faults, resets, reports "
                        "(a self-contained HTML file)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from virtual_bench.demo import Demo

    if not 1 <= args.devices <= 9:
        raise CliError("--devices must be 1 to 9", EXIT_USAGE)
    if args.period_ms < 10:
        raise CliError("--period-ms must be at least 10", EXIT_USAGE)
    if args.duration is not None and args.duration <= 0:
        raise CliError("--duration must be positive", EXIT_USAGE)
    demo = Demo(devices=args.devices, duration=args.duration, chaos=args.chaos,
                broker=args.broker, period_ms=args.period_ms, view=args.view, root=args.root,
                seed=args.seed, timeout_ms=args.timeout_ms,
                workdir=Path(args.workdir) if args.workdir else None,
                timeline=Path(args.timeline) if args.timeline else None)
    return asyncio.run(demo.run())
