"""A cheap load generator: thousands of devices on raw MQTT sockets in one epoll loop.

``python -m benchmarks.lite_load --port P --first F --count C``

The same commands and output as :mod:`benchmarks.scale_load` (``READY``,
``idle S``, ``go T0 SECONDS``, ``RESULT {json}``), at a fraction of its cost
per device: no paho client, no thread and no asyncio object per device. Each
device is a non-blocking TCP socket speaking MQTT 3.1.1 with packets encoded
once (CONNECT with the bridge's will, SUBSCRIBE, the status and heartbeat
PUBLISHes), and the device side of the link protocol from ``link_core``: a
``Sender`` per device for its qos lines (PROTOCOL.md 3.1: ids, base,
retransmission after ``timeout_ms`` while the server is reachable,
resend-all when it becomes reachable again, ``wait=True``: a line starts only
when the previous one is acknowledged), a ``ServerWatch`` for liveness (4.4:
``h`` when nothing was published or heard for ``timeout_ms / 2``; the server
is reachable when something arrived on ``down`` within ``timeout_ms``), and a
``Receiver``, made on the first ``q`` frame from the server, that
acknowledges it (3.2). As the bridge does (4.2): client id
``pblink-<conn_id>``, clean session false, will ``offline`` retained at QoS
1, status ``online`` after CONNACK, ``down`` at QoS 1.

What keeps it cheap (docs/PERFORMANCE.md, "The lite generator, second
round"): one ``select.epoll`` loop over plain non-blocking sockets, no
asyncio; two timing wheels with one slot per ``--timer-res-ms`` (1 ms): the
devices whose line is due, and the devices whose liveness rules (PROTOCOL.md
4.4: heartbeat due, retransmission due, server no longer reachable) need a
look, each device at the time computed from its ``ServerWatch`` and
``Sender`` when it was last looked at, instead of a ticker asking every
device every tick (so each device's ``h`` goes out when it is due, as a
bridge's does on its own clock, not all devices' in one burst per tick;
``--tick-ms`` is not used); the sockets are read at most once per
``--slice-ms`` (5 ms), so the broker's PUBACK for a line and the server's
``a`` a few ms later mostly come in one ``recv_into`` a preallocated buffer;
the packets a device produces while one batch of events is handled (a
PUBACK it owes the broker and the ``a`` for the same ``q``, the status and
SUBSCRIBE after CONNACK) go out in one ``send`` (MQTT lets a PUBACK wait;
it waits at most to the end of the batch); the server's ``a`` for the line in
flight is recognised by comparing bytes with the ack it must be (any other
``a`` is decoded and checked). Lines are sent at their own time (within 1 ms),
not gathered per slice: the server sees the arrivals a fleet produces.

A lost connection is reopened after 0.5 to 1 s (counted in
``connections_lost``: the embedded amqtt drops some connections of a connect
storm). What it does not do: TLS, credentials.

A line is ``<seq> <time.monotonic_ns()>`` taken just before the frame is
handed to the socket (the line's ``send`` follows at once, not at the end of
the batch), so the server measures write() to readline().

``idle S`` (stdin): for S seconds nothing is written; prints ``IDLE {json}``
with the ``h`` frames the devices sent and received (the heartbeat traffic of
idle devices).
"""

from __future__ import annotations

import argparse
import errno
import gc
import heapq
import json
import logging
import os
import random
import select
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import peak_rss_kib
from benchmarks.mqtt_packets import connect_packet, next_packet, publish_packet, subscribe_packet
from benchmarks.scale_load import cpu_s, generator_arguments, lag_figures
from link_core import endpoint, frames, liveness, names
from link_core.clock import ticks_diff
from server_apps.clock import now_ms

log = logging.getLogger("pblink.bench.lite")

_IN = select.EPOLLIN
_INOUT = select.EPOLLIN | select.EPOLLOUT
_PUBACK = b"\x40\x02"


class Device:
    """One device: an MQTT connection and the device end of the link."""

    __slots__ = (
        "ack_expect",
        "check_at",
        "cid",
        "connecting",
        "down",
        "down_b",
        "due",
        "fd",
        "gen",
        "hb",
        "inbuf",
        "k",
        "out",
        "phase",
        "pid",
        "rx",
        "sender",
        "sock",
        "status",
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
        self.sock: socket.socket | None = None
        self.fd = -1
        self.connecting = False
        self.inbuf = bytearray()  # the start of a packet that has not all arrived
        self.out = bytearray()  # packets to send at the end of this batch
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
        self.ack_expect = b""  # the 'a' payload that acknowledges the line in flight
        self.check_at = -1  # the wheel slot of the next look at the liveness rules, -1: none

    # -- MQTT ------------------------------------------------------------------

    def connect(self) -> None:
        """Open the TCP connection (non-blocking; CONNECT when it is established)."""
        gen = self.gen
        if gen.closing:
            return
        self.inbuf.clear()
        self.out.clear()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = s.connect_ex(("127.0.0.1", gen.port))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            gen.stats["connect_failed"] += 1
            gen.call_later(random.uniform(0.5, 1.0), self.connect)
            return
        self.sock, self.fd, self.connecting = s, s.fileno(), True
        gen.fds[self.fd] = self
        gen.ep.register(self.fd, _INOUT)

    def _established(self) -> None:
        assert self.sock is not None
        self.connecting = False
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.gen.stats["connect_failed"] += 1
            self.lost(count=False)
            return
        self.gen.ep.modify(self.fd, _IN)
        self.queue(connect_packet(names.client_id(self.cid), self.gen.keepalive,
                                  will_topic=self.status))
        self.flush()

    def lost(self, count: bool = True) -> None:
        """The connection is gone: as the bridge does, reconnect after a pause."""
        gen = self.gen
        if self.sock is None:
            return
        gen.fds.pop(self.fd, None)
        try:
            gen.ep.unregister(self.fd)
        except (OSError, ValueError):
            pass
        self.sock.close()
        self.sock, self.fd = None, -1
        self.watch.disconnected()
        self.was_up = False
        if not gen.closing:
            if count:
                gen.stats["connections_lost"] += 1
            gen.call_later(random.uniform(0.5, 1.0), self.connect)

    def close(self) -> None:
        if self.sock is not None:
            self.gen.fds.pop(self.fd, None)
            self.sock.close()
            self.sock, self.fd = None, -1

    def queue(self, packet: bytes) -> None:
        """Send ``packet`` with whatever else this device sends in this batch."""
        if not self.out:
            self.gen.dirty.append(self)
        self.out += packet

    def flush(self) -> None:
        """One ``send`` of everything queued (the rest waits for EPOLLOUT)."""
        out = self.out
        if not out or self.sock is None or self.connecting:
            return
        self.gen.sends += 1
        try:
            n = self.sock.send(out)
        except BlockingIOError:
            n = 0
        except OSError:
            self.lost()
            return
        if n == len(out):
            out.clear()
        else:  # loopback rarely fills a socket buffer; when it does, wait for room
            del out[:n]
            self.gen.stats["partial_sends"] += 1
            self.gen.ep.modify(self.fd, _INOUT)

    def on_writable(self) -> None:
        if self.connecting:
            self._established()
            return
        self.flush()
        if not self.out and self.sock is not None:
            self.gen.ep.modify(self.fd, _IN)

    def _next_pid(self) -> int:
        self.pid = self.pid % 65535 + 1
        return self.pid

    def publish(self, payload: bytes) -> None:
        if self.sock is None:
            return
        qos = liveness.mqtt_level(payload)
        self.queue(publish_packet(self.up, payload, qos, self._next_pid() if qos else 0))
        self.watch.published(self.gen.now)
        if payload == frames.HEARTBEAT:
            self.gen.stats["h_sent"] += 1

    def on_readable(self) -> None:
        gen = self.gen
        sock = self.sock
        if sock is None:
            return
        try:
            n = sock.recv_into(gen.rbuf)
        except BlockingIOError:
            return
        except OSError:
            self.lost()
            return
        if not n:
            self.lost()
            return
        if self.inbuf:
            self.inbuf += gen.rview[:n]
            data: bytes | bytearray = self.inbuf
            n = len(data)
        else:
            data = gen.rbuf
        gen.reads += 1
        i = 0
        while i + 2 <= n:
            first = data[i]
            rl = data[i + 1]
            if rl < 0x80:  # every packet of this benchmark: a one-byte remaining length
                start = i + 2
                end = start + rl
            else:
                span = next_packet(data, i)
                if span is None:
                    break
                start, end = span
            if end > n:
                break
            if first == 0x40:  # PUBACK from the broker: nothing to do
                pass
            elif first >> 4 == 3:
                self._on_publish(data, first, start, end)
            elif first >> 4 == 2:
                self._on_connack(data[start:end])
            # SUBACK (9), PINGRESP (13): nothing to do
            i = end
            if self.sock is None:  # refused
                return
        if data is self.inbuf:
            del self.inbuf[:i]
        elif i < n:
            self.inbuf += gen.rview[i:n]

    def _on_connack(self, body: bytes | bytearray) -> None:
        if len(body) < 2 or body[1] != 0:
            self.gen.stats["refused"] += 1
            self.lost()
            return
        self.queue(publish_packet(self.status.encode(), b"online", 1,
                                  self._next_pid(), retain=True))
        self.queue(subscribe_packet(self.down.encode(), 1, self._next_pid()))
        self.watch.connected(self.gen.now)
        self.gen.check_at(self, time.monotonic())  # a heartbeat is due at once
        self.gen.connected += 1

    def _on_publish(self, data: bytes | bytearray, first: int, start: int, end: int) -> None:
        gen = self.gen
        tlen = (data[start] << 8) | data[start + 1]
        at = start + 2 + tlen
        if first & 0x06:  # QoS 1: the PUBACK goes out with this batch's other packets
            self.queue(_PUBACK + data[at:at + 2])
            at += 2
        if data[start + 2:start + 2 + tlen] != self.down_b:
            return
        payload = bytes(data[at:end])
        now = gen.now
        if payload == frames.HEARTBEAT:  # half the traffic: no decode, no Frame
            self.watch.heard(now)
            gen.stats["h_received"] += 1
            if not self.was_up:
                self._check_up(now)
            return
        if payload == self.ack_expect:  # the ack of the line in flight: no decode either
            self.watch.heard(now)
            self.ack_expect = b""
            if not self.was_up:
                self._check_up(now)
            sender = self.sender
            if sender.on_ack(sender.session, int(payload[11:])) and sender.idle() and self.due:
                self._acked()
            return
        try:
            frame = frames.decode(payload)
        except ValueError:
            gen.stats["malformed"] += 1
            return
        self.watch.heard(now)
        kind = frame.kind
        if kind == frames.HB:
            gen.stats["h_received"] += 1
        elif kind == frames.ACK:
            if self.sender.on_ack(frame.session, frame.msg_id) and self.sender.idle() and self.due:
                self._acked()
        elif kind == frames.QOS:
            if self.rx is None:
                self.rx = endpoint.Receiver()
            ack, lines = self.rx.on_frame(frame)
            gen.stats["lines_from_server"] += len(lines)
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

    def tick(self, now: int, t: float) -> None:
        """The liveness rules at ``now``; then when they next need a look (``check_at``)."""
        if self.sock is None or self.connecting:
            self.check_at = -1  # connected() sets it again
            return
        self._check_up(now)
        w = self.watch
        if w.heartbeat_due(now):
            self.queue(self.hb)
            w.heartbeat_sent(now)
            self.gen.stats["h_sent"] += 1
        frames_ = self.sender.due(now, self.was_up)
        for frame in frames_:
            self.publish(frame)
        self.gen.stats["retransmitted"] += len(frames_)
        # The earliest time any of the rules above can change its answer; events
        # in between only move these times later (a publish, a frame heard), or
        # are handled where they happen (the server becoming reachable).
        half = w.timeout_ms // 2
        heard = ticks_diff(w.last_heard, now)
        nxt = min(ticks_diff(w.last_pub, now) + half,
                  max(heard, ticks_diff(w.last_h, now)) + half)
        if self.was_up:
            nxt = min(nxt, heard + w.timeout_ms)
            dl = self.sender.next_deadline()
            if dl is not None:
                nxt = min(nxt, ticks_diff(dl, now))
        self.gen.check_at(self, t + max(0, nxt) / 1000)

    # Writes: one qos line per second from gen.t0 + phase, wait=True (PROTOCOL.md 3.1),
    # driven by the timer heap and acks: no task per device.

    def schedule(self) -> None:
        """Arm the timer of line k + 1, or finish when the window is over."""
        gen = self.gen
        due = gen.t0 + self.phase + self.k
        if due >= gen.t_end:
            self.due = 0.0
            gen.device_done()
            return
        self.due = due
        gen.at_slot(gen.line_wheel, due, self)

    def try_write(self) -> None:
        gen = self.gen
        if not (self.was_up and endpoint.may_write(True, self.sender, True, True)):
            self.waiting = True  # retried when the server is back or the ack comes
            return
        self.waiting = False
        start = time.monotonic()
        gen.res_lag.append(start - self.due)
        gen.res_scheduled += 1
        sender = self.sender
        msg_id = sender.next_id
        self.publish(sender.send(f"{self.k + 1} {time.monotonic_ns()}", gen.now))
        self.flush()  # at once: the line's time stamp is taken just before its send
        self.ack_expect = frames.encode_ack(sender.session, msg_id)

    def _acked(self) -> None:
        self.k += 1
        self.gen.res_written += 1
        self.schedule()


class Generator:
    """``count`` devices ``d<first>`` .. in this process's epoll loop."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.root = args.root
        self.port = args.port
        self.timeout_ms = args.timeout_ms
        self.keepalive = 60
        self.slice_s = args.slice_ms / 1000
        self.ep = select.epoll()
        self.fds: dict[int, Device] = {}
        self.dirty: list[Device] = []
        self.rbuf = bytearray(1 << 16)
        self.rview = memoryview(self.rbuf)
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        # Timing wheels, one slot per --timer-res-ms: slot -> devices whose line is due
        # (line_wheel) or whose liveness rules need a look (check_wheel) in that slot.
        self.res_s = args.timer_res_ms / 1000
        self.line_wheel: dict[int, list[Device]] = {}
        self.check_wheel: dict[int, list[Device]] = {}
        self.slot_done = int(time.monotonic() / self.res_s)  # slots up to this one have run
        self.seq = 0
        self.reads = self.sends = 0  # recv() and send() calls
        self.now = now_ms()
        self.devs = [Device(self, f"d{i}") for i in range(args.first, args.first + args.count)]
        self.stats: dict[str, int] = dict.fromkeys(
            ("h_sent", "h_received", "retransmitted", "connections_lost", "connect_failed",
             "refused", "malformed", "lines_from_server", "partial_sends"), 0)
        self.connected = 0
        self.server_ok = 0
        self.seen_ok: dict[str, bool] = {}
        self.closing = False
        self.t0 = self.t_end = 0.0
        self.res_lag: list[float] = []
        self.res_scheduled = self.res_written = 0
        self.left = 0
        self.stdin_buf = b""
        self.commands: list[str] = []
        self.probing_until = 0.0
        self.loop_lag: list[float] = []

    # -- the loop ----------------------------------------------------------------

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` at ``time.monotonic()`` ``when`` (or in the first batch after it)."""
        self.seq += 1
        heapq.heappush(self.timers, (when, self.seq, fn))

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self.call_at(time.monotonic() + delay, fn)

    def device_done(self) -> None:
        self.left -= 1

    def at_slot(self, wheel: dict[int, list[Device]], when: float, d: Device) -> int:
        """Put ``d`` in ``wheel``'s slot that runs at ``when`` or within one slot after it."""
        slot = max(-int(-when // self.res_s), self.slot_done + 1)  # never early, never missed
        lst = wheel.get(slot)
        if lst is None:
            wheel[slot] = [d]
        else:
            lst.append(d)
        return slot

    def check_at(self, d: Device, when: float) -> None:
        """Look at ``d``'s liveness rules at ``when`` (an earlier look still pending is dropped)."""
        d.check_at = self.at_slot(self.check_wheel, when, d)

    def probe(self, asked: float) -> None:
        """How late this loop runs a 50 ms timer (the generator's own lag)."""
        t = time.monotonic()
        self.loop_lag.append(t - asked)
        if t < self.probing_until:
            self.call_at(t + 0.05, lambda: self.probe(t + 0.05))

    def run(self, until: Callable[[], bool], deadline: float = float("inf")) -> None:
        """Handle events and timers until ``until()`` or ``deadline`` (monotonic).

        Timers (lines, liveness checks) run on time, within ``--timer-res-ms``;
        the sockets are read at most once per ``--slice-ms``, so what arrived
        for a device within one slice is read with one ``recv``.
        """
        ep, fds, timers, dirty = self.ep, self.fds, self.timers, self.dirty
        line_wheel, check_wheel = self.line_wheel, self.check_wheel
        heappop = heapq.heappop
        stdin = sys.stdin.fileno()
        res, slice_s = self.res_s, self.slice_s
        out_ev = select.EPOLLOUT
        in_ev = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP
        last_read = 0.0
        while not until():
            t = time.monotonic()
            if t >= deadline:
                return
            wake = min(last_read + slice_s, (self.slot_done + 1) * res, deadline,
                       timers[0][0] if timers else deadline)
            if wake > t:
                time.sleep(wake - t)
                t = time.monotonic()
            self.now = now_ms()
            if t >= last_read + slice_s:
                last_read = t
                for fd, ev in ep.poll(0):
                    d = fds.get(fd)
                    if d is None:
                        if fd == stdin:
                            self._stdin()
                        continue
                    if ev & out_ev:
                        d.on_writable()
                    if ev & in_ev:
                        d.on_readable()
            cur = int(t / res)
            while self.slot_done < cur:
                self.slot_done = slot = self.slot_done + 1
                lst = line_wheel.pop(slot, None)
                if lst is not None:
                    for d in lst:
                        d.try_write()
                lst = check_wheel.pop(slot, None)
                if lst is not None:
                    now = self.now
                    for d in lst:
                        if d.check_at == slot:  # else a later look replaced this one
                            d.tick(now, t)
            while timers and timers[0][0] <= t:
                heappop(timers)[2]()
            if dirty:
                for d in dirty:
                    d.flush()
                dirty.clear()

    def _stdin(self) -> None:
        chunk = os.read(sys.stdin.fileno(), 4096)
        if not chunk:
            self.commands.append("")
            self.ep.unregister(sys.stdin.fileno())
            return
        self.stdin_buf += chunk
        while b"\n" in self.stdin_buf:
            line, self.stdin_buf = self.stdin_buf.split(b"\n", 1)
            self.commands.append(line.decode())

    def next_command(self) -> list[str]:
        self.run(lambda: bool(self.commands))
        return self.commands.pop(0).split()

    def shutdown(self) -> None:
        self.closing = True
        for d in self.devs:
            d.close()
        self.ep.close()


def main(args: argparse.Namespace) -> None:
    gen = Generator(args)
    gen.ep.register(sys.stdin.fileno(), _IN)
    t_start = time.monotonic()
    for i, d in enumerate(gen.devs):  # 50 connections per 10 ms: a connect storm is not the test
        gen.call_at(t_start + (i // 50) * 0.01, d.connect)
    n = len(gen.devs)
    gen.run(lambda: gen.server_ok >= n, t_start + args.ready_s)
    print(f"READY {gen.server_ok} {time.monotonic() - t_start:.2f}", flush=True)
    gc.freeze()  # the devices live to the end: full collections need not scan them
    while True:
        cmd = gen.next_command()
        if cmd and cmd[0] == "idle":
            before, cpu0, t0 = dict(gen.stats), cpu_s(), time.monotonic()
            gen.run(lambda: False, t0 + float(cmd[1]))
            wall = time.monotonic() - t0
            idle: dict[str, float] = {k: gen.stats[k] - before[k]
                                      for k in ("h_sent", "h_received")}
            idle.update(count=n, wall_s=wall, cpu_s=cpu_s() - cpu0)
            print("IDLE " + json.dumps(idle), flush=True)
            continue
        break
    if not cmd or cmd[0] != "go":
        gen.shutdown()
        return
    t0, seconds = float(cmd[1]), float(cmd[2])
    gen.t0, gen.t_end = t0, t0 + seconds
    gen.run(lambda: False, t0)
    cpu0 = cpu_s()
    reads0, sends0 = gen.reads, gen.sends
    gen.probing_until = t0 + seconds
    gen.call_at(time.monotonic() + 0.05, lambda: gen.probe(time.monotonic() + 0.05))
    gen.left = n
    for d in gen.devs:
        d.schedule()
    gen.run(lambda: gen.left <= 0, t0 + seconds + args.drain)
    pending = [d for d in gen.devs if d.due]
    cpu_window = cpu_s() - cpu0
    t_end = time.monotonic()
    out = {
        "count": n,
        "server_ok_at_go": gen.server_ok,
        "scheduled": gen.res_scheduled,
        "written": gen.res_written,
        "unacked_after_drain": sum(d.sender.in_flight for d in gen.devs),
        "blocked_writes": len(pending),
        **lag_figures(gen.res_lag, [x for x in gen.loop_lag if x >= 0]),
        "cpu_s_window": cpu_window,
        "recv_calls_window": gen.reads - reads0,  # one recv() per readable socket
        "send_calls_window": gen.sends - sends0,
        "wall_s_window": t_end - t0,
        "maxrss_kib": peak_rss_kib(),  # VmHWM: ru_maxrss would be the runner's
        **gen.stats,
    }
    if args.acked_out:  # each device's acknowledged lines: <seq> 1 .. k (benchmarks.failover)
        Path(args.acked_out).write_text(json.dumps({d.cid: d.k for d in gen.devs}))
    print("RESULT " + json.dumps(out), flush=True)
    gen.shutdown()


def cli() -> None:
    p = generator_arguments(__doc__, 100)
    p.add_argument("--slice-ms", type=float, default=5.0,
                   help="read the sockets at most once per this many ms (0: at every event)")
    p.add_argument("--timer-res-ms", type=float, default=1.0,
                   help="timers due within this many ms of each other run together")
    p.add_argument("--acked-out", default=None, metavar="FILE",
                   help="write {conn_id: lines acknowledged} as JSON here before RESULT "
                   "(a device's lines are <seq> 1 .. that count)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from benchmarks.common import raise_nofile

    raise_nofile()
    main(args)


if __name__ == "__main__":
    cli()
