"""`pblink bench`: the performance benchmarks (benchmarks/, docs/PERFORMANCE.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pblink.common import add_command

DESCRIPTION = """\
Measure pblink-mqtt on this machine and print one table: link latency and
throughput on the virtual bench (against the original design's 100 ms poll),
one server process against thousands of device doubles (Mosquitto and the
embedded amqtt), the ESP8266 bridge's code size and heap, and recovery times
after faults. Each figure is repeated and shown with its median and spread;
the table is also written as JSON (bench-results/bench-<timestamp>.json).
Targets are shown next to the figures, each judged on its worst run (a goal
is met only if every run meets it), and the last line sums them up.

A full run takes about 13 minutes on a 2-core machine, --quick about 6
(measured: docs/PERFORMANCE.md, "The machine and the run").
`--only soak --duration 1800 --devices 4` runs the chaos soak instead.
Run it from a checkout: it uses the device code next to it."""


EXIT_STATUS = """\
exit status: 0 every goal met, 1 a family failed, 2 bad arguments, 3 measured
but a goal MISSED, 130 interrupted (Ctrl-C, SIGTERM)"""


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "bench", exits=None,
                         help="run the performance benchmarks",
                         description=DESCRIPTION, epilog=EXIT_STATUS)
    _ensure_path()
    from benchmarks.runner import add_arguments

    add_arguments(parser)
    parser.set_defaults(func=run)


def _ensure_path() -> None:
    """benchmarks/ lives next to pblink/ in the checkout: make sure it imports
    even where the installed package list does not include it."""
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)


def run(args: argparse.Namespace) -> int:
    _ensure_path()
    from benchmarks.runner import main_args

    argv = sys.argv[sys.argv.index("bench") + 1:] if "bench" in sys.argv else []
    return main_args(args, argv)
