"""Link latency on the virtual bench: this design's poll policy against the original's.

Per run, one device pair (benchmarks/linkrig.py) runs the agent's echo probe
for qos=True and qos=False: the Pyboard prints ``W i`` and writes ``x i``; the
server app (in this process) reads it and writes ``e i`` back with the same
qos; the Pyboard prints ``E i``. Probes are spaced a random 300
to 450 ms apart: longer than ``idle_after_ms`` plus a round trip, so every probe
starts from the idle poll (as sparse traffic does), no line waits for an earlier
one, and the random spacing keeps probes from locking to the poll phase). On the harness clock:

- up (Pyboard -> server app): ``W i`` printed -> the server's readline returned;
- down (server app -> Pyboard): the server's write() called -> ``E i`` printed;
- echo round trip: ``W i`` -> ``E i``.

Each run gives p50 and p99 of each; each figure is the median (and spread)
of those over the runs.

Two configurations:

- ``default``: the pb_settings defaults of the poll policy (PROTOCOL.md 1.5:
  1 ms while traffic flows, 10 ms when idle, idle after 200 ms);
- ``original``: the original pb_link's I2C link, emulated with
  ``idle_poll_ms = active_poll_ms = 100``: the Initiator starts one exchange
  every 100 ms whatever the traffic. One line per exchange needs no extra
  setting: an exchange carries at most one chunk (<= 120 bytes) each way and a
  chunk belongs to one link message, so a line of up to ~100 characters is one
  exchange, as in the original (its 200-byte buffer held one line). What is NOT
  emulated: the original's TCP client/server link and its 200-400 ms acks (the
  MQTT path here is the same in both configurations), and its blocking
  pyb.I2C transfers (both use I2CTarget memory). So the ratio isolates the
  I2C poll policy.

The other timings are the bench's short ones (virtual_bench.harness.BENCH_SETTINGS),
which only matter for faults.
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks import hw_model
from benchmarks.common import Broker, Context, Row, pct
from benchmarks.linkrig import link_rig
from benchmarks.throughput import Usage

# A probe's link message (q|<session>|i|i|x i) and its ack, bus bytes of its exchange
PROBE_BUS_BYTES = hw_model.BUS_OVERHEAD + 40
# the handshake steps of an exchange on the bench, poll wait excluded
CORE_STEPS = ("exchange step: syn up -> ack up", "exchange step: ack up -> syn down",
              "exchange step: syn down -> ack down")

FAMILY = "latency"
# Probe spacing: longer than idle_after_ms (200) plus a round trip, so every probe
# starts from the idle poll, as a line every second or so would (the demo's pace).
SPACING_MS = (300, 450)
DESCRIPTION = "one-way and echo latency, default poll vs the original's 100 ms poll"

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "original": {"idle_poll_ms": 100, "active_poll_ms": 100},
}


async def one_run(ctx: Context, broker: Broker, config: str, n: int,
                  samples: dict[tuple[str, str, str], list[float]] | None = None,
                  **rig_kw: Any) -> dict[str, dict[str, float]]:
    """{qos: {figure: ms}} for one bench start; every probe's ms is appended to
    ``samples[(config, qos, direction)]`` when given (for the CDF plot)."""
    out: dict[str, dict[str, float]] = {}
    spacing = SPACING_MS
    async with link_rig(ctx, f"lat-{config}", broker=broker, settings=CONFIGS[config],
                        **rig_kw) as rig:
        for qos in (True, False):
            usage = Usage(rig, edges=True) if config == "default" else None
            rig.side.echo_qos = qos
            rig.side.rx_x.clear()
            rig.side.tx_e.clear()
            mark = rig.mark()
            await rig.command(f"!echo {int(qos)} {n} {spacing[0]} {spacing[1]}")
            await rig.wait_line(r"^ECHODONE$", timeout=n * 4 + 30, since=mark)
            w = rig.times("W", mark)
            e = rig.times("E", mark)
            up = [rig.side.rx_x[i] - w[i] for i in w if i in rig.side.rx_x]
            down = [e[i] - rig.side.tx_e[i] for i in e if i in rig.side.tx_e]
            rtt = [e[i] - w[i] for i in e if i in w]
            fig = {}
            for name, vals in (("up", up), ("down", down), ("echo", rtt)):
                fig[f"{name} p50"] = pct(vals, 0.5) * 1000
                fig[f"{name} p99"] = pct(vals, 0.99) * 1000
                if samples is not None:
                    samples.setdefault((config, "qos" if qos else "noqos", name), []).extend(
                        round(v * 1000, 3) for v in vals)
            fig["delivered"] = len(rtt) / n
            if usage is not None:
                steps = usage.figures()
                if all(k in steps for k in CORE_STEPS):
                    fig["bench exchange"] = sum(steps[k] for k in CORE_STEPS)
            out["qos" if qos else "noqos"] = fig
    return out


async def run(ctx: Context) -> list[Row]:
    n = 3 if ctx.tiny else 12 if ctx.quick else 20
    kind = "mosquitto" if ctx.mosquitto else "amqtt"
    runs: dict[tuple[str, str, str], list[float]] = {}
    samples: dict[tuple[str, str, str], list[float]] = {}
    broker = Broker(kind, ctx.subdir("latency-broker"), ctx.mosquitto)
    await broker.start()
    try:
        for r in range(ctx.repeats):
            for config in CONFIGS:
                ctx.progress(f"latency: run {r + 1}/{ctx.repeats}, {config} poll, {n} probes "
                             "per qos")
                res = await one_run(ctx, broker, config, n, samples)
                for q, figs in res.items():
                    for fname, v in figs.items():
                        runs.setdefault((config, q, fname), []).append(v)
    finally:
        await broker.stop()
    rows: list[Row] = []
    targets = {("default", "qos", "echo p50"): "< 50"}
    for (config, q, fname), vals in runs.items():
        if fname in ("delivered", "bench exchange"):
            continue
        direction, stat = fname.split()
        label = {"up": "one way Pyboard -> server app", "down": "one way server app -> Pyboard",
                 "echo": "echo round trip"}[direction]
        rows.append(Row(FAMILY, f"{label} {stat}", "ms", vals,
                        {"poll": config, "qos": q == "qos", "broker": kind},
                        target=targets.get((config, q, fname), ""),
                        samples=samples.get((config, q, direction), []) if stat == "p50"
                        else []))
    # the ratio original/default of the medians, per figure
    for q in ("qos", "noqos"):
        for fname in ("up p50", "down p50", "echo p50", "echo p99"):
            d = runs.get(("default", q, fname))
            o = runs.get(("original", q, fname))
            if d and o:
                ratios = [ov / dv for ov, dv in zip(o, d, strict=False) if dv > 0]
                rows.append(Row(FAMILY, f"ratio original/default {fname}", "x", ratios,
                                {"qos": q == "qos", "broker": kind}))
    rows += modelled_rows(runs, kind)
    lost = [v for (c, q, f), vals in runs.items() if f == "delivered" for v in vals]
    if lost and min(lost) < 1.0:
        rows[0].note = f"some probes got no echo (delivered fraction min {min(lost):.2f})"
    return rows


def modelled_rows(runs: dict[tuple[str, str, str], list[float]], kind: str) -> list[Row]:
    """Echo round trip p50 on the modelled hardware (benchmarks/hw_model.py).

    The round trip crosses the link twice (the probe up, the echo down): each
    run's raw p50 minus two of the bench's exchanges (syn up to ack down, median
    of that run) plus two modelled ones. The poll waits stay: they are the
    protocol's own timing. The broker, the server app and the ESP8266's MQTT
    client are the bench's (loopback, this machine): WiFi airtime is not in it.
    """
    rows: list[Row] = []
    for q in ("qos", "noqos"):
        raw = runs.get(("default", q, "echo p50"), [])
        bench = runs.get(("default", q, "bench exchange"), [])
        bench_ex = statistics.median(bench) if bench else None
        for scl in (hw_model.SCL_NOMINAL_HZ, hw_model.SCL_SLOW_HZ):
            model_ex = hw_model.exchange_ms(PROBE_BUS_BYTES, scl.value, poll=False)
            vals = [v - 2 * bench_ex + 2 * model_ex for v in raw] if bench_ex else []
            rows.append(Row(
                FAMILY, "echo round trip p50, modelled hardware", "ms", vals,
                {"poll": "default", "qos": q == "qos", "broker": kind,
                 "scl_khz": int(scl.value) // 1000, "model": "hw_model"},
                target="< 50" if q == "qos" else "",
                note=f"raw p50 - 2 x bench exchange ({bench_ex or 0:.1f} ms) + 2 x modelled "
                f"exchange ({model_ex:.1f} ms, benchmarks/hw_model.py); SoftI2C rate: "
                f"{scl.source}"))
    return rows
