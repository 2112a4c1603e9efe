"""Link throughput through one device pair on the virtual bench.

The agent (benchmarks/device/pb_bench_agent.py) writes lines of 16, 64 and
256 bytes as fast as ``write(line, qos, wait)`` lets it for a few seconds
(up: Pyboard -> server app); the server app does the same with
``conn.write`` (down). Combinations: qos+wait (every write waits for the
previous ack: one line per round trip), qos without wait (the sender window,
8 on the Pyboard and 16 on the server, fills), no qos (wait has no meaning
without qos). Non-qos lines up are back-pressured by the I2C link queue; down
nothing back-pressures them, so the server offers twice the rate that qos
without wait achieved and the fraction delivered is reported when below 1.
The rate is measured where the lines arrive, on one clock:
(lines - 1) / (last arrival - first arrival), for up on the server's clock,
for down on the Pyboard's ``ticks_ms``.

From the bench's counters over the same interval: I2C bytes on the bus per
payload byte delivered (headers, CRC, addressing, polls, acks and keepalives
included), and bus utilisation = bus bytes x 9 bits / clock / elapsed, at
400 kHz (the bench's default) and, for 64-byte lines, 100 kHz.

For 64-byte lines also: I2C exchanges per second (ack rising edges) and the CPU
each process used during the phase (the Pyboard's and the ESP8266's
MicroPython processes, and this harness process, which also runs the server
app): where the time goes.

Server side: a LinkServer in this process with a state file (fsync), as the
demo server app runs.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from benchmarks import hw_model
from benchmarks.common import Broker, Context, Row, proc_cpu_seconds
from benchmarks.linkrig import LinkRig, link_rig

FAMILY = "throughput"
DESCRIPTION = "lines/s and bytes/s through one pair; I2C bytes per payload byte"

SIZES = (16, 64, 256)
MODES = (("qos+wait", True, True), ("qos", True, False), ("noqos", False, False))


def _bus(rig: LinkRig) -> tuple[int, float]:
    assert rig.bench is not None
    return rig.bench.stats["i2c_bus_bytes"], time.monotonic()


class Usage:
    """Exchanges (ack rising edges) and CPU of the three processes over a phase."""

    def __init__(self, rig: LinkRig, edges: bool = False) -> None:
        self.rig = rig
        self.edges: list[tuple[float, str, int]] = []
        self._restore: Any = None
        if edges:
            self._hook()
        self.start = self._sample()

    def _hook(self) -> None:
        """Timestamp every syn/ack level change (wraps this bench's wire settling)."""
        bench = self.rig.bench
        assert bench is not None
        original = bench._settle
        edges = self.edges

        def settle() -> None:
            before = (bench.levels["syn"], bench.levels["ack"])
            original()
            now = time.monotonic()
            if bench.levels["syn"] != before[0]:
                edges.append((now, "syn", bench.levels["syn"]))
            if bench.levels["ack"] != before[1]:
                edges.append((now, "ack", bench.levels["ack"]))

        bench._settle = settle  # type: ignore[method-assign]
        self._restore = original

    def segments(self) -> dict[str, float]:
        """Median ms of each handshake step: syn up -> ack up (the ESP8266's four
        bus transactions), ack up -> syn down (the Pyboard reads the reply),
        syn down -> ack down, ack down -> next syn up (the poll wait)."""
        names = {("syn", 1): "syn up -> ack up", ("ack", 1): "ack up -> syn down",
                 ("syn", 0): "syn down -> ack down", ("ack", 0): "ack down -> next syn up"}
        spans: dict[str, list[float]] = {v: [] for v in names.values()}
        for (t0, w0, l0), (t1, _w1, _l1) in zip(self.edges, self.edges[1:], strict=False):
            spans[names[(w0, l0)]].append((t1 - t0) * 1000)
        return {f"exchange step: {k}": statistics.median(v) for k, v in spans.items() if v}

    def _sample(self) -> tuple[float, int, float, float, float, int]:
        bench = self.rig.bench
        assert bench is not None
        cpu = []
        for board in ("pyboard", "esp8266"):
            proc = bench.procs[board].proc
            cpu.append((proc_cpu_seconds(proc.pid) or 0.0) if proc is not None else 0.0)
        return (time.monotonic(), bench.stats["ack_edges"], cpu[0], cpu[1],
                time.process_time(), bench.sniffer.loaded)

    def figures(self) -> dict[str, float]:
        end = self._sample()
        if self._restore is not None:
            self.rig.bench._settle = self._restore  # type: ignore[union-attr, method-assign]
            self._restore = None
        dt = max(1e-9, end[0] - self.start[0])
        return {**self.segments(), "exchanges/s": (end[1] - self.start[1]) / dt,
                "loaded exchanges/s": (end[5] - self.start[5]) / dt,
                "cpu pyboard": (end[2] - self.start[2]) / dt,
                "cpu esp8266": (end[3] - self.start[3]) / dt,
                "cpu harness+server": (end[4] - self.start[4]) / dt}


async def measure_up(rig: LinkRig, qos: bool, wait: bool, size: int,
                     ms: int) -> dict[str, float]:
    side = rig.side
    side.reset_burst()
    mark = rig.mark()
    b0, t0 = _bus(rig)
    usage = Usage(rig, edges=size == 64 and not qos)
    await rig.command(f"!burst {int(qos)} {int(wait)} {size} {ms}")
    _i, _ln, m = await rig.wait_line(r"^BSENT (\d+)$", timeout=ms / 1000 + 60, since=mark)
    sent = int(m.group(1))
    use = usage.figures()
    deadline = time.monotonic() + 10
    while side.b_count < sent and time.monotonic() < deadline:  # noqa: ASYNC110 - the tail
        await asyncio.sleep(0.05)
    b1, t1 = _bus(rig)
    span = side.b_last - side.b_first
    got = side.b_count
    rate = (got - 1) / span if got > 1 and span > 0 else 0.0
    return {"lines/s": rate, "bytes/s": rate * size, "delivered": got / max(1, sent),
            "bus_bytes_per_payload_byte": (b1 - b0) / max(1, side.b_bytes),
            "bus_util": (b1 - b0) * 9 / rig.i2c_clock_hz / (t1 - t0), **use}


async def measure_down(rig: LinkRig, qos: bool, wait: bool, size: int, ms: int,
                       offered: float | None = None) -> dict[str, float]:
    """``offered``: lines/s to send at (non-qos lines, which nothing back-pressures)."""
    conn = rig.conn
    b0, t0 = _bus(rig)
    usage = Usage(rig)
    sent = 0
    pad = "z" * size
    start = time.monotonic()
    end = start + ms / 1000
    while time.monotonic() < end:
        sent += 1
        head = f"d {sent} "
        await conn.write(head + pad[len(head):], qos=qos, wait=wait)
        if offered:
            ahead = start + sent / offered - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
    await conn.drain()
    use = usage.figures()
    await asyncio.sleep(0.3 if qos else 1.0)  # unacknowledged lines: let them land
    mark = rig.mark()
    await rig.command("!count")
    _i, _ln, m = await rig.wait_line(r"^DCOUNT (\d+) (-?\d+) (-?\d+)$", timeout=60, since=mark)
    b1, t1 = _bus(rig)
    got, first, last = int(m.group(1)), int(m.group(2)), int(m.group(3))
    span = ((last - first) & 0x3FFFFFFF) / 1000  # ticks_ms wraps at 2**30
    rate = (got - 1) / span if got > 1 and span > 0 else 0.0
    return {"lines/s": rate, "bytes/s": rate * size, "delivered": got / max(1, sent),
            "bus_bytes_per_payload_byte": (b1 - b0) / max(1, got * size),
            "bus_util": (b1 - b0) * 9 / rig.i2c_clock_hz / (t1 - t0), **use}


async def idle_util(rig: LinkRig, seconds: float = 2.0) -> float:
    await asyncio.sleep(0.5)  # past idle_after_ms
    b0, t0 = _bus(rig)
    await asyncio.sleep(seconds)
    b1, t1 = _bus(rig)
    return (b1 - b0) * 9 / rig.i2c_clock_hz / (t1 - t0)


async def run(ctx: Context) -> list[Row]:
    ms = 300 if ctx.tiny else 1000 if ctx.quick else 1500
    kind = "mosquitto" if ctx.mosquitto else "amqtt"
    runs: dict[tuple[Any, ...], list[float]] = {}

    def add(key: tuple[Any, ...], figs: dict[str, float]) -> None:
        for name, v in figs.items():
            runs.setdefault((*key, name), []).append(v)

    broker = Broker(kind, ctx.subdir("throughput-broker"), ctx.mosquitto)
    await broker.start()
    try:
        for r in range(ctx.repeats):
            for clock in ((400_000,) if ctx.tiny else (400_000, 100_000)):
                ctx.progress(f"throughput: run {r + 1}/{ctx.repeats}, I2C {clock // 1000} kHz")
                async with link_rig(ctx, f"tp-{clock}", broker=broker,
                                    i2c_clock_hz=clock) as rig:
                    add((clock, "idle", 0, "-"),
                        {"bus_util": await idle_util(rig, 0.5 if ctx.tiny else 2.0)})
                    sizes = SIZES if clock == 400_000 and not ctx.tiny else (64,)
                    for size in sizes:
                        for mode, qos, wait in MODES:
                            add((clock, "up", size, mode),
                                await measure_up(rig, qos, wait, size, ms))
                            offered = None
                            if not qos:  # offer twice what qos (no wait) carried
                                prev = runs.get((clock, "down", size, "qos", "lines/s"))
                                offered = 2 * max(20.0, prev[-1] if prev else 100.0)
                            add((clock, "down", size, mode),
                                await measure_down(rig, qos, wait, size, ms, offered))
    finally:
        await broker.stop()
    rows: list[Row] = []
    for key, vals in runs.items():
        clock, direction, size, mode, name = key
        params = {"dir": direction, "size": size, "mode": mode, "i2c_khz": clock // 1000}
        if direction == "idle":
            rows.append(Row(FAMILY, "bus utilisation, idle link", "fraction", vals,
                            {"i2c_khz": clock // 1000}))
            continue
        if name == "delivered":
            if min(vals) < 1.0:
                rows.append(Row(FAMILY, "fraction of lines delivered", "fraction", vals, params,
                                note="non-qos lines may be dropped under load"))
            continue
        if name == "lines/s":
            target = ">= 100" if (size == 64 and clock == 400_000) else ""
            rows.append(Row(FAMILY, "lines/s", "lines/s", vals, params, target=target))
        elif name == "bytes/s":
            rows.append(Row(FAMILY, "payload bytes/s", "B/s", vals, params))
        elif name == "bus_bytes_per_payload_byte":
            if size == 64 or direction == "up":
                rows.append(Row(FAMILY, "I2C bus bytes per payload byte", "B/B", vals, params))
        elif name == "bus_util":
            if size == 64:
                rows.append(Row(FAMILY, "bus utilisation", "fraction", vals, params))
        elif size == 64 and clock == 400_000:  # where the time goes, for one size
            unit = ("exch/s" if name.endswith("exchanges/s")
                    else "ms" if name.startswith("exchange step") else "cores")
            rows.append(Row(FAMILY, f"{name} (CPU)" if unit == "cores" else name, unit, vals,
                            params))
    return rows + modelled_rows(runs)


def modelled_rows(runs: dict[tuple[Any, ...], list[float]]) -> list[Row]:
    """Lines/s of 64-byte lines one way on the modelled hardware (benchmarks/hw_model.py).

    Per run: the loaded exchanges (a frame either way carried payload) the
    bench needed per line and the bus bytes each carried, both properties of
    the protocol, with each exchange's duration from the model instead of the
    bench's. Empty polls are left out: they happen when the bench's line source
    (about 100 lines/s from the scripted app) is slower than the link, and a
    link kept busy has none; counting them would make a faster Responder
    look slower."""
    rows: list[Row] = []
    for direction in ("up", "down"):
        for mode in ("qos", "noqos"):
            key = (400_000, direction, 64, mode)
            lines = runs.get((*key, "lines/s"), [])
            exch = runs.get((*key, "exchanges/s"), [])
            loaded = runs.get((*key, "loaded exchanges/s"), [])
            ratio = runs.get((*key, "bus_bytes_per_payload_byte"), [])
            for scl in (hw_model.SCL_NOMINAL_HZ, hw_model.SCL_SLOW_HZ):
                vals = []
                for lps, eps, leps, bpb in zip(lines, exch, loaded, ratio, strict=False):
                    if lps <= 0 or leps <= 0:
                        continue
                    # bus bytes per loaded exchange: the empty polls' own bytes taken out
                    bus = bpb * 64 * lps - max(0.0, eps - leps) * hw_model.BUS_OVERHEAD
                    per_exchange = bus / leps
                    vals.append(lps / leps * 1000 / hw_model.exchange_ms(per_exchange, scl.value))
                rows.append(Row(
                    FAMILY, "lines/s, modelled hardware", "lines/s", vals,
                    {"dir": direction, "size": 64, "mode": mode,
                     "scl_khz": int(scl.value) // 1000, "model": "hw_model"},
                    target=">= 100",
                    note=f"bench's loaded exchanges per line and bus bytes per exchange, each "
                    f"exchange timed by benchmarks/hw_model.py; SoftI2C rate: {scl.source}"))
    return rows
