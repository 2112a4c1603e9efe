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

FORMATS = ("png", "svg")
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
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), sharey=True)
    for ax, direction in zip(axes, directions, strict=True):
        ax.set_title(direction, fontsize=10)
        these = [r for r in rows if r["name"].startswith(direction)]
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
            ax.step(vals, ys, where="post", label=f"{label} (n={len(vals)})",
                    linestyle="--" if poll == "original" else "-",
                    color="C0" if r["params"].get("qos") else "C1")
        ax.axvline(ORIGINAL_POLL_MS, color="grey", linewidth=0.8, linestyle=":")
        ax.text(ORIGINAL_POLL_MS, 1.02, "100 ms poll", color="grey", fontsize=8, ha="center")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("latency, ms (log)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="center right")
    axes[0].set_ylabel("fraction of probes at or below")
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
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            err = [[y - p[2] for y, p in zip(ys, pts, strict=True)],
                   [p[3] - y for y, p in zip(ys, pts, strict=True)]]
            ax.errorbar(xs, ys, yerr=err, marker="o" if khz >= 400 else "s", capsize=3,
                        linestyle="-" if direction == "up" else "--",
                        color=MODE_COLORS.get(mode, "k"), label=f"{direction}, {mode}, {khz} kHz",
                        markerfacecolor="none" if khz < 400 else None)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("line size, bytes (log)")
        ax.set_ylabel(unit)
        ax.set_title(f"{unit} against line size and I2C clock", fontsize=10)
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
    fig, ax = plt.subplots(figsize=(10, 4.8))
    drawn = 0
    for r in rows:
        series = r.get("series") or {}
        if len(series) < 2:
            continue
        (xname, xs), *ys = series.items()
        for yname, vals in ys:
            ax.plot(xs[: len(vals)], vals, marker=".", label=f"{r['name']}: {yname}")
            drawn += 1
        ax.set_xlabel(xname.replace("_s", ", s") if xname.endswith("_s") else xname)
    estimate = [r for r in rows if r["name"].startswith("ESP8266 free heap") and r["median"]]
    if drawn:
        ax.set_ylabel("bytes")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        if estimate:
            ax.text(0.01, 0.02, f"{estimate[0]['name']}: {estimate[0]['median']:,.0f} B "
                    f"({estimate[0]['params'].get('rule', '')})", transform=ax.transAxes,
                    fontsize=8)
    else:
        error = doc.get("families", {}).get("esp", {}).get("error")
        _note(ax, "no heap series in this result: the esp family recorded none"
              + (f"\n(it failed: {error[:80]})" if error else
                 "\n(older JSON, or its traffic test did not run)"))
    _title(fig, doc, "ESP8266 bridge heap over its traffic test (series as the esp family "
           "records them; unix-port figures are 64-bit)")
    return fig


def plot_recovery(doc: dict[str, Any]) -> Figure | None:
    rows = [r for r in _rows(doc, "recovery") if r["runs"]]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(rows) + 1.8))
    names = [r["name"] for r in rows]
    ys = list(range(len(rows)))
    colors = ["#c44" if "server_ok(False)" in n else "#2a7" for n in names]
    ax.barh(ys, [r["median"] for r in rows], color=colors, alpha=0.6)
    for y, r in zip(ys, rows, strict=True):
        ax.plot(r["values"], [y] * len(r["values"]), "k.", markersize=5)
        ax.text(max(r["values"]), y, f"   {r['median']:.2f} s", va="center", fontsize=8)
    ax.set_yticks(ys, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (bar: median; dots: each run)")
    ax.grid(True, axis="x", alpha=0.3)
    _title(fig, doc, "Recovery per fault kind: detection (red) and first line delivered (green)")
    return fig


PLOTS: dict[str, Callable[[dict[str, Any]], Figure | None]] = {
    "latency": plot_latency,
    "throughput": plot_throughput,
    "scale": plot_scale,
    "esp_heap": plot_esp_heap,
    "recovery": plot_recovery,
}


def write_plots(doc: dict[str, Any], out_dir: Path, stem: str,
                fmt: str = "png") -> list[Path]:
    """Write every plot the result has data for as ``out_dir/<stem>-<plot>.<fmt>``.

    ``doc``: the bench result as loaded from its JSON. Returns the files written
    (none for a result without rows of the plotted families). ValueError for an
    unknown ``fmt`` (one of FORMATS)."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in PLOTS.items():
        with plt.rc_context({"svg.fonttype": "none"}):  # SVG text stays searchable text
            fig = make(doc)
        if fig is None:
            continue
        try:
            fig.tight_layout()
            path = out_dir / f"{stem}-{name}.{fmt}"
            with plt.rc_context({"svg.fonttype": "none"}):
                fig.savefig(path, dpi=110)
            written.append(path)
        finally:
            plt.close(fig)
    return written


def plot_file(path: Path, out_dir: Path | None = None, fmt: str = "png") -> list[Path]:
    """Plots of the result file ``path``, beside it unless ``out_dir``.

    Raises ValueError with a one-line reason when the file is not a bench result."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable bench result: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise ValueError(f"{path}: not a pblink bench result (no 'rows' list)")
    return write_plots(doc, out_dir or path.parent, path.stem, fmt)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plots", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("result", type=Path, help="a bench result JSON file")
    p.add_argument("--out", type=Path, default=None, help="folder (default: beside the JSON)")
    p.add_argument("--format", choices=FORMATS, default="png")
    args = p.parse_args(argv)
    try:
        files = plot_file(args.result, args.out, args.format)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for f in files:
        print(f"written {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
