"""A protocol-level double of one device (ESP8266 bridge + Pyboard AppBase) in CPython.

It puts on MQTT exactly what an ESP8266 + Pyboard pair would (PROTOCOL.md 3
and 4): client id ``pblink-<conn_id>``, clean session false, keepalive 60 s,
will ``<root>/<id>/status`` = ``offline`` (QoS 1, retained); after CONNACK
``status`` = ``online`` (QoS 1, retained) and a QoS 1 subscription to ``down``;
``q`` frames on ``up`` at QoS 1, everything else at QoS 0; ``h`` heartbeats
whenever it has published nothing, or received nothing on ``down``, for
``timeout_ms / 2`` (at most one per ``timeout_ms / 2``); the server application
is deemed reachable (the bridge's ``U``) while a frame arrived on ``down`` in the
last ``timeout_ms``. End-to-end reliability is link_core's Sender (window 8, as
on the Pyboard) and Receiver, with AppBase's API::

    async with DeviceDouble("1", host, port) as dev:
        await dev.write("[1, 2, 3]")              # qos=True, wait=True
        line = await dev.readline()               # ends in "\\n"

Faults: ``go_offline()`` / ``go_online()`` drop and restore the MQTT connection
but keep the end-to-end state (a WiFi outage; ``silent=True`` leaves the TCP
connection open and just stops talking, like a device that lost power behind a
NAT: the broker sees silence, not a closed socket). ``restart()`` is a Pyboard
reboot: connection dropped, new sender session, receive state and queues lost.
``inject(kind, seconds)`` takes the bench's fault kinds (virtual_bench/faults.py):
``"wifi"``, ``"crash"`` and ``"hang"`` as a double can have them.

Cost and scale: no thread per double. paho-mqtt is driven from the asyncio
loop (``on_socket_open`` / ``register_write`` -> ``add_reader`` / ``add_writer``),
so thousands of doubles share one loop. Each costs one TCP socket (one file
descriptor), one paho ``Client`` (a fresh one per connection, like the bridge's
client that keeps no MQTT state across reconnects), one asyncio task that wakes
every ``tick_ms`` (default ``timeout_ms / 8``, 10 to 250 ms) for keepalive,
heartbeats, retransmissions and the reachability timer, plus its Sender and
Receiver: about 17 KiB of Python heap per connected double (tracemalloc;
checked by ``tests/test_server_double.py``). Measured on a 2-core machine
against Mosquitto: 1,000 doubles connect in about 2 s and see the server
(``server_ok``) in 2.5 s, one exchange each takes 3 s more. Two cautions for
big runs: run the ``LinkServer`` in another process (in the same process its
paho network thread and the busy loop thread fight over the GIL and 1,000
connects took 20 to 45 s), and raise ``ulimit -n``. The TCP connect itself is
blocking (paho's ``connect()``): instant on loopback, which is what the bench
uses; the double is not meant for far-away brokers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import socket
from collections.abc import Callable
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from link_core import endpoint, frames, lines, liveness, names
from server_apps.clock import now_ms
from server_apps.lines import LineQueue
from virtual_bench import faults

log = logging.getLogger("pblink.double")


class DeviceRestarted(ConnectionResetError):
    """Raised in readline()/write() calls that were waiting when the double restarted."""


class DoubleClosed(ConnectionError):
    """The double was closed."""


class DeviceDouble(LineQueue):
    """One simulated device. See the module docstring.

    ``reconnect_min``/``reconnect_max``: the broker reconnect backoff (the
    bridge's 1 s doubling to 30 s by default; tests shorten it).
    ``queue_size``: received lines held for ``readline()``; while full, qos
    frames are dropped unacknowledged (the server retransmits later).
    ``readline()`` and ``async for`` (which ends once the double is closed)
    come from ``server_apps.lines.LineQueue``.
    """

    _end_of_lines = (DoubleClosed,)

    def __init__(
        self,
        conn_id: str,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        root: str = "pblink",
        username: str | None = None,
        password: str | None = None,
        timeout_ms: int = 1500,
        window: int = endpoint.TX_WINDOW_PYBOARD,
        queue_size: int = 64,
        keepalive: int = 60,
        tick_ms: int | None = None,
        reconnect_min: float = 1.0,
        reconnect_max: float = 30.0,
        connect_timeout: float = 5.0,
    ) -> None:
        super().__init__()  # _lines, _changed
        self.conn_id = names.check_conn_id(conn_id)
        self.host = host
        self.port = port
        self.root = names.check_root(root)
        self.username = username
        self.password = password
        self.timeout_ms = timeout_ms
        self.window = window
        self.queue_size = queue_size
        self.keepalive = keepalive
        self.tick = (tick_ms if tick_ms is not None else max(10, min(250, timeout_ms // 8))) / 1000
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.connect_timeout = connect_timeout
        topics = names.Topics(root, conn_id)
        self.up_topic = topics.up
        self.down_topic = topics.down
        self.status_topic = topics.status
        self.client_id = names.client_id(conn_id)
        self._sender = self._new_sender()
        self._receiver = endpoint.Receiver()
        self._wake = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self._zombie: mqtt.Client | None = None  # a silently abandoned connection
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._task: asyncio.Task[None] | None = None
        self._want_online = True
        self._mqtt_up = False
        self._server_ok = False
        self._closed = False
        self._generation = 0  # bumped by restart(): waiting calls raise DeviceRestarted
        self._watch = liveness.ServerWatch(timeout_ms)  # the bridge's rules, PROTOCOL.md 4.4
        self.last_refusal: str | None = None
        self.stats: dict[str, int] = collections.defaultdict(int)

    def __repr__(self) -> str:
        return f"<DeviceDouble {self.conn_id!r} mqtt={self._mqtt_up} server_ok={self._server_ok}>"

    def _new_sender(self) -> endpoint.Sender:
        return endpoint.Sender(frames.new_session(os.urandom(4)), self.window, self.timeout_ms)

    # -- public state ----------------------------------------------------------

    @property
    def mqtt_connected(self) -> bool:
        return self._mqtt_up

    @property
    def server_ok(self) -> bool:
        """The server application is reachable (the bridge's ``U``/``D``)."""
        return self._server_ok

    @property
    def session(self) -> str:
        return self._sender.session

    @property
    def in_flight(self) -> int:
        return self._sender.in_flight

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> DeviceDouble:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start connecting (returns at once; see ``wait_connected``)."""
        if self._task is not None:
            raise RuntimeError("already started")
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name=f"double-{self.conn_id}")

    async def close(self) -> None:
        """Drop the connection abruptly (the will fires) and stop."""
        self._closed = True
        self._drop_connection()
        self._close_zombie()
        self._fire(kick=True)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_connected(self) -> None:
        await self._wait_until(lambda: self._mqtt_up)

    async def wait_server(self, up: bool = True) -> None:
        """Wait until the server application is (un)reachable."""
        await self._wait_until(lambda: self._server_ok == up)

    async def go_offline(self, silent: bool = False) -> None:
        """A WiFi outage: drop the MQTT connection, keep the end-to-end state."""
        self._want_online = False
        self._drop_connection(silent=silent)
        self._fire(kick=True)

    async def go_online(self) -> None:
        """The WiFi is back: reconnect at once."""
        self._want_online = True
        self._fire(kick=True)

    async def restart(self) -> None:
        """A Pyboard reboot: new sender session, receive state and unread lines lost."""
        self._generation += 1
        self._drop_connection()
        self._sender = self._new_sender()
        self._receiver = endpoint.Receiver()
        self._lines.clear()
        self._want_online = True
        self._fire(kick=True)

    async def inject(self, kind: str, seconds: float | None = None) -> None:
        """Inject a fault of the bench's table (virtual_bench/faults.py) by its
        ``kind``, as this double can have it: ``"wifi"`` (offline for ``seconds``,
        default 3), ``"crash"`` (the connection drops without DISCONNECT, then
        reconnects, end-to-end state kept), ``"hang"`` (silent with the TCP
        connection open for ``seconds``, default ``timeout_ms``, then reconnects).
        Returns when the fault is over. ValueError for an unknown kind or one a
        double has no part for (``"i2c"``; ``"broker"`` and ``"server"`` are the
        lab's)."""
        row = faults.fault_kind(kind)
        if row.double is None:
            raise ValueError(f"a DeviceDouble has no {row.label} (fault kind {kind!r})")
        await row.double(self, seconds)

    # -- AppBase API -----------------------------------------------------------

    async def write(self, line: str | bytes, qos: bool = True, wait: bool = True) -> None:
        """As AppBase.write: pauses while the server application is unreachable."""
        text = lines.check_line(line)
        gen = self._generation
        async with self._write_lock:
            while not endpoint.may_write(self._server_ok, self._sender, qos, wait):
                await self._changed_wait(gen)
            if qos:
                self._publish(self._sender.send(text, now_ms()))
            else:
                self._publish(self._sender.unreliable(text))

    async def drain(self) -> None:
        """Wait until every qos line has been acknowledged."""
        await self._wait_until(self._sender.idle)

    async def _wait_until(self, pred: Callable[[], bool]) -> None:
        gen = self._read_start()
        while not pred():
            await self._changed_wait(gen)

    def _read_start(self) -> int:
        """The generation a waiting call belongs to (``restart()`` ends it)."""
        return self._generation

    async def _changed_wait(self, gen: int) -> None:
        if self._closed:
            raise DoubleClosed(f"device double {self.conn_id} is closed")
        if gen != self._generation:
            raise DeviceRestarted(f"device double {self.conn_id} restarted")
        await self._changed.wait()
        if self._closed:
            raise DoubleClosed(f"device double {self.conn_id} is closed")
        if gen != self._generation:
            raise DeviceRestarted(f"device double {self.conn_id} restarted")

    def _fire(self, kick: bool = False) -> None:
        """Wake waiting readers/writers; ``kick`` also wakes the connection task."""
        self._changed.fire()
        if kick:
            self._wake.set()

    # -- the connection task ---------------------------------------------------

    async def _run(self) -> None:
        delay = self.reconnect_min
        while not self._closed:
            if not self._want_online:
                await self._sleep(3600)
                continue
            if self._zombie is not None:  # a silent outage ends: close the old socket first
                self._close_zombie()
                await asyncio.sleep(0.05)
            if not await self._connect_once():
                await self._sleep(delay * (0.9 + 0.2 * random.random()))
                delay = min(delay * 2, self.reconnect_max)
                continue
            delay = self.reconnect_min
            log.debug("%s: connected to %s:%s", self.conn_id, self.host, self.port)
            while self._mqtt_up and self._want_online and not self._closed:
                self._tick()
                await self._sleep(self.tick)
            self._drop_connection()

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def _connect_once(self) -> bool:
        assert self._loop is not None
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        client.will_set(self.status_topic, names.OFFLINE, qos=liveness.QOS_STATUS, retain=True)
        client.connect_timeout = self.connect_timeout
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._watch.disconnected()
        self._client = client
        self._connack = self._loop.create_future()
        try:
            client.connect(self.host, self.port, self.keepalive)
        except OSError as exc:
            log.debug("%s: cannot reach %s:%s: %s", self.conn_id, self.host, self.port, exc)
            self._client = None
            return False
        try:
            async with asyncio.timeout(self.connect_timeout):
                reason = await self._connack
        except (TimeoutError, ConnectionAbortedError) as exc:
            log.debug("%s: no CONNACK (%s)", self.conn_id, type(exc).__name__)
            if self._client is client:
                self._drop_connection()
            return False
        if reason.is_failure:
            self.last_refusal = str(reason).lower()
            log.warning("%s: broker refused: %s", self.conn_id, self.last_refusal)
            if self._client is client:
                self._drop_connection()
            return False
        return self._client is client and self._mqtt_up

    def _drop_connection(self, silent: bool = False) -> None:
        """Forget the current connection without a DISCONNECT (the will fires)."""
        client, self._client = self._client, None
        was_up = self._mqtt_up
        self._mqtt_up = False
        self._watch.disconnected()
        self._set_server_ok(False)
        if client is None:
            if was_up:
                self._fire()
            return
        for name in ("on_connect", "on_disconnect", "on_message"):
            setattr(client, name, None)
        sock = client.socket()
        if sock is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
        for name in ("on_socket_open", "on_socket_close"):
            setattr(client, name, None)
        for name in ("on_socket_register_write", "on_socket_unregister_write"):
            setattr(client, name, None)
        if silent:
            self._close_zombie()
            self._zombie = client  # its socket stays open and unread until go_online()
        else:
            _abort(client)
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectionAbortedError("connection dropped"))
            self._connack.exception()  # retrieved: no "never retrieved" warning if unawaited
        self._fire(kick=True)

    def _close_zombie(self) -> None:
        client, self._zombie = self._zombie, None
        if client is not None:
            _abort(client)

    # -- paho callbacks (all in the loop thread) -------------------------------

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(AttributeError, OSError):  # no Nagle delay on acks
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._loop.add_reader(sock, client.loop_read)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_writer(sock, client.loop_write)

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_writer(sock)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if client is not self._client:
            return
        if not reason_code.is_failure:
            # Done here, in the CONNACK's callback, so that it precedes any message the
            # broker sends right behind the CONNACK (queued down frames).
            self.last_refusal = None
            self._mqtt_up = True
            self._watch.connected(now_ms())  # server not yet heard: 'h' at once
            self.stats["connects"] += 1
            client.publish(self.status_topic, names.ONLINE, qos=liveness.QOS_STATUS, retain=True)
            client.subscribe(self.down_topic, qos=1)
            self._tick()  # the first heartbeat at once: the server's answer means U
            self._fire(kick=True)
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(reason_code)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if client is not self._client:
            return
        log.debug("%s: MQTT connection lost (%s)", self.conn_id, reason_code)
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectionAbortedError("closed before CONNACK"))
            self._connack.exception()
        self._mqtt_up = False
        self._watch.disconnected()
        self._set_server_ok(False)
        self._fire(kick=True)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if client is not self._client or msg.topic != self.down_topic:
            return  # retained status of others etc. (amqtt sets retain on queued ones: ignored)
        try:
            frame = frames.decode(msg.payload)
        except ValueError as exc:
            self.stats["malformed"] += 1
            log.warning("%s: dropped malformed frame %r: %s", self.conn_id, msg.payload[:60], exc)
            return
        self._watch.heard(now_ms())
        self.stats["received"] += 1
        self._set_server_ok(True)
        kind = frame.kind
        if kind == frames.ACK:
            if self._sender.on_ack(frame.session, frame.msg_id):
                self._fire()
        elif kind == frames.QOS or kind == frames.UNRELIABLE:
            if len(self._lines) >= self.queue_size:
                self.stats["dropped_full"] += 1
                return
            ack, lines = self._receiver.on_frame(frame)
            if ack is not None:
                self._publish(ack)
            if lines:
                self._lines.extend(lines)
                self.stats["rx_lines"] += len(lines)
                self._fire()

    # -- periodic work ---------------------------------------------------------

    def _set_server_ok(self, ok: bool) -> None:
        if ok == self._server_ok:
            return
        self._server_ok = ok
        log.debug("%s: server %s", self.conn_id, "up (U)" if ok else "down (D)")
        if ok:
            for frame in self._sender.resend_all(now_ms()):
                self._publish(frame)
        self._fire()

    def _tick(self) -> None:
        client = self._client
        if client is None:
            return
        client.loop_misc()  # keepalive pings, dead-broker detection
        if not self._mqtt_up:
            return
        now = now_ms()
        watch = self._watch
        if self._server_ok and not watch.reachable(now):
            self._set_server_ok(False)
        if watch.unanswered(now):
            self.stats["unanswered"] += 1
            log.info(
                "%s: no server application answered within %d ms of the broker connection",
                self.conn_id, 2 * self.timeout_ms,
            )
        if watch.heartbeat_due(now):
            watch.heartbeat_sent(now)
            self._publish(frames.HEARTBEAT)
        for frame in self._sender.due(now, self._server_ok):
            self._publish(frame)
            self.stats["retransmitted"] += 1

    def _publish(self, payload: bytes) -> None:
        """Publish an end-to-end frame on up at its MQTT QoS level (PROTOCOL.md 4.1)."""
        client = self._client
        if client is None or not self._mqtt_up:
            return
        client.publish(self.up_topic, payload, qos=liveness.mqtt_level(payload))
        self._watch.published(now_ms())
        self.stats["published"] += 1


def _abort(client: mqtt.Client) -> None:
    """Close a client's socket without a DISCONNECT packet (so the broker sends the will)."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
