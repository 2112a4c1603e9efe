"""Recovery times after faults, on the virtual bench with the default timings.

One device pair (benchmarks/linkrig.py, its own Mosquitto, or amqtt) with the
Pyboard's and the bridge's *default* timings (boot_wait 1 s, exchange timeout
1 s, keepalive timeout 4 s, sync timeout 10 s; the bridge's defaults: WiFi
stable 3 s before the broker, reconnect 1 s doubling to 30 s), not the
bench's shortened ones. The agent streams qos lines (wait=True) every 50 ms;
the server app (this process) timestamps each arrival. Per run, in turn:

- WiFi: cut, wait until the Pyboard reports the server down, 3 s outage,
  restore; figure = WiFi restored -> first line delivered to the server app;
- ESP8266 killed (SIGKILL, no warning): figure = kill -> first line delivered
  after the Pyboard noticed (it pulses reset, resyncs, the bridge reconnects);
- broker restarted (down 2 s): figure = broker listening again -> first line
  delivered (both the bridge and the LinkServer reconnect with backoff).

Also: fault -> the Pyboard's ``server_ok(False)`` (detection time).
The simulated WiFi join takes 0.05 s (a real one takes seconds).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.common import Context, Row
from benchmarks.linkrig import LinkRig, link_rig
from virtual_bench.faults import FAULTS

FAMILY = "recovery"
DESCRIPTION = "WiFi restored / ESP8266 killed / broker restarted -> first line delivered"

DEFAULT_TIMINGS: dict[str, Any] = {
    "boot_wait_ms": 1000,
    "exchange_timeout_ms": 1000,
    "keepalive_timeout_ms": 4000,
    "sync_timeout_ms": 10000,
}


async def first_rx_after(rig: LinkRig, t: float, timeout: float = 90.0) -> float:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        later = [v for v in rig.side.rx_s.values() if v > t]
        if later:
            return min(later)
        await asyncio.sleep(0.02)
    raise TimeoutError(f"no line delivered within {timeout} s")


async def steady(rig: LinkRig, seconds: float = 2.0) -> None:
    """Lines flowing again: one delivered in the last 0.5 s, then `seconds` more."""
    await first_rx_after(rig, time.monotonic())
    await asyncio.sleep(seconds)


async def detect(rig: LinkRig, mark: int, t0: float) -> float:
    _i, ln, _m = await rig.wait_line(r"^AGENT down$", timeout=60, since=mark)
    return ln.t - t0


async def _wifi(rig: LinkRig, out: dict[str, float]) -> None:
    assert rig.bench is not None
    mark, t0 = rig.mark(), time.monotonic()
    await rig.bench.cut_wifi(None)
    out["WiFi cut -> server_ok(False)"] = await detect(rig, mark, t0)
    await asyncio.sleep(3.0)
    t_back = time.monotonic()
    await rig.bench.restore_wifi()
    out["WiFi restored -> first line delivered"] = await first_rx_after(rig, t_back) - t_back


async def _crash(rig: LinkRig, out: dict[str, float]) -> None:
    assert rig.bench is not None
    mark, t0 = rig.mark(), time.monotonic()
    await rig.bench.crash_esp()
    noticed = await detect(rig, mark, t0)
    out["ESP8266 killed -> server_ok(False)"] = noticed
    out["ESP8266 killed -> first line delivered"] = (
        await first_rx_after(rig, t0 + noticed) - t0)


async def _broker(rig: LinkRig, out: dict[str, float]) -> None:
    mark, t0 = rig.mark(), time.monotonic()
    await rig.broker.stop()
    out["broker stopped -> server_ok(False)"] = await detect(rig, mark, t0)
    await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - t0)))
    await rig.broker.start()
    t_back = time.monotonic()
    out["broker back -> first line delivered"] = await first_rx_after(rig, t_back) - t_back


# The fault kinds measured, in turn: keys of the table in virtual_bench/faults.py
# (tests/test_faults.py checks that they are). Each is injected here by hand, not
# by the table's injector, so that the outage's end is this benchmark's to time.
MEASURED: dict[str, Callable[[LinkRig, dict[str, float]], Awaitable[None]]] = {
    "wifi": _wifi, "crash": _crash, "broker": _broker}


async def one_run(ctx: Context) -> dict[str, float]:
    out: dict[str, float] = {}
    async with link_rig(ctx, "recovery", settings={} if ctx.tiny else DEFAULT_TIMINGS) as rig:
        assert rig.bench is not None
        await rig.command("!stream 1 50")
        await steady(rig)
        for i, measure in enumerate(MEASURED.values()):
            if i:
                await steady(rig)
            await measure(rig, out)
    return out


async def run(ctx: Context) -> list[Row]:
    runs: dict[str, list[float]] = {}
    for r in range(ctx.repeats):
        kinds = ", ".join(FAULTS[kind].label for kind in MEASURED)
        ctx.progress(f"recovery: run {r + 1}/{ctx.repeats} ({kinds})")
        for key, v in (await one_run(ctx)).items():
            runs.setdefault(key, []).append(v)
    kind = "mosquitto" if ctx.mosquitto else "amqtt"
    return [Row(FAMILY, key, "s", vals, {"broker": kind, "timings": "defaults"})
            for key, vals in runs.items()]
