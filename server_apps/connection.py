"""The server end of one device's link: :class:`Connection`.

A Connection owns the per-device protocol of docs/PROTOCOL.md on the server
side: its Sender and Receiver (section 3), the bounded line queue with parking
of qos frames while it is full, its DeviceWatch (section 4.4: online, silent,
one heartbeat answer per ``timeout_ms / 4``), retransmission and resend-all,
and what it contributes to the durable state (section 4.5). The rules are the
module docstring of :mod:`server_apps.link_server`; the sans-I/O pieces come
from ``link_core`` directly (typed by its .pyi stubs).

The :class:`~server_apps.link_server.LinkServer` routes each MQTT message to
its Connection and drives it through a few methods (underscore: not for
applications): ``_receive(payload, now)`` for a frame on ``up``,
``_status(online, now)``, ``_broker_lost()``, ``_tick(now)``, ``_wake()``,
``_resend_all()`` (``_tick`` says when it wants to run next, and the
server runs it only then: :meth:`Host.schedule`), and for the group commit ``_snapshot(clean)``,
``_batch()`` and ``_release(count)``. What a Connection needs back from its
server is the narrow :class:`Host` interface: publish a frame, is the broker
up, is the server closing, and (with durable state) hold an ack until the
batch holding its lines is on disk. Every time is a ``link_core`` tick in
milliseconds (:func:`now_ms`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Final, Protocol

from link_core import clock, endpoint, frames, lines, names
from link_core.device_watch import DeviceWatch
from server_apps.clock import now_ms
from server_apps.errors import LinkClosedError
from server_apps.lines import LineQueue
from server_apps.state import ConnState

log = logging.getLogger("pblink.server")

RX_WINDOW: Final = endpoint.RX_WINDOW
# Acks for a foreign session over this many timeouts: another process serves the conn_id.
FOREIGN_ACK_SPAN = 10


_HB_FRAME: Final = frames.Frame(frames.HB, None, None, None, None)
_Q_FRAME: Final = re.compile(rb"q\|([0-9a-f]{8})\|([0-9]{1,5})\|([0-9]{1,5})\|([^\n]*)\n?")


def _decode(payload: bytes) -> frames.Frame:
    """``frames.decode(payload)``, with a quicker path for the frames that come most: ``h``, ``q``.

    A ``q`` frame that matches the pattern (8 lowercase hex digits, ids of 1 to
    5 decimal digits, a line without ``\\n``, one trailing ``\\n`` allowed)
    and passes the checks ``frames.decode`` makes (ids up to 65535, base not
    after id, the line at most ``MAX_LINE`` bytes of valid UTF-8: CPython's
    strict decoder is RFC 3629's, as ``names.utf8_valid``) gives the same
    Frame; anything else goes to ``frames.decode``, which also says what is
    wrong.
    """
    if payload == b"h":
        return _HB_FRAME
    m = _Q_FRAME.fullmatch(payload)
    if m is not None:
        session, msg_id_b, base_b, line_b = m.groups()
        msg_id = int(msg_id_b)
        base = int(base_b)
        if msg_id <= 0xFFFF and base <= 0xFFFF and (msg_id - base) & 0xFFFF < 0x8000 and (
            len(line_b) <= names.MAX_LINE
        ):
            try:
                line = line_b.decode()
            except UnicodeDecodeError:
                pass
            else:
                return frames.Frame(frames.QOS, session.decode(), msg_id, base, line)
    return frames.decode(payload)


class Host(Protocol):
    """What a Connection needs from the server that routes its frames (a LinkServer).

    ``publish(topic, payload)``: publish an end-to-end frame at its QoS now
    (nothing while the broker is down). ``broker_up()``: the MQTT connection is
    up. ``closing()``: the server is closed or closing (reads and writes raise
    ``closed_error(message)``: a :class:`LinkClosedError`, or the
    :class:`StateLostError` of a server that closed itself). ``durable``:
    lines and acks go through the group commit. ``commit_later(conn_id, ack,
    start)``: (durable only) the conn_id's stored entry changed and goes into
    the next batch; ``ack`` (``(topic, frame)``, or ``None``) is published once
    that batch is on disk;
    ``start=False``: no batch is started on its account. ``schedule(conn,
    delay_ms)``: run ``conn._tick`` in ``delay_ms`` milliseconds (or sooner,
    if it is due sooner anyway).
    """

    @property
    def durable(self) -> bool: ...
    def publish(self, topic: str, payload: bytes) -> None: ...
    def broker_up(self) -> bool: ...
    def schedule(self, conn: Connection, delay_ms: int) -> None: ...
    def closing(self) -> bool: ...
    def closed_error(self, message: str) -> LinkClosedError: ...
    def commit_later(
        self, conn_id: str, ack: tuple[str, bytes] | None, start: bool = True
    ) -> None: ...


class Connection(LineQueue):
    """The server end of one device's link. Get one with ``LinkServer.connection()``.

    Read with ``await conn.readline()`` or ``async for line in conn``; write
    with ``await conn.write(line, qos=True, wait=True)`` (PROTOCOL.md 3).

    Attributes:
        conn_id (str): the device's connection id, 1 to 64 characters from
            ``A-Z a-z 0-9 _ -`` (as given to ``LinkServer.connection()``).
        up_topic: ``<root>/<conn_id>/up``, the device's lines to the server.
        down_topic: ``<root>/<conn_id>/down``, the server's lines to the device.
        status_topic: ``<root>/<conn_id>/status``, the bridge's retained
            ``online``/``offline``.
        stats: counters (``tx_qos``, ``tx_unreliable``, ``rx_lines``,
            ``retransmitted``, ``resent``, ``heartbeats``, ``malformed``, ...), for logs
            and tests.
    """

    _end_of_lines = (LinkClosedError,)

    def __init__(
        self,
        host: Host,
        conn_id: str,
        root: str,
        sender: endpoint.Sender,
        receiver: endpoint.Receiver,
        unread: Iterable[str],
        *,
        timeout_ms: int,
        queue_size: int,
        watch: DeviceWatch | None = None,
    ) -> None:
        super().__init__(unread)  # _lines: readable
        self._host = host
        self.conn_id: str = conn_id
        topics = names.Topics(root, conn_id)
        self.up_topic: str = topics.up
        self.down_topic: str = topics.down
        self.status_topic: str = topics.status
        self._timeout_ms = timeout_ms
        self._queue_size = queue_size
        self._sender = sender
        self._receiver = receiver
        self._held: list[str] = []  # delivered, waiting for their batch to be on disk
        self._parked: collections.deque[frames.Frame] = collections.deque()
        # PROTOCOL.md 4.4; a watch kept while the conn_id was unclaimed carries over
        self._live = watch if watch is not None else DeviceWatch(timeout_ms)
        # acks on up for a session this process is not sending: (first ms, count, logged)
        self._foreign: tuple[int, int, bool] | None = None
        self._write_lock = asyncio.Lock()
        self._check_at: int | None = None  # when the server's ticker looks at it next (its heap)
        self.stats: dict[str, int] = collections.defaultdict(int)

    def __repr__(self) -> str:
        return f"<Connection {self.conn_id!r} {'online' if self.online else 'offline'}>"

    # -- state -----------------------------------------------------------------

    @property
    def online(self) -> bool:
        """The device is reachable (PROTOCOL.md 4.4)."""
        return self._live.online

    @property
    def in_flight(self) -> int:
        """qos lines written and not yet acknowledged by the device."""
        return int(self._sender.in_flight)

    @property
    def session(self) -> str:
        """This server's sender session for the conn_id (8 hex digits)."""
        return str(self._sender.session)

    def _full(self) -> bool:
        return len(self._lines) + len(self._held) >= self._queue_size

    def _reachable(self) -> bool:
        return self._live.online and self._host.broker_up()

    # -- reading ---------------------------------------------------------------

    async def readline(self) -> str:
        """The next line from the device, ending in ``"\\n"``. Waits for one.

        Lines come exactly once and in order for qos lines (PROTOCOL.md 3.2);
        a line without qos may be missing after an outage. ``async for line in
        conn`` does the same and ends when the server is closed.

        Raises:
            LinkClosedError: the LinkServer is closed (or closing);
                :class:`StateLostError` when it closed itself (state database
                session lost).
        """
        line = await self._next_line()
        if line is None:
            raise self._host.closed_error(f"link server closed (conn_id {self.conn_id!r})")
        return line

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        """``async for line in conn``: ``readline()`` until the server is closed (the loop ends)."""
        line = await self._next_line()
        if line is None:
            raise StopAsyncIteration
        return line

    async def _next_line(self) -> str | None:
        """The next line with its ``\\n``, or None once the server is closing.

        LineQueue.readline with its hooks written out, shared by ``readline``
        and ``async for`` (no async generator between a reader and its wait:
        a server wakes a reader for every line)."""
        host = self._host
        while not host.closing():
            if self._lines:
                line = self._lines.popleft()
                self._line_taken()
                return line + "\n"
            await self._changed.wait()
        return None

    def _read_start(self) -> int:
        # Once closing, unread lines belong to the final state file, not to the app.
        if self._host.closing():
            raise self._host.closed_error(f"link server closed (conn_id {self.conn_id!r})")
        return 0

    async def _changed_wait(self, token: int) -> None:
        await self._changed.wait()
        self._read_start()

    def _line_taken(self) -> None:
        """A line was read: take parked frames while there is room; persist the read."""
        while self._parked and not self._full():
            self._accept(self._parked.popleft())
        if self._host.durable:
            self._host.commit_later(self.conn_id, None)

    # -- writing ---------------------------------------------------------------

    async def write(self, line: str | bytes, qos: bool = True, wait: bool = True) -> None:
        """Send one line to the device (one trailing newline is optional).

        ``qos=True``: delivered exactly once and in order, retransmitted until
        acknowledged; waits while the sender window is full. ``wait=True`` (with
        qos): starts only when every earlier qos line has been acknowledged.
        ``qos=False``: sent once, may be lost in an outage. Every write pauses
        while the broker or the device is unreachable.

        Args:
            line: the line, ``str`` or UTF-8 ``bytes``, at most ``MAX_LINE``
                (1024) bytes encoded, one trailing ``"\\n"`` allowed.
            qos: guaranteed delivery (default ``True``).
            wait: ordering: wait for every earlier qos line's acknowledgement
                first (default ``True``; only with ``qos``).

        Raises:
            ValueError: (nothing sent) the line has an internal newline, is
                longer than ``MAX_LINE`` bytes, or is not UTF-8.
            LinkClosedError: the LinkServer is closed.
        """
        text = lines.check_line(line)
        self._check_open()
        async with self._write_lock:
            await self._wait_until(
                lambda: endpoint.may_write(self._reachable(), self._sender, qos, wait)
            )
            if qos:
                self._host.publish(self.down_topic, self._sender.send(text, now_ms()))
                self.stats["tx_qos"] += 1
                self._host.schedule(self, self._timeout_ms)  # its retransmission
            else:
                self._host.publish(self.down_topic, self._sender.unreliable(text))
                self.stats["tx_unreliable"] += 1

    async def drain(self) -> None:
        """Wait until every qos line written so far has been acknowledged.

        Raises:
            LinkClosedError: the LinkServer was closed meanwhile.
        """
        await self._wait_until(lambda: bool(self._sender.idle()))

    async def wait_online(self) -> None:
        """Wait until the device is online."""
        await self._wait_until(lambda: self.online)

    async def wait_offline(self) -> None:
        """Wait until the device is offline."""
        await self._wait_until(lambda: not self.online)

    def _check_open(self) -> None:
        if self._host.closing():
            raise self._host.closed_error("link server is closed")

    async def _wait_until(self, pred: Callable[[], bool]) -> None:
        while True:
            self._check_open()
            if pred():
                return
            await self._changed.wait()

    # -- driven by the LinkServer: incoming frames -------------------------------

    def _receive(self, payload: bytes, now: int) -> bool:
        """A message on ``up``. False when it is not a frame (dropped, counted, logged)."""
        try:
            frame = _decode(payload)
        except ValueError as exc:
            self.stats["malformed"] += 1
            log.warning("%s: dropped malformed frame %r: %s", self.up_topic, payload[:80], exc)
            return False
        if self._live.heard(now):
            self._online_changed(True)
        kind = frame.kind
        if kind == frames.HB:
            if self._live.answer_due(now):  # a backlog of stale ones gets one answer
                self._host.publish(self.down_topic, frames.HEARTBEAT)
                self.stats["heartbeats"] += 1
            else:
                self.stats["heartbeats_coalesced"] += 1
        elif kind == frames.ACK:
            if self._sender.on_ack(frame.session, frame.msg_id):
                self._changed.fire()
            elif frame.session is not None and frame.session != self._sender.session:
                self._foreign_ack(frame.session, now)
        elif kind == frames.QOS:
            if self._full() or self._parked:
                if frame in self._parked:
                    pass  # a retransmission of a frame already parked
                elif len(self._parked) < RX_WINDOW:
                    self._parked.append(frame)
                else:
                    self.stats["dropped_full"] += 1
                return True
            self._accept(frame)
        elif kind == frames.UNRELIABLE:
            if self._full():
                self.stats["dropped_unreliable"] += 1
                log.warning("%s: queue full, dropped a non-qos line", self.conn_id)
                return True
            self._accept(frame)
        return True

    def _accept(self, frame: frames.Frame) -> None:
        ack, lines = self._receiver.on_frame(frame)
        self.stats["rx_lines"] += len(lines)
        if not self._host.durable:
            if lines:
                self._lines.extend(lines)
                self._changed.fire()
            if ack is not None:
                self._host.publish(self.down_topic, ack)
            return
        self._held.extend(lines)
        self._host.commit_later(
            self.conn_id,
            None if ack is None else (self.down_topic, ack),
            start=bool(lines) or ack is not None,  # a buffered frame rides with the next batch
        )

    def _foreign_ack(self, session: str, now: int) -> None:
        """The device acknowledges lines of a session this process is not sending.

        A few such acks follow a restart without a state file (lines of the
        old session still on their way); a stream of them for longer than
        FOREIGN_ACK_SPAN timeouts means another server process writes to this
        conn_id too: its device then gets every reply twice. Logged once per
        conn_id, as an error, with what to change (docs/SERVER.md).
        """
        first, count, logged = self._foreign or (now, 0, False)
        count += 1
        span = clock.ticks_diff(now, first)
        if not logged and count >= 3 and span >= FOREIGN_ACK_SPAN * self._timeout_ms:
            logged = True
            log.error(
                "%s: the device acknowledges lines of session %s, which this process did "
                "not send, for %.1f s: another server process serves conn_id %r too, so the "
                "device gets both processes' lines; serve each conn_id from one process "
                "(pblink server --ids, LinkServer.connection())",
                self.conn_id, session, span / 1000, self.conn_id,
            )
        self._foreign = (first, count, logged)

    # -- driven by the LinkServer: liveness and retransmission -------------------

    def _status(self, online: bool, now: int) -> None:
        """The bridge's retained status (``online``/``offline``) arrived."""
        self._online_changed(self._live.status(online, now))

    def _broker_lost(self) -> None:
        """The MQTT connection is down: the device counts as offline."""
        self._online_changed(self._live.lost())

    def _online_changed(self, changed: bool) -> None:
        """Act on a change of the DeviceWatch: log, resend all when back, wake."""
        if not changed:
            return
        online = self._live.online
        log.info("device %s is %s", self.conn_id, "online" if online else "offline")
        if online:
            if self._host.broker_up() and self._live.resend_due(now_ms()):
                self._resend_all()
            self._host.schedule(self, 0)  # its silence timeout and retransmissions from now
        self._changed.fire()

    def _resend_all(self) -> None:
        """Publish every unacknowledged frame at once (the device is back)."""
        frames = self._sender.resend_all(now_ms())
        for frame in frames:
            self._host.publish(self.down_topic, frame)
        if frames:
            self.stats["resent"] += len(frames)
            log.debug("%s: resent %d frame(s)", self.conn_id, len(frames))

    def _tick(self, now: int) -> int | None:
        """The periodic work: the silence timeout, then retransmissions due at ``now``.

        Returns in how many milliseconds it needs to run again (the next
        silence timeout or retransmission), or ``None`` while the device is
        offline: then nothing is due until it comes back (``_online_changed``
        and ``write()`` ask the server to run it again).
        """
        if self._live.silent(now):
            log.info("%s: silent for %d ms", self.conn_id, 2 * self._timeout_ms)
            self._online_changed(True)
        peer_up = self._reachable()
        frames = self._sender.due(now, peer_up)
        if peer_up:
            for frame in frames:
                self._host.publish(self.down_topic, frame)
            if frames:
                self.stats["retransmitted"] += len(frames)
        if not self._live.online:
            return None
        # DeviceWatch.silent: offline once more than 2 x timeout_ms passed since last heard
        wait = 2 * self._timeout_ms + 1 - clock.ticks_diff(now, self._live.last_heard)
        if peer_up and self._sender.in_flight:
            deadline = self._sender.next_deadline()
            wait = min(wait, 0 if deadline is None else clock.ticks_diff(deadline, now))
        return wait

    def _wake(self) -> None:
        """Let every waiting reader and writer look again (the server's state changed)."""
        self._changed.fire()

    # -- driven by the LinkServer: group commit ----------------------------------

    def _snapshot(self, clean: bool) -> ConnState:
        """The stored entry now: receive state, unread lines, sender state only if ``clean``."""
        return ConnState(
            rx=self._receiver.snapshot(),
            unread=[*self._lines, *self._held],
            tx=self._sender.snapshot() if clean else None,
        )

    def _batch(self) -> int:
        """How many held lines the batch being written covers (pass it to ``_release``)."""
        return len(self._held)

    def _release(self, count: int) -> None:
        """The batch is on disk: its first ``count`` held lines become readable."""
        if count:
            self._lines.extend(self._held[:count])
            del self._held[:count]
            self._changed.fire()
