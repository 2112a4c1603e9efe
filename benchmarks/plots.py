"""Plots of a `pblink bench` result (the JSON file benchmarks/runner.py writes).

``python -m benchmarks.plots RESULT.json [--out DIR] [--format png|svg]`` or
``pblink bench --plot RESULT.json``; ``pblink bench`` itself calls
:func:`write_plots` after every run, so the plots land beside the JSON as
``<stem>-<plot>.<format>``. One plot per family that has the figures for it:

- ``latency``: CDF of every probe's one-way and round-trip latency, per qos
  mode, this design's poll policy against the original's 100 ms poll (the rows'
  ``samples``, benchmarks/latency.py);
- ``throughput``: lines/s and payload bytes/s against line size, per direction
  and mode, at 400 kHz, and at 100 kHz where measured;
- ``scale``: the server's end-to-end latency (p50, p99) and CPU against the
  number of device doubles, per broker;
- ``esp_heap``: the ESP8266 bridge's heap over the traffic test: every row of
  the ``esp`` family that carries a ``series`` (benchmarks/esp_budget.py); a
  figure with a note saying so when none does;
- ``recovery``: detection and recovery time per fault kind, median with each
  run as a dot.

Matplotlib with the Agg backend (no display needed). Reading the JSON is all
this module does with the benchmarks: it can plot a result from another machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, no display
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from benchmarks.common import parse_target

FORMATS = ("png", "svg")


class PlotError(ValueError):
    """A result that cannot be plotted; the message is one line naming the file and what is
    wrong (`pblink bench --plot` and ``python -m benchmarks.plots`` exit 2 with it)."""


class NothingToPlot(PlotError):
    """A valid result without rows of any plotted family (e.g. a soak-only run)."""

ORIGINAL_POLL_MS = 100  # the original pb_link's fixed I2C poll period
MODE_COLORS = {"qos+wait": "C0", "qos": "C1", "noqos": "C2"}


def _rows(doc: dict[str, Any], family: str) -> list[dict[str, Any]]:
    return [r for r in doc.get("rows", []) if r.get("family") == family]


def _title(fig: Figure, doc: dict[str, Any], what: str) -> None:
    machine = doc.get("machine", {})
    sub = (f"{doc.get('command', 'pblink bench')}  ({doc.get('started', '?')}, "
           f"{machine.get('nproc', '?')} cores, {'quick' if doc.get('quick') else 'full'} run)")
    fig.suptitle(f"{what}\n{sub}", fontsize=10)


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=10,
            transform=ax.transAxes, color="#a33")
    ax.set_xticks([])
    ax.set_yticks([])


# -- one function per plot: (doc) -> Figure, or None when the family has no rows ----------


def plot_latency(doc: dict[str, Any]) -> Figure | None:
    rows = [r for r in _rows(doc, "latency") if r.get("samples")]
    if not _rows(doc, "latency"):
        return None
    directions = ("one way Pyboard -> server app", "one way server app -> Pyboard",
                  "echo round trip")
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4), sharey=True, layout="constrained")
    legend: dict[str, Any] = {}  # label -> line: one legend for the three panels
    for ax, direction in zip(axes, directions, strict=True):
        these = [r for r in rows if r["name"].startswith(direction)]
        counts = sorted({len(r["samples"]) for r in these})
        ax.set_title(direction + (f" (n = {', '.join(map(str, counts))} probes per curve)"
                                  if counts else ""), fontsize=10)
        if not these:
            _note(ax, "no per-probe samples in this result\n(older JSON: re-run pblink bench)")
            continue
        for r in sorted(these, key=lambda r: (r["params"].get("poll", ""),
                                              not r["params"].get("qos"))):
            vals = sorted(r["samples"])
            ys = [(i + 1) / len(vals) for i in range(len(vals))]
            poll = r["params"].get("poll", "?")
            qos = "qos" if r["params"].get("qos") else "no qos"
            label = f"{'original 100 ms poll' if poll == 'original' else 'this design'}, {qos}"
            (line,) = ax.step(vals, ys, where="post", label=label,
                              linestyle="--" if poll == "original" else "-",
                              color="C0" if r["params"].get("qos") else "C1")
            legend.setdefault(label, line)
        ax.axvline(ORIGINAL_POLL_MS, color="grey", linewidth=0.8, linestyle=":")
        ax.text(ORIGINAL_POLL_MS, 1.02, "100 ms poll", color="grey", fontsize=8, ha="center")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("latency, ms (log)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("fraction of probes at or below")
    if legend:  # below the panels: inside, it would hide the curves
        fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncol=4,
                   fontsize=9, frameon=False)
    _title(fig, doc, "Latency distribution (CDF): this design's poll policy vs the original's")
    return fig


def plot_throughput(doc: dict[str, Any]) -> Figure | None:
    rows = _rows(doc, "throughput")
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, name, unit in ((axes[0], "lines/s", "lines/s"),
                           (axes[1], "payload bytes/s", "payload bytes/s")):
        groups: dict[tuple[str, str, int], list[tuple[int, float, float, float]]] = {}
        for r in rows:
            p = r["params"]
            if r["name"] != name or r["median"] is None or "size" not in p:
                continue
            key = (p["dir"], p["mode"], p["i2c_khz"])
            groups.setdefault(key, []).append((p["size"], r["median"], r["min"], r["max"]))
        for (direction, mode, khz), pts in sorted(groups.items()):
            pts.sort()
            # up and down at one size side by side (a few % apart on the log axis), and
            # told apart by marker shape too: single 100 kHz points have no line style
            xs = [p[0] * (0.95 if direction == "up" else 1.05) for p in pts]
            ys = [p[1] for p in pts]
            err = [[y - (p[2] if p[2] is not None else y) for y, p in zip(ys, pts, strict=True)],
                   [(p[3] if p[3] is not None else y) - y for y, p in zip(ys, pts, strict=True)]]
            ax.errorbar(xs, ys, yerr=err, marker="^" if direction == "up" else "v",
                        markersize=7 if khz >= 400 else 8, capsize=3,
                        linestyle="-" if direction == "up" else "--",
                        color=MODE_COLORS.get(mode, "k"), label=f"{direction}, {mode}, {khz} kHz",
                        markerfacecolor="none" if khz < 400 else None)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("line size, bytes (log)")
        ax.set_ylabel(unit)
        ax.set_title(f"{unit} against line size and I2C clock\n(triangles: up, filled "
                     "400 kHz, hollow 100 kHz)", fontsize=10)
        ax.grid(True, alpha=0.3)
        if groups:
            ax.legend(fontsize=7)
        else:
            _note(ax, f"no {name} rows in this result")
    _title(fig, doc, "Throughput through one device pair (median, bars min..max)")
    return fig


def plot_scale(doc: dict[str, Any]) -> Figure | None:
    rows = _rows(doc, "scale")
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    series: dict[tuple[str, str, int], list[tuple[int, float]]] = {}
    for r in rows:
        p = r["params"]
        if "N" not in p or r["median"] is None:
            continue
        series.setdefault((r["name"], p.get("broker", "?"), p.get("timeout_ms", 0)),
                          []).append((p["N"], r["median"]))
    plots = ((axes[0], ("latency p50", "latency p99"), "end-to-end latency, ms (log)", True),
             (axes[1], ("server CPU utilisation", "broker CPU utilisation"), "CPU, cores",
              False))
    for ax, names, ylabel, logy in plots:
        drawn = 0
        for (name, broker, timeout_ms), pts in sorted(series.items()):
            if name not in names:
                continue
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    linestyle="-" if broker == "mosquitto" else "--",
                    label=f"{name}, {broker}, timeout {timeout_ms} ms")
            drawn += 1
        ax.set_xscale("log")
        if logy and drawn:
            ax.set_yscale("log")
        ax.set_xlabel("device doubles N (log)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if drawn:
            ax.legend(fontsize=7)
        else:
            _note(ax, "no rows with N in this result")
    axes[0].set_title("server app latency against device count", fontsize=10)
    axes[1].set_title("server and broker CPU against device count", fontsize=10)
    _title(fig, doc, "One server process against N device doubles (median)")
    return fig


def plot_esp_heap(doc: dict[str, Any]) -> Figure | None:
    rows = _rows(doc, "esp")
    if not rows and "esp" not in doc.get("families", {}):
        return None
    fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    drawn = 0
    titles = []
    for r in rows:
        series = r.get("series") or {}
        if len(series) < 2:
            continue
        (xname, xs), *ys = series.items()
        for yname, vals in ys:
            ax.plot(xs[: len(vals)], vals, marker=".", color=f"C{drawn}",
                    label=f"{yname}, sampled once a second (one run's series)")
            drawn += 1
        # the row's figure is the peak over every run: shown as what it is, beside the series
        if r.get("median") is not None:
            ax.axhline(r["median"], color=f"C{drawn - 1}", linestyle="--", linewidth=1,
                       label=f"{r['name']}: median of {r.get('runs', '?')} run(s), "
                       f"{r['median']:,.0f} {r.get('unit', '')}".rstrip())
        target = parse_target(str(r.get("target") or ""))
        if target is not None:
            ax.axhline(target[1], color="#a33", linestyle=":", linewidth=1.2,
                       label=f"target {r['target']}")
        titles.append(f"{r['name']} ({r.get('runs', '?')} runs; the series is one of them)")
        ax.set_xlabel(xname.replace("_s", ", s") if xname.endswith("_s") else xname)
    estimate = [r for r in rows if r["name"].startswith("ESP8266 free heap") and r["median"]]
    if drawn:
        ax.set_ylabel("bytes")
        ax.set_ylim(bottom=0)  # heap bars read as amounts: start at zero
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title("; ".join(titles), fontsize=9)
        if estimate:
            est = estimate[0]
            fig.text(0.01, 0.01, f"{est['name']}: {est['median']:,.0f} B "
                     f"({est['params'].get('rule', '')})"
                     + (f", target {est['target']}" if est.get("target") else ""), fontsize=8)
    else:
        error = doc.get("families", {}).get("esp", {}).get("error")
        _note(ax, "no heap series in this result: the esp family recorded none"
              + (f"\n(it failed: {error[:80]})" if error else
                 "\n(older JSON, or its traffic test did not run)"))
    _title(fig, doc, "ESP8266 bridge heap over its traffic test (series as the esp family "
           "records them; unix-port figures are 64-bit)")
    return fig


def plot_recovery(doc: dict[str, Any]) -> Figure | None:
    rows = [r for r in _rows(doc, "recovery") if r["values"] and r["median"] is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(rows) + 1.8))
    names = [r["name"] for r in rows]
    ys = list(range(len(rows)))
    colors = ["#c44" if "server_ok(False)" in n else "#2a7" for n in names]
    ax.barh(ys, [r["median"] for r in rows], color=colors, alpha=0.6)
    for y, r in zip(ys, rows, strict=True):
        ax.plot(r["values"], [y] * len(r["values"]), "k.", markersize=5)
        # right of the axes, not after a dot: the figure is the bar's (median), not a run's
        ax.text(1.01, y, f"median {r['median']:.2f} s", va="center", fontsize=8,
                transform=ax.get_yaxis_transform())
    ax.set_yticks(ys, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (bar: median; dots: each run)")
    ax.grid(True, axis="x", alpha=0.3)
    _title(fig, doc, "Recovery per fault kind: detection (red) and first line delivered (green)")
    return fig


PLOTTED_FAMILIES = ("latency", "throughput", "scale", "esp", "recovery")
PLOTS: dict[str, Callable[[dict[str, Any]], Figure | None]] = {
    "latency": plot_latency,
    "throughput": plot_throughput,
    "scale": plot_scale,
    "esp_heap": plot_esp_heap,
    "recovery": plot_recovery,
}


_NUMBER = (int, float)


def _check_rows(rows: list[Any]) -> str | None:
    """What is wrong with a result's rows (the shape of benchmarks.common.Row.to_json), or
    None. Checked before anything is drawn, so a bad file writes no file at all."""
    for i, r in enumerate(rows):
        where = f"rows[{i}]"
        if not isinstance(r, dict):
            return f"{where} is {type(r).__name__}, not an object"
        for key, kinds, what in (("family", (str,), "a string"), ("name", (str,), "a string"),
                                 ("params", (dict,), "an object")):
            if not isinstance(r.get(key), kinds):
                return f"{where} has no {key!r} {what}"
        for key in ("median", "min", "max"):
            if r.get(key) is not None and not isinstance(r[key], _NUMBER):
                return f"{where} ({r['name']}): {key!r} is not a number"
        for key in ("values", "samples"):
            vals = r.get(key, [])
            if not isinstance(vals, list) or not all(isinstance(v, _NUMBER) for v in vals):
                return f"{where} ({r['name']}): {key!r} is not a list of numbers"
        series = r.get("series", {})
        if not isinstance(series, dict) or not all(
                isinstance(v, list) and all(isinstance(x, _NUMBER) for x in v)
                for v in series.values()):
            return f"{where} ({r['name']}): 'series' is not an object of number lists"
    return None


def write_plots(doc: dict[str, Any], out_dir: Path, stem: str,
                fmt: str = "png", source: str = "result") -> list[Path]:
    """Write every plot the result has data for as ``out_dir/<stem>-<plot>.<fmt>``.

    ``doc``: the bench result as loaded from its JSON; ``source`` names it in errors.
    Returns the files written. Raises PlotError (one line) for an unknown ``fmt`` (one of
    FORMATS), rows of the wrong shape, a folder that cannot be written, and NothingToPlot
    when no row belongs to a plotted family. Every figure is drawn before the first file
    is written, and a failed write removes the files already written: all or nothing."""
    if fmt not in FORMATS:
        raise PlotError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    rows = doc.get("rows")
    if not isinstance(rows, list):
        raise PlotError(f"{source}: not a pblink bench result (no 'rows' list)")
    problem = _check_rows(rows)
    if problem:
        raise PlotError(f"{source}: not a usable bench result: {problem}")
    figures: list[tuple[str, Figure]] = []
    written: list[Path] = []
    try:
        for name, make in PLOTS.items():
            try:
                with plt.rc_context({"svg.fonttype": "none"}):  # SVG text stays searchable
                    fig = make(doc)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
                raise PlotError(f"{source}: the {name} plot cannot use its rows: "
                                f"{type(exc).__name__}: {exc}") from None
            if fig is not None:
                if fig.get_layout_engine() is None:
                    fig.tight_layout()
                figures.append((name, fig))
        if not figures:
            raise NothingToPlot(f"no plottable families in {source} (plots are drawn for "
                                f"{', '.join(PLOTTED_FAMILIES)})")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            for name, fig in figures:
                path = out_dir / f"{stem}-{name}.{fmt}"
                with plt.rc_context({"svg.fonttype": "none"}):
                    fig.savefig(path, dpi=110)
                written.append(path)
        except OSError as exc:
            for path in written:
                path.unlink(missing_ok=True)
            written = []
            raise PlotError(f"cannot write the plots of {source} in {out_dir}: "
                            f"{exc.strerror or exc}") from None
    finally:
        for _, fig in figures:
            plt.close(fig)
    return written


def plot_file(path: Path, out_dir: Path | None = None, fmt: str = "png") -> list[Path]:
    """Plots of the result file ``path``, beside it unless ``out_dir``.

    Raises PlotError (see write_plots) with a one-line reason naming the file."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise PlotError(f"{path}: not a readable bench result: {reason}") from None
    if not isinstance(doc, dict):
        raise PlotError(f"{path}: not a pblink bench result (no 'rows' list)")
    path = Path(path)
    return write_plots(doc, out_dir or path.parent, path.stem, fmt, source=str(path))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plots", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("result", type=Path, help="a bench result JSON file")
    p.add_argument("--out", type=Path, default=None, help="folder (default: beside the JSON)")
    p.add_argument("--format", choices=FORMATS, default="png")
    args = p.parse_args(argv)
    try:
        files = plot_file(args.result, args.out, args.format)
    except PlotError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    for f in files:
        print(f"written {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
