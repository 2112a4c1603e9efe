"""A cheap load generator: thousands of devices on raw MQTT sockets in one asyncio loop.

``python -m benchmarks.lite_load --port P --first F --count C``

The same commands and output as :mod:`benchmarks.scale_load` (``READY``,
``idle S``, ``go T0 SECONDS``, ``RESULT {json}``), at a fraction of its cost
per device: no paho client and no thread per device. Each device is an
:class:`asyncio.Protocol` on its own TCP connection speaking MQTT 3.1.1 with
packets encoded once (CONNECT with the bridge's will, SUBSCRIBE, the status
PUBLISH), and the device side of the link protocol from ``link_core``: a
``Sender`` per device for its qos lines (PROTOCOL.md
3.1: ids, base, retransmission after ``timeout_ms`` while the server is
reachable, resend-all when it becomes reachable again, ``wait=True``: a line
starts only when the previous one is acknowledged), a ``ServerWatch`` for
liveness (4.4: ``h`` when nothing was published or heard for
``timeout_ms / 2``; the server is reachable when something arrived on
``down`` within ``timeout_ms``), and a ``Receiver``, made on the first ``q``
frame from the server, that acknowledges it (3.2). As the bridge does (4.2):
client id ``pblink-<conn_id>``, clean session false, will ``offline``
retained at QoS 1, status ``online`` after CONNACK, ``down`` at QoS 1.

A lost connection is reopened after 0.5 to 1 s (counted in
``connections_lost``: the embedded amqtt drops some connections of a connect
storm). What it does not do: TLS, credentials.

A line is ``<seq> <time.monotonic_ns()>`` taken just before the frame is
handed to the socket, so the server measures write() to readline().

``idle S`` (stdin): for S seconds nothing is written; prints ``IDLE {json}``
with the ``h`` frames the devices sent and received (the heartbeat traffic of
idle devices).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import sys
import time
from typing import Any, cast

from benchmarks.common import peak_rss_kib
from benchmarks.mqtt_packets import connect_packet, next_packet, publish_packet, subscribe_packet
from benchmarks.scale_load import cpu_s, generator_arguments, lag_figures, loop_probe
from link_core import endpoint, frames, liveness, names
from server_apps.clock import now_ms

log = logging.getLogger("pblink.bench.lite")


class Device(asyncio.Protocol):
    """One device: an MQTT connection and the device end of the link."""

    __slots__ = (
        "buf",
        "cid",
        "down",
        "down_b",
        "due",
        "gen",
        "hb",
        "k",
        "phase",
        "pid",
        "rx",
        "sender",
        "status",
        "transport",
        "up",
        "waiting",
        "was_up",
        "watch",
    )

    def __init__(self, gen: Generator, conn_id: str) -> None:
        self.gen = gen
        self.cid = conn_id
        t = names.Topics(gen.root, conn_id)
        self.up = t.up.encode()
        self.hb = publish_packet(self.up, frames.HEARTBEAT, 0, 0)  # encoded once
        self.down = t.down
        self.down_b = t.down.encode()
        self.status = t.status
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.pid = 0
        self.sender = endpoint.Sender(frames.new_session(os.urandom(4)),
                                        endpoint.TX_WINDOW_PYBOARD, gen.timeout_ms)
        self.watch = liveness.ServerWatch(gen.timeout_ms)
        self.rx: endpoint.Receiver | None = None
        self.was_up = False
        self.k = 0  # lines written (acknowledged) in the window
        self.phase = random.random()
        self.due = 0.0  # time.monotonic() of the next line, 0 when none is scheduled
        self.waiting = False  # the next line is due but may not start yet

    # -- MQTT ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(connect_packet(names.client_id(self.cid), self.gen.keepalive,
                                            will_topic=self.status))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.watch.disconnected()
        self.was_up = False
        if not self.gen.closing:  # as the bridge does: reconnect after a pause
            self.gen.stats["connections_lost"] += 1
            asyncio.get_running_loop().call_later(
                random.uniform(0.5, 1.0), lambda: asyncio.ensure_future(self.connect()))

    async def connect(self) -> None:
        """Open the TCP connection (CONNECT follows in ``connection_made``); retried on failure."""
        if self.gen.closing:
            return
        self.buf.clear()
        try:
            await asyncio.get_running_loop().create_connection(
                lambda: self, "127.0.0.1", self.gen.port)
        except OSError:
            self.gen.stats["connect_failed"] += 1
            asyncio.get_running_loop().call_later(
                random.uniform(0.5, 1.0), lambda: asyncio.ensure_future(self.connect()))

    def _next_pid(self) -> int:
        self.pid = self.pid % 65535 + 1
        return self.pid

    def publish(self, payload: bytes) -> None:
        if self.transport is None:
            return
        qos = liveness.mqtt_level(payload)
        self.transport.write(publish_packet(self.up, payload, qos,
                                            self._next_pid() if qos else 0))
        self.watch.published(now_ms())
        if payload == frames.HEARTBEAT:
            self.gen.stats["h_sent"] += 1

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while (span := next_packet(buf, 0)) is not None:
            start, end = span
            kind = buf[0] >> 4
            body = bytes(buf[start:end])
            qos = (buf[0] >> 1) & 3
            del buf[:end]
            if kind == 3:
                self._on_publish(body, qos)
            elif kind == 2:
                self._on_connack(body)

    def _on_connack(self, body: bytes) -> None:
        assert self.transport is not None
        if len(body) < 2 or body[1] != 0:
            self.gen.stats["refused"] += 1
            self.transport.close()
            return
        self.transport.write(publish_packet(self.status.encode(), b"online", 1,
                                            self._next_pid(), retain=True))
        self.transport.write(subscribe_packet(self.down.encode(), 1, self._next_pid()))
        self.watch.connected(now_ms())
        self.gen.connected += 1

    def _on_publish(self, body: bytes, qos: int) -> None:
        tlen = int.from_bytes(body[:2], "big")
        at = 2 + tlen
        if qos:
            pid = body[at:at + 2]
            at += 2
            assert self.transport is not None
            self.transport.write(b"\x40\x02" + pid)  # PUBACK
        if body[2:2 + tlen] != self.down_b:
            return
        if body[at:] == frames.HEARTBEAT:  # half the traffic: no decode, no Frame
            now = now_ms()
            self.watch.heard(now)
            self.gen.stats["h_received"] += 1
            self._check_up(now)
            return
        try:
            frame = frames.decode(body[at:])
        except ValueError:
            self.gen.stats["malformed"] += 1
            return
        now = now_ms()
        self.watch.heard(now)
        kind = frame.kind
        if kind == frames.HB:
            self.gen.stats["h_received"] += 1
        elif kind == frames.ACK:
            if self.sender.on_ack(frame.session, frame.msg_id) and self.sender.idle() and self.due:
                self._acked()
        elif kind == frames.QOS:
            if self.rx is None:
                self.rx = endpoint.Receiver()
            ack, lines = self.rx.on_frame(frame)
            self.gen.stats["lines_from_server"] += len(lines)
            if ack is not None:
                self.publish(ack)
        self._check_up(now)

    # -- link ------------------------------------------------------------------

    def _check_up(self, now: int) -> None:
        up = self.watch.reachable(now)
        if up and not self.was_up:  # PROTOCOL.md 3.1: resend every unacknowledged frame
            for frame in self.sender.resend_all(now):
                self.publish(frame)
            self.gen.server_ok += 1 if not self.gen.seen_ok.get(self.cid) else 0
            self.gen.seen_ok[self.cid] = True
            self.was_up = True
            if self.waiting:
                self.try_write()
        self.was_up = up

    def tick(self, now: int) -> None:
        if self.transport is None:
            return
        self._check_up(now)
        if self.watch.heartbeat_due(now):
            self.transport.write(self.hb)
            self.watch.heartbeat_sent(now)
            self.gen.stats["h_sent"] += 1
        frames = self.sender.due(now, self.was_up)
        for frame in frames:
            self.publish(frame)
        self.gen.stats["retransmitted"] += len(frames)

    # Writes: one qos line per second from gen.t0 + phase, wait=True (PROTOCOL.md 3.1),
    # driven by loop timers and acks: no task per device.

    def schedule(self) -> None:
        """Arm the timer of line k + 1, or finish when the window is over."""
        gen = self.gen
        due = gen.t0 + self.phase + self.k
        if due >= gen.t_end:
            self.due = 0.0
            gen.device_done()
            return
        self.due = due
        gen.loop.call_at(due - gen.mono_minus_loop, self.try_write)

    def try_write(self) -> None:
        gen = self.gen
        if not (self.was_up and liveness.may_write(True, self.sender, True, True)):
            self.waiting = True  # retried when the server is back or the ack comes
            return
        self.waiting = False
        start = time.monotonic()
        gen.res_lag.append(start - self.due)
        gen.res_scheduled += 1
        self.publish(self.sender.send(f"{self.k + 1} {time.monotonic_ns()}", now_ms()))

    def _acked(self) -> None:
        self.k += 1
        self.gen.res_written += 1
        self.schedule()


class Generator:
    """``count`` devices ``d<first>`` .. in this process's loop, ticked together."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.root = args.root
        self.port = args.port
        self.timeout_ms = args.timeout_ms
        self.keepalive = 60
        self.tick_s = args.tick_ms / 1000
        self.devs = [Device(self, f"d{i}") for i in range(args.first, args.first + args.count)]
        self.stats: dict[str, int] = dict.fromkeys(
            ("h_sent", "h_received", "retransmitted", "connections_lost", "connect_failed",
             "refused",
             "malformed", "lines_from_server"), 0)
        self.connected = 0
        self.server_ok = 0
        self.seen_ok: dict[str, bool] = {}
        self.closing = False
        self.loop = asyncio.get_running_loop()
        self.mono_minus_loop = time.monotonic() - self.loop.time()
        self.t0 = self.t_end = 0.0
        self.res_lag: list[float] = []
        self.res_scheduled = self.res_written = 0
        self.left = 0
        self.all_done = asyncio.Event()

    def device_done(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.all_done.set()

    async def ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            now = now_ms()
            for d in self.devs:
                d.tick(now)


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    gen = Generator(args)
    t_start = time.monotonic()
    for i, d in enumerate(gen.devs):
        await d.connect()
        if i % 50 == 49:
            await asyncio.sleep(0.01)  # let CONNACKs in: a connect storm is not the test
    ticker = asyncio.create_task(gen.ticker())
    deadline = time.monotonic() + args.ready_s
    while gen.server_ok < len(gen.devs) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    print(f"READY {gen.server_ok} {time.monotonic() - t_start:.2f}", flush=True)
    out: dict[str, Any] = {}
    while True:
        cmd = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if cmd and cmd[0] == "idle":
            before, cpu0, t0 = dict(gen.stats), cpu_s(), time.monotonic()
            await asyncio.sleep(float(cmd[1]))
            wall = time.monotonic() - t0
            idle: dict[str, float] = {k: gen.stats[k] - before[k]
                                      for k in ("h_sent", "h_received")}
            idle.update(count=len(gen.devs), wall_s=wall, cpu_s=cpu_s() - cpu0)
            print("IDLE " + json.dumps(idle), flush=True)
            continue
        break
    if not cmd or cmd[0] != "go":
        gen.closing = True
        ticker.cancel()
        for d in gen.devs:
            if d.transport is not None:
                d.transport.close()
        return
    t0, seconds = float(cmd[1]), float(cmd[2])
    gen.t0, gen.t_end = t0, t0 + seconds
    loop_lag: list[float] = []

    wait0 = t0 - time.monotonic()
    if wait0 > 0:
        await asyncio.sleep(wait0)
    cpu0 = cpu_s()
    probe_task = asyncio.create_task(loop_probe(t0 + seconds, loop_lag))
    gen.left = len(gen.devs)
    for d in gen.devs:
        d.schedule()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(gen.all_done.wait(), seconds + args.drain)
    pending = [d for d in gen.devs if d.due]
    cpu_window = cpu_s() - cpu0
    t_end = time.monotonic()
    probe_task.cancel()
    out = {
        "count": len(gen.devs),
        "server_ok_at_go": gen.server_ok,
        "scheduled": gen.res_scheduled,
        "written": gen.res_written,
        "unacked_after_drain": sum(d.sender.in_flight for d in gen.devs),
        "blocked_writes": len(pending),
        **lag_figures(gen.res_lag, loop_lag),
        "cpu_s_window": cpu_window,
        "wall_s_window": t_end - t0,
        "maxrss_kib": peak_rss_kib(),  # VmHWM: ru_maxrss would be the runner's
        **gen.stats,
    }
    print("RESULT " + json.dumps(out), flush=True)
    gen.closing = True
    ticker.cancel()
    for d in gen.devs:
        if d.transport is not None:
            d.transport.close()


def cli() -> None:
    args = generator_arguments(__doc__, 100).parse_args()
    logging.basicConfig(level=logging.WARNING)
    from benchmarks.common import raise_nofile

    raise_nofile()
    try:  # libuv's loop: several times less CPU per socket event than asyncio's own
        import uvloop
    except ImportError:
        asyncio.run(main(args))
    else:
        uvloop.run(main(args))


if __name__ == "__main__":
    cli()
