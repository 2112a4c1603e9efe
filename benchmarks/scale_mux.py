"""Server-side cost at scale: many simulated devices multiplexed on a few raw MQTT sockets.

``python -m benchmarks.scale_mux --n 5000 [--timeout-ms 1500] [--seconds 10] [--profile FILE]``

A profiling driver for ``server_apps`` (issue 13 part 2), not the scale
benchmark's load generator (that is ``benchmarks/scale.py`` with its own
generator): it starts a Mosquitto on loopback (benchmarks/common.py's
configuration) and the scale benchmark's server process
(``benchmarks/scale_server.py``: one LinkServer claiming ``d0`` .. ``d<N-1>``,
reading every line, measuring ``write()`` to ``readline()`` latency), then
plays N devices from this one asyncio process over ``--sockets`` raw TCP
connections with pre-built MQTT 3.1.1 packets (no paho, no per-device
client), so that the machine's cores go to the server and the broker:

- each device publishes one qos frame ``q|<session>|<id>|<id>|<seq> <t_ns>``
  per second (QoS 1, random phase), ``t_ns`` being ``time.monotonic_ns()``
  when it is built (the write() moment of a real device);
- and, as the bridge does (PROTOCOL.md 4.4: an ``h`` when it has published
  nothing for ``timeout_ms / 2``), one ``h`` (QoS 0) ``timeout_ms / 2`` after
  each line while that is before the next line;
- with ``--idle`` no lines: each device sends only an ``h`` every
  ``timeout_ms / 2``, as an idle bridge does;
- one more socket subscribes to ``<root>/+/down`` at QoS 0 and counts the
  server's acks and heartbeat answers.

A device's frames all go over one socket, so the broker keeps their order.
The device does not wait for acks (a real device's window of 16 is never
full at one line a second when the server keeps up; when it does not, the
latency shows it). Prints one JSON object: lines written, read, duplicated,
reordered, latency p50/p99 (ms), server CPU seconds per 1,000 lines and
utilisation, server peak RSS, broker CPU, this driver's CPU and event-loop lag,
and the down traffic per device per minute by kind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, Broker, find_mosquitto, pct, raise_nofile
from benchmarks.mqtt_packets import connect_packet, next_packet, publish_packet, subscribe_packet
from benchmarks.scale import Child


class Down:
    """Counts the PUBLISH packets on the ``down`` subscription by the frame's first byte."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.kinds: dict[str, int] = {}

    def feed(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        i = 0
        while (span := next_packet(buf, i)) is not None:
            j, end = span
            if buf[i] >> 4 == 3:
                tlen = (buf[j] << 8) | buf[j + 1]
                start = j + 2 + tlen + (2 if (buf[i] >> 1) & 3 else 0)
                kind = chr(buf[start]) if start < end else "?"
                self.kinds[kind] = self.kinds.get(kind, 0) + 1
            i = end
        del buf[:i]


async def _drain(reader: asyncio.StreamReader, sink: Down | None) -> None:
    while True:
        data = await reader.read(65536)
        if not data:
            return
        if sink is not None:
            sink.feed(data)


async def drive(port: int, n: int, sockets: int, timeout_ms: int, t0: float, seconds: float,
                root: str, idle: bool = False) -> dict[str, Any]:
    """Play ``n`` devices from ``t0`` for ``seconds``; returns the driver's own figures."""
    down = Down()
    conns = []
    for k in range(sockets + 1):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(connect_packet(f"mux-{os.getpid()}-{k}", 60, clean=True))
        if k == sockets:
            writer.write(subscribe_packet(f"{root}/+/down".encode(), 0))
        await writer.drain()
        conns.append((reader, writer))
    drains = [asyncio.create_task(_drain(r, down if k == sockets else None))
              for k, (r, _w) in enumerate(conns)]
    await asyncio.sleep(0.5)  # CONNACK/SUBACK in
    rng = random.Random(1)
    topics = [f"{root}/d{i}/up".encode() for i in range(n)]
    session = [b"%08x" % rng.getrandbits(32) for _ in range(n)]
    hb = [publish_packet(t, b"h", 0) for t in topics]
    # (due time, device, 0 = line / 1 = heartbeat); one line a second, h after timeout/2 of silence
    phase = [rng.random() for _ in range(n)]
    half = timeout_ms / 2000
    events: list[tuple[float, int, int]] = []
    for i in range(n):
        k = 0
        while idle and phase[i] * half + k * half < seconds:  # only an h every timeout/2
            events.append((phase[i] * half + k * half, i, 1))
            k += 1
        while not idle and phase[i] + k < seconds:
            events.append((phase[i] + k, i, 0))
            if half < 1.0:
                events.append((phase[i] + k + half, i, 1))
            k += 1
    events.sort()
    seq = [0] * n
    written = hbs = 0
    lag: list[float] = []
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.sleep(max(0.0, t0 - time.monotonic()))
    pid = 0
    ev = 0
    while ev < len(events):
        now = time.monotonic() - t0
        due = events[ev][0]
        if due > now:
            await asyncio.sleep(min(0.005, due - now))
            continue
        lag.append(now - due)
        touched = set()
        while ev < len(events) and events[ev][0] <= now:
            _due, i, what = events[ev]
            ev += 1
            w = conns[i % sockets][1]
            if what:
                w.write(hb[i])
                hbs += 1
            else:
                msg_id = seq[i] & 0xFFFF
                seq[i] += 1
                payload = b"q|%s|%d|%d|%d %d" % (session[i], msg_id, msg_id, seq[i],
                                                time.monotonic_ns())
                pid = pid % 65535 + 1
                w.write(publish_packet(topics[i], payload, 1, pid))
                written += 1
            touched.add(i % sockets)
        for s in touched:
            await conns[s][1].drain()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.monotonic() - t0
    await asyncio.sleep(3.0)  # the last acks in
    for t in drains:
        t.cancel()
    for _r, w in conns:
        w.close()
    lag.sort()
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    return {"written": written, "heartbeats_sent": hbs, "down_kinds": down.kinds,
            "driver_cpu_utilisation": cpu / max(1e-9, wall),
            "driver_lag_p99_ms": pct(lag, 0.99) * 1000 if lag else 0.0, "wall_s": wall}


async def main(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    broker = Broker("mosquitto", work, find_mosquitto())
    await broker.start()
    server: Child | None = None
    try:
        out = work / "server_stats.json"
        argv = [sys.executable, "-m", "benchmarks.scale_server", "--port", str(broker.port),
                "--n", str(args.n), "--out", str(out), "--timeout-ms", str(args.timeout_ms)]
        if args.profile:
            argv += ["--profile", args.profile]
        argv += args.server_arg
        server = Child("server", argv, work / "server.log")
        await server.start()
        await server.expect("READY", 300)
        server.send("mark")
        await server.expect("MARKED", 30)
        broker_cpu0 = broker.cpu_seconds() or 0.0
        t0 = time.monotonic() + 1.5
        res = await drive(broker.port, args.n, args.sockets, args.timeout_ms, t0, args.seconds,
                          args.root, args.idle)
        broker_cpu = (broker.cpu_seconds() or 0.0) - broker_cpu0
        server.send("stop")
        await server.expect("STOPPED", 120)
        stats = json.loads(out.read_text())
    finally:
        if server is not None:
            await server.stop(grace=10.0)
        await broker.stop()
    received = stats["received_window"]
    per_k = 1000 / received if received else float("nan")
    minutes = res["wall_s"] / 60
    return {
        "n": args.n, "timeout_ms": args.timeout_ms, "seconds": args.seconds,
        "written": res["written"], "read": received, "duplicates": stats["duplicates"],
        "reordered": stats["reordered"],
        "latency_p50_ms": pct(stats["latency_ms"], 0.5),
        "latency_p99_ms": pct(stats["latency_ms"], 0.99),
        "server_cpu_s_per_1000_lines": stats["cpu_s_window"] * per_k,
        "server_cpu_utilisation": stats["cpu_s_window"] / max(1e-9, stats["wall_s_window"]),
        "server_peak_rss_mib": stats["maxrss_kib"] / 1024,
        "broker_cpu_utilisation": broker_cpu / max(1e-9, stats["wall_s_window"]),
        "driver_cpu_utilisation": res["driver_cpu_utilisation"],
        "driver_lag_p99_ms": res["driver_lag_p99_ms"],
        "h_up_per_device_min": res["heartbeats_sent"] / args.n / minutes,
        "down_per_device_min": {k: v / args.n / minutes for k, v in res["down_kinds"].items()},
        "server_cpu_s_window": stats["cpu_s_window"],
        "server_stats": stats["server_stats"],
    }


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="devices (default 1000)")
    p.add_argument("--timeout-ms", type=int, default=1500)
    p.add_argument("--seconds", type=float, default=10.0, help="measurement window")
    p.add_argument("--sockets", type=int, default=4, help="publishing sockets (default 4)")
    p.add_argument("--idle", action="store_true",
                   help="no lines: each device only sends h every timeout/2 (an idle bridge)")
    p.add_argument("--root", default="pblink")
    p.add_argument("--profile", default=None, help="cProfile the server into this file")
    p.add_argument("--server-arg", action="append", default=[],
                   help="one more argument for benchmarks/scale_server.py (repeatable)")
    p.add_argument("--workdir", default=None, help="logs and stats (default /tmp/scale-mux-PID)")
    args = p.parse_args()
    raise_nofile()
    os.chdir(ROOT)
    work = Path(args.workdir or f"/tmp/scale-mux-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    print(json.dumps(asyncio.run(main(args, work)), indent=1))


if __name__ == "__main__":
    cli()
