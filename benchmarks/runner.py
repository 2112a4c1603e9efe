"""Runs benchmark families, prints one table and writes it as JSON.

``python -m benchmarks.runner [--quick] [--only FAMILY ...]`` or ``pblink bench``.
The JSON file (default ``bench-results/bench-<timestamp>.json``) holds the
machine description, the command, each family's wall time (and error, if it
failed), and every row with all its run values, median and spread.

Exit status (docs/PERFORMANCE.md "Verdicts and exit status"): 0 when every
family ran and every goal judged was met in every run (the verdict line names
goals not run, e.g. scale's N = 5,000 ones, and says when none was judged);
3 (``EXIT_GOAL_MISSED``) when every family ran but a goal was missed (the
last line names them); 1 when a family failed or the results could not be
written; 2 for bad options.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks import EXTRA_FAMILIES, FAMILIES
from benchmarks.common import (
    ROOT,
    Context,
    Row,
    find_mosquitto,
    machine_info,
    missed_rows,
    param_text,
    raise_nofile,
    render_table,
    run_loadavg,
    sigterm_interrupts,
)
from benchmarks.scale import GOALS_5000_MISSING, goals_5000_judged
from pblink.common import COUNT, SECONDS, number, output_file, output_folder

# --scale-n at most: twice the largest count of the full run (10,000); a generator
# process per 5,000 devices and a socket each on a 2-core machine beyond that
SCALE_N = number(int, 1, 20_000)
SCALE_BROKERS = ("mosquitto", "amqtt")
EXIT_GOAL_MISSED = 3  # measured fine, but a goal was missed (1: a family failed, 2: usage)

MODULES = {
    "latency": "benchmarks.latency",
    "throughput": "benchmarks.throughput",
    "scale": "benchmarks.scale",
    "esp": "benchmarks.esp_budget",
    "recovery": "benchmarks.recovery",
    "soak": "benchmarks.soak",
}


# The options one family reads: (dest, flag, family); given without that family
# in the run they would be ignored, so they are refused
FAMILY_OPTIONS = (("scale_n", "--scale-n", "scale"), ("scale_broker", "--scale-broker", "scale"),
                  ("duration", "--duration", "soak"),
                  ("devices", "--devices", "soak"), ("seed", "--seed", "soak"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="a short run: fewer repeats, smaller loads (about 6 minutes on 2 cores)")
    p.add_argument("--only", action="append", choices=[*FAMILIES, *EXTRA_FAMILIES],
                   metavar="FAMILY",
                   help="run only this family (repeatable): " + ", ".join(
                       [*FAMILIES, *EXTRA_FAMILIES]) + "; soak runs only when named")
    p.add_argument("--repeats", type=COUNT, default=None, metavar="N",
                   help="runs per figure (default 3, --quick 2)")
    p.add_argument("--out", type=output_file, default=None, metavar="FILE",
                   help="JSON file to write (default bench-results/bench-<timestamp>.json); "
                   "checked before the run starts, missing folders are created")
    p.add_argument("--workdir", type=output_folder, default=None, metavar="DIR",
                   help="keep every process's log here (default: a temporary folder); "
                   "checked before the run starts, missing folders are created")
    p.add_argument("--scale-n", type=SCALE_N, action="append", default=None, metavar="N",
                   help="scale: device counts for both brokers, 1 to 20,000 (repeatable; default "
                   "Mosquitto 100 1000 5000 10000 and amqtt 100 200 300 500, --quick 100; "
                   "amqtt steps up through them and stops at the first not sustained)")
    p.add_argument("--scale-broker", choices=SCALE_BROKERS, default=None,
                   help="scale: run only this broker's runs (default both; the N = 5,000 goals "
                   "are Mosquitto's, amqtt only steps up to the highest N it sustains)")
    p.add_argument("--scale-generator", choices=("lite", "doubles"), default="lite",
                   help="scale: load generator: raw MQTT sockets (lite, default: "
                   "benchmarks/lite_load.py) or a paho DeviceDouble per device (doubles)")
    p.add_argument("--duration", type=SECONDS, default=None, metavar="S",
                   help="soak: seconds (default 600, --quick 60)")
    p.add_argument("--devices", type=COUNT, default=None, metavar="N",
                   help="soak: device pairs (default 4)")
    p.add_argument("--seed", type=int, default=None, help="soak: chaos seed")
    p.add_argument("--plot-format", choices=("png", "svg"), default="png",
                   help="format of the plots written beside the JSON (default %(default)s)")
    p.add_argument("--no-plots", action="store_true", help="write the JSON only")
    p.add_argument("--plot", default=None, metavar="JSON",
                   help="run nothing: draw the plots of this existing result file beside it "
                   "(with --plot-format; no other option applies)")
    p.add_argument("--tiny", action="store_true",
                   help="the smallest run of each family (a few lines; scale at N = 10; one "
                        "run per figure): a smoke test of the bench itself (not with --quick)")
    # what a run reads and --plot (which runs nothing) would ignore: (dest, flag, default)
    p.set_defaults(run_options=[(a.dest, a.option_strings[-1], a.default) for a in p._actions
                                if a.dest not in ("plot", "plot_format", "help", "verbose")
                                and a.option_strings])


async def run_families(ctx: Context, names: list[str]) -> tuple[list[Row], dict[str, Any]]:
    rows: list[Row] = []
    info: dict[str, Any] = {}
    for name in names:
        mod = importlib.import_module(MODULES[name])
        ctx.progress(f"{name}: {mod.DESCRIPTION}")
        t0 = time.monotonic()
        entry: dict[str, Any] = {}
        try:
            got = await mod.run(ctx)
            rows.extend(got)
            entry["rows"] = len(got)
        except Exception as exc:  # one family failing must not lose the others' figures
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc()
            ctx.progress(f"{name}: FAILED: {entry['error']}")
        entry["elapsed_s"] = round(time.monotonic() - t0, 1)
        entry["loadavg_end"] = run_loadavg()
        info[name] = entry
        ctx.progress(f"{name}: done in {entry['elapsed_s']} s")
    return rows, info


def write_plots(out: Path, fmt: str) -> list[Path]:
    """The plots of the result file ``out``, beside it (benchmarks/plots.py).

    Raises benchmarks.plots.PlotError (one line, naming the file) when there
    is nothing to plot or the file is not a usable result."""
    from benchmarks.plots import plot_file

    files = plot_file(out, fmt=fmt)
    for f in files:
        print(f"plot written {f}")
    return files


def _error(message: str, code: int) -> int:
    print(f"pblink bench: error: {message}", file=sys.stderr)
    return code


def main_args(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    from benchmarks.plots import NothingToPlot, PlotError

    if args.plot:
        given = [flag for dest, flag, default in args.run_options
                 if getattr(args, dest, default) != default]
        if given:
            return _error(f"--plot runs nothing, so {', '.join(given)} would be ignored: "
                          "give --plot JSON with --plot-format only", 2)
        try:
            write_plots(Path(args.plot), args.plot_format)
        except PlotError as exc:
            return _error(str(exc), 2)
        return 0
    if args.tiny and args.quick:
        return _error("--tiny and --quick are two run sizes: give one", 2)
    raise_nofile()
    names = args.only or list(FAMILIES)
    for dest, flag, family in FAMILY_OPTIONS:  # an option no family of this run reads
        if getattr(args, dest) is not None and family not in names:
            return _error(f"{flag} is a {family} option, and this run has no {family} "
                          f"(add --only {family})", 2)
    repeats = args.repeats or (1 if args.tiny else 2 if args.quick else 3)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tmp = None
    if args.workdir:
        workdir = Path(args.workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="pblink-bench-", ignore_cleanup_errors=True)
        workdir = Path(tmp.name)
    out = Path(args.out) if args.out else ROOT / "bench-results" / f"bench-{stamp}.json"
    options = {"scale_n": args.scale_n, "scale_broker": args.scale_broker,
               "scale_generator": args.scale_generator,
               "duration": args.duration, "devices": args.devices,
               "seed": args.seed, "tiny": args.tiny,
               "soak_timeline": out.with_name(f"{out.stem}-soak-timeline.html")}
    server_log = logging.getLogger("pblink.server")  # reconnect chatter, for this run only
    server_level = server_log.level
    server_log.setLevel(logging.ERROR)
    ctx = Context(quick=args.quick or args.tiny, repeats=repeats, workdir=workdir,
                  mosquitto=find_mosquitto(), options=options)
    machine = machine_info()
    t0 = time.monotonic()
    # SIGTERM (timeout, CI, kill) ends the run as Ctrl-C does: the families'
    # finally blocks stop their brokers and boards, then the scratch folder goes
    try:
        with sigterm_interrupts():
            rows, info = asyncio.run(run_families(ctx, names))
    except KeyboardInterrupt:
        return _error("interrupted: no figures written", 130)
    finally:
        server_log.setLevel(server_level)  # a caller's own logging (tests) is left as it was
        if tmp is not None:
            tmp.cleanup()
    elapsed = time.monotonic() - t0
    table = render_table(rows)
    command = "pblink bench " + " ".join(argv if argv is not None else sys.argv[2:])
    print(run_header(len(rows), elapsed, names, args.quick, args.tiny, repeats,
                     most_runs=max((r.runs for r in rows), default=0)))
    print(table)
    failed = {k: v["error"] for k, v in info.items() if "error" in v}
    for name, err in failed.items():
        print(f"family {name} FAILED: {err}")
    missed = missed_rows(rows)
    verdict = summary_line(rows, failed, names)
    print(verdict)
    doc = {
        "command": command.strip(),
        "started": stamp,
        "elapsed_s": round(elapsed, 1),
        "quick": args.quick,
        "repeats": repeats,
        "machine": machine,
        "loadavg_end": run_loadavg(),
        "families": info,
        "rows": [r.to_json() for r in rows],
        "table": table,
        "verdict": verdict,
    }
    try:  # the table is on stdout already: a file that cannot be written loses nothing
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")
    except OSError as exc:
        return _error(f"results not written to {out}: {exc.strerror or exc} "
                      "(the table above has every figure)", 1)
    print(f"written {out}")
    if not args.no_plots:
        try:
            write_plots(out, args.plot_format)
        except NothingToPlot:
            print(f"no plots: none of {', '.join(names)} has one")  # e.g. --only soak
        except PlotError as exc:
            return _error(f"plots not written: {exc}", 1)
    return 1 if failed else EXIT_GOAL_MISSED if missed else 0


def run_header(figures: int, elapsed: float, names: list[str], quick: bool, tiny: bool,
               repeats: int, most_runs: int | None = None) -> str:
    """The line above the table: which families ran, at which size, how many runs.

    A family may run a figure fewer times than ``repeats`` (scale: N > 1,000 and
    the amqtt step-up once): ``most_runs``, the most runs any figure has, is the
    figure given when known (the table's ``n`` column gives each figure's runs)."""
    which = ("all families" if names == list(FAMILIES)
             else "only " + ", ".join(names))
    size = "tiny (smoke test)" if tiny else "quick" if quick else "full size"
    most = repeats if most_runs is None else most_runs
    runs = ("1 run per figure" if most <= 1
            else f"up to {most} runs per figure (column n)")
    return f"pblink bench: {figures} figures in {elapsed:.0f} s: {which}, {size}, {runs}"


def summary_line(rows: list[Row], failed: dict[str, str],
                 names: list[str] | None = None) -> str:
    """The last line of the table: whether every goal was met in every run.

    ``"verdict: MISSED 2 of 9 goals: scale latency p99 (broker=... N=5000), ..."``;
    ``"verdict: all 9 goals met in every run"``; families that failed come first.
    ``"no goal judged"`` says nothing was checked, never that it passed. When
    scale ran (``names``) without any of issue 13's N = 5,000 goals judged, the
    line says they were not run, and a step-up that stopped below the largest N
    asked for says so (:func:`step_up_short`)."""
    judged = [r for r in rows if r.met is not None]
    missed = missed_rows(rows)
    parts = []
    if failed:
        parts.append(f"FAILED families: {', '.join(failed)}")
    if missed:
        which = "; ".join(f"{r.family} {r.name} ({param_text(r.params)})" for r in missed)
        parts.append(f"MISSED {len(missed)} of {len(judged)} goals: {which}")
    elif judged:
        parts.append(f"all {len(judged)} goals met in every run")
    else:
        parts.append("no goal judged: the figures above were checked against no target")
    if names and "scale" in names and not goals_5000_judged(rows):
        parts.append(GOALS_5000_MISSING)
    parts += filter(None, (step_up_short(r) for r in rows if r.name == "highest N sustained"))
    return "verdict: " + "; ".join(parts)


def step_up_short(row: Row) -> str:
    """For a step-up's "highest N sustained" row that stopped below the largest N
    asked for: ``"amqtt sustained N = 100, not 5,000 (not a goal: its row's note
    says why)"``; else ``""``. Not a goal, but a user who asked for 5,000 must
    read in the verdict that it was not reached."""
    tried = [int(n) for n in str(row.params.get("tried", "")).split()]
    best = int(row.values[0]) if row.values else 0
    if not tried or best >= max(tried):
        return ""
    reached = f"N = {best:,}" if best else "no N"
    return (f"{row.params.get('broker', '?')} sustained {reached}, not {max(tried):,} "
            "(not a goal: its row's note says why)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.runner", description=__doc__)
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return main_args(args, argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
