"""A load-generator process of the scale benchmark: many device doubles in one loop.

``python -m benchmarks.scale_load --port P --first F --count C``

Starts ``DeviceDouble("d<F>")`` .. ``DeviceDouble("d<F+C-1>")`` (virtual_bench/
device_double.py: the protocol-level double of an ESP8266 + Pyboard pair) and
waits until every one sees the server application (``server_ok``); prints
``READY <connected> <seconds>``. On ``go T0 SECONDS`` (stdin; T0 a
``time.monotonic()`` value, one clock for all processes) each double writes
one qos line per second (qos=True, wait=True) from T0 + a random phase until
T0 + SECONDS; a line is ``<seq> <time.monotonic_ns()>`` taken just before
``write()``. Then it waits up to --drain seconds for every line to be
acknowledged and prints ``RESULT {json}``. READY counts the doubles that saw
the server (``server_ok``) at least once within --ready-s: lines scheduled, written and
acknowledged, how late each write started against its schedule (the
generator's own lag: if it is large, the generator is the bottleneck), and
this process's CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import resource
import sys
import time
from typing import Any

from benchmarks.common import peak_rss_kib
from virtual_bench.device_double import DeviceDouble


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def loop_probe(until: float, out: list[float]) -> None:
    """Append how late this event loop runs a 50 ms timer (s) until ``until`` (monotonic)."""
    while time.monotonic() < until:
        t = time.monotonic()
        await asyncio.sleep(0.05)
        out.append(time.monotonic() - t - 0.05)


def lag_figures(lag: list[float], loop_lag: list[float]) -> dict[str, float]:
    """The generator's own lateness, in ms: write start against schedule, and loop lag."""
    lag, loop_lag = sorted(lag), sorted(loop_lag)

    def q(p: float) -> float:
        return lag[min(len(lag) - 1, int(p * len(lag)))] if lag else 0.0

    return {
        "lag_p50_ms": q(0.5) * 1000,
        "lag_p99_ms": q(0.99) * 1000,
        "lag_max_ms": (lag[-1] if lag else 0.0) * 1000,
        "loop_lag_p99_ms": (loop_lag[int(0.99 * (len(loop_lag) - 1))] if loop_lag else 0) * 1000,
    }


def generator_arguments(description: str | None, tick_ms: int) -> argparse.ArgumentParser:
    """The command line both generators take (benchmarks/scale.py starts them)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--root", default="pblink")
    p.add_argument("--timeout-ms", type=int, default=1500)
    p.add_argument("--tick-ms", type=int, default=tick_ms)
    p.add_argument("--ready-s", type=float, default=120.0)
    p.add_argument("--drain", type=float, default=10.0)
    return p


async def writer(dev: DeviceDouble, t0: float, seconds: float, res: dict[str, Any]) -> None:
    phase = random.random()
    k = 0
    while True:
        due = t0 + phase + k
        if due >= t0 + seconds:
            return
        k += 1
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        res["scheduled"] += 1
        start = time.monotonic()
        res["lag"].append(start - due)
        await dev.write(f"{k} {time.monotonic_ns()}")
        res["written"] += 1


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    t_start = time.monotonic()
    devs = [DeviceDouble(f"d{i}", "127.0.0.1", args.port, root=args.root,
                         timeout_ms=args.timeout_ms, tick_ms=args.tick_ms,
                         reconnect_min=0.5, reconnect_max=5.0)
            for i in range(args.first, args.first + args.count)]
    for i, d in enumerate(devs):
        await d.start()
        if i % 50 == 49:
            await asyncio.sleep(0.01)  # let CONNACKs in: a connect storm is not the test
    waits = [asyncio.create_task(d.wait_server()) for d in devs]
    await asyncio.wait(waits, timeout=args.ready_s)
    for w in waits:
        w.cancel()
    ok = sum(1 for d in devs if d.stats.get("received", 0) > 0)  # the server answered it
    print(f"READY {ok} {time.monotonic() - t_start:.2f}", flush=True)
    cmd = (await loop.run_in_executor(None, sys.stdin.readline)).split()
    if not cmd or cmd[0] != "go":
        for d in devs:
            await d.close()
        return
    t0, seconds = float(cmd[1]), float(cmd[2])
    res: dict[str, Any] = {"scheduled": 0, "written": 0, "lag": []}
    cpu0 = cpu_s()
    loop_lag: list[float] = []

    probe_task = asyncio.create_task(loop_probe(t0 + seconds, loop_lag))
    tasks = [asyncio.create_task(writer(d, t0, seconds, res)) for d in devs]
    _done, pending = await asyncio.wait(tasks, timeout=seconds + args.drain)
    for t in pending:
        t.cancel()
    cpu_window = cpu_s() - cpu0
    probe_task.cancel()
    t_end = time.monotonic()
    drain_deadline = t_end + args.drain
    while time.monotonic() < drain_deadline and any(d.in_flight for d in devs):  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    out = {
        "count": len(devs),
        "server_ok_at_go": ok,
        "scheduled": res["scheduled"],
        "written": res["written"],
        "unacked_after_drain": sum(d.in_flight for d in devs),
        "blocked_writes": len(pending),
        **lag_figures(res["lag"], loop_lag),
        "cpu_s_window": cpu_window,
        "wall_s_window": t_end - t0,
        "retransmitted": sum(d.stats.get("retransmitted", 0) for d in devs),
        "published": sum(d.stats.get("published", 0) for d in devs),
        "received": sum(d.stats.get("received", 0) for d in devs),
        "connects": sum(d.stats.get("connects", 0) for d in devs),
        "maxrss_kib": peak_rss_kib(),  # VmHWM: ru_maxrss would be the runner's
    }
    print("RESULT " + json.dumps(out), flush=True)
    await asyncio.gather(*(d.close() for d in devs), return_exceptions=True)


def cli() -> None:
    args = generator_arguments(__doc__, 250).parse_args()
    logging.basicConfig(level=logging.WARNING)
    from benchmarks.common import raise_nofile

    raise_nofile()
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
