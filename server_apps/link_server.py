"""The server end of pblink-mqtt: one MQTT connection serving many devices.

::

    async with LinkServer("localhost", 1883, state_path="srv.json") as server:
        conn = await server.connection("1")
        async for line in conn:                 # lines end in "\\n", as in pb_link
            await conn.write(line)              # qos=True, wait=True

This implements docs/PROTOCOL.md sections 3 to 5 on the server side with the
sans-I/O core in ``link_core`` (frame codec, Sender, Receiver, names/topics).
This module holds ``LinkServer``: the paho bridge, the routing of each message
to its conn_id, the ticker and the group commit. One device's protocol
(receiving, parking, reading, writing, its tick) is ``Connection`` in
:mod:`server_apps.connection`; the state store is behind
:class:`server_apps.state.Store`.

Threading model
---------------
paho-mqtt runs its own network thread (``loop_start()``). It does no
protocol work: it reads up to ``READ_BATCH`` packets per wake-up, parses the
QoS 0 and 1 PUBLISH packets itself (``_Client``, MQTT 3.1.1) and appends them
to an inbox deque as one batch, with their PUBACKs queued as one block after
it (connect and disconnect events, and MQTT 5 messages, one by one through
paho's callbacks); if no drain is pending it schedules one on the asyncio loop
with ``loop.call_soon_threadsafe`` (one wake-up per burst, not per message).
All protocol state lives in the asyncio thread, which routes a message by
its topic's bytes. Frames to publish join an outbox handed over
``OUTBOX_DELAY_S`` (2 ms) after the first of a burst (``_flush_outbox``): the
burst's QoS 0 frames (acks,
heartbeat answers) as one block of PUBLISH packets, sent with one ``send()``
straight from the event loop when paho has nothing queued (plain TCP; under
the lock paho's thread writes under, so packets never interleave), otherwise
queued for paho's thread with one wake-up; QoS 1 frames through paho's
``publish()``. Packets queued for paho's thread go out joined, one
``send()`` per round. Chosen over driving paho from the event loop
because the server has exactly one connection, and the thread gives for free:
reconnects with paho's backoff (``reconnect_delay_set(1, 30)``: 1 s doubling to
30 s), blocking DNS/TCP/TLS handshakes kept off the loop, and MQTT keepalive
pings that keep flowing while the application hogs the loop. The inbox is
bounded: when the loop falls behind by ``INBOX_LIMIT`` events, paho's thread
pauses reading, so TCP back-pressures the broker instead of memory growing.

Delivery (PROTOCOL.md 3)
------------------------
Per conn_id a ``link_core`` Sender (window ``window``, default 16) and Receiver
(window 16). ``write()`` waits for a free window slot (back-pressure), for
no unacknowledged frame when ``wait=True``, and for the device to be online and
the broker connected (writes pause during outages). Retransmission runs from
one ticker task only while the device is online; when it comes back online
every unacknowledged frame is resent at once. The ticker (every
``timeout_ms / 8``, 10 to 100 ms) looks only at the conn_ids whose silence
timeout or retransmission is due: each Connection sits in a heap under the
time it is next due, so idle devices cost a tick nothing. Lines received go to a bounded
per-connection queue (``queue_size``); while it is full, further qos frames of
that conn_id are parked unacknowledged (at most ``RX_WINDOW`` of them; beyond
that they are dropped unacknowledged), so the device's window fills and it
stops; an acknowledged line is never dropped. A parked frame is taken as soon as
``readline()`` makes room. At most ``queue_size + RX_WINDOW`` lines are held.

Liveness (PROTOCOL.md 4.4)
--------------------------
A device is online when its retained status becomes ``online`` or any valid
frame arrives on its ``up`` topic, and offline on status ``offline``, after
``2 * timeout_ms`` of silence, or when the broker connection is lost. Every
``h`` from a claimed conn_id is answered with ``h`` on its ``down`` topic, at
most one per ``timeout_ms / 4``: a backlog of stale heartbeats delivered at
once after an outage gets one answer. The rules are ``link_core.liveness``,
``link_core.device_watch`` and ``link_core.endpoint`` (``DeviceWatch``,
``mqtt_level``, ``may_write``), shared with the devices.

Frames for a conn_id no one has asked for with ``connection()`` are neither
acknowledged nor answered, heartbeats included: the bridge then reports the
server application unreachable (``D``) and the device holds its qos lines
instead of retransmitting them into the void; several server processes can
share one root and split the conn_ids between them. As soon as the
application asks for the conn_id, the next ``h`` is answered, the bridge
reports ``U`` and the device resends everything at once.

Durable state (PROTOCOL.md 4.5) and group commit
------------------------------------------------
With ``state_path`` the receive state (device session, next id, reorder buffer)
and the acknowledged-but-unread lines are written (tmp file, fsync,
``os.replace``) before the acks they cover are published: frames processed
while a write is in progress form the next batch, and a batch is started
``commit_delay_ms`` after the first pending item. Delivered lines become
readable when their batch is on disk, so a crash can neither lose an
acknowledged line nor deliver one the app had not been given; only lines read
in the last few milliseconds before a crash are delivered again. A clean exit
writes the sender state too and marks the file clean; claiming a conn_id
writes its entry without sender state first, so after a crash it starts a new
sender session. Without ``state_path`` acks go out at once. A batch takes anew
only the entries of conn_ids that changed since the last one and tells the
store which they are (``Store.save(state, changed)``). With ``state_db``
(PostgreSQL, :mod:`server_apps.store_pg`) the same batches go to a table shared
by several processes, each conn_id leased to one of them at a time.

One identity, one process (PROTOCOL.md 4.3)
-------------------------------------------
Two processes must not share an MQTT client id (the broker would keep kicking
one off for the other) nor a state file (one would overwrite the other's
entries with an older copy). So ``start()`` first takes an exclusive lock on
the state file (:class:`StateLockedError` if another process holds it), then
asks, with a short-lived probe connection, whether a process is already
connected as this client id: a running LinkServer answers on
``<root>/.servers/<client_id>/holder`` every probe on ``.../probe`` (``.``
never appears in a conn_id, so no device's topics are touched). An answer
within ``identity_probe_s`` (default 0.5 s; 0 skips the probe) raises
:class:`ServerIdentityError`. Both messages name the option to change.

Errors
------
``__aenter__`` raises :class:`LinkAuthError` when the broker refuses the
credentials, :class:`LinkRefusedError` for another refusal and
:class:`BrokerUnreachableError` (all ``ConnectionError``) when the broker
cannot be reached within ``connect_timeout``. Later losses of the broker are
retried forever. Methods of a closed server raise :class:`LinkClosedError`.

With ``state_db``, a lost database session (the database restarted or
unreachable, the session terminated, or an operation not answered within
``state_db_timeout_ms``) closes the server by itself: it must acknowledge
nothing more. It stops at once (no final state write, a DISCONNECT to the
broker, whose session keeps queuing), and from then on ``connection()``,
``readline()``, ``write()`` and the other methods raise
:class:`StateLostError` (a ``LinkClosedError``, so ``async for`` loops end),
``error`` holds it, and ``wait_error()`` returns it. Restart the process (a
supervisor): once the database has ended the session, the other processes
still connected take its conn_ids over; when the database itself went away
every process stops. ``pblink server`` exits with status 1 and one line
(docs/SERVER.md). A state file that
cannot be written is retried every second instead (the disk may come back).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import logging
import os
import re
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from link_core import control, endpoint, frames, liveness, names, topics
from link_core.device_watch import DeviceWatch
from server_apps.clock import now_ms as now_ms

# Connection, the errors, FOREIGN_ACK_SPAN and now_ms have their own modules; importable here too.
from server_apps.connection import FOREIGN_ACK_SPAN as FOREIGN_ACK_SPAN
from server_apps.connection import RX_WINDOW
from server_apps.connection import Connection as Connection
from server_apps.errors import BrokerUnreachableError as BrokerUnreachableError
from server_apps.errors import LinkAuthError as LinkAuthError
from server_apps.errors import LinkClosedError as LinkClosedError
from server_apps.errors import LinkRefusedError as LinkRefusedError
from server_apps.errors import ServerIdentityError as ServerIdentityError
from server_apps.errors import StateLostError
from server_apps.lines import Signal
from server_apps.state import (
    ConnState,
    ServerState,
    StateFileError,
    StateStore,
    Store,
    check_client_id,
)
from server_apps.store_pg import DEFAULT_TIMEOUT_MS as DEFAULT_DB_TIMEOUT_MS
from server_apps.store_pg import PgStore, StateDbError

log = logging.getLogger("pblink.server")

MQTTv311: Final = MQTTProtocolVersion.MQTTv311
MQTTv5: Final = MQTTProtocolVersion.MQTTv5

SERVER_WINDOW: Final = endpoint.TX_WINDOW_SERVER
INBOX_LIMIT: Final = 10_000
# How long a frame waits in the outbox for others to go out with it in one send()
# (docs/PERFORMANCE.md "The data path, third round"): a send() to the broker is the
# largest single cost of the loop thread when each loop turn flushes a few frames.
OUTBOX_DELAY_S: Final = 0.002
TOPIC_FIELDS_LIMIT: Final = 100_000  # cached PUBLISH topic fields (one per down topic)
READ_BATCH: Final = 256  # MQTT packets paho's thread reads per wake-up (_Client.loop_read)
RECV_SIZE: Final = 65536  # bytes paho's thread asks the socket for at once (_Client._sock_recv)
UNCLAIMED_LIMIT: Final = 4096
# CONNACK reason codes (v5 numbering; paho maps 3.1.1 return codes 4/5 to 134/135).
_AUTH_CODES: Final = frozenset({0x86, 0x87, 0x8A, 0x8C})
_SESSION_EXPIRY_S: Final = 0xFFFFFFFF
_SESSION_TAKEN_OVER: Final = 0x8E  # MQTT 5 DISCONNECT reason; 3.1.1 just closes the socket
IDENTITY_HINT: Final = (
    ": give each server process its own client id (pblink server --client-id NAME, "
    "LinkServer(client_id=...))"
)
# with the file store only: its state file is named after the client id
FILE_HINT: Final = "; its state file follows the client id"


class LinkServer:
    """One MQTT connection serving the devices under ``root`` (PROTOCOL.md 4.3).

    Use as ``async with LinkServer(...) as server``, then
    ``conn = await server.connection(conn_id)`` per device. See the module
    docstring for the guarantees (delivery, liveness, durable state).

    Args:
        host: the MQTT broker's host name or IP address (no scheme, port or path: the
            devices' rule). Default ``"localhost"``.
        port: the broker's TCP port, 1 to 65535. Default 1883 (use 8883 with ``tls``).
        root: the topic root, 1 to 128 characters: levels of ``A-Z a-z 0-9 _ -``
            separated by single ``/`` (PROTOCOL.md 4.1). The devices' topics are
            ``<root>/<conn_id>/up|down|status``. Default ``"pblink"``.
        client_id: this server's MQTT client id. Two servers sharing one broker
            need different ids. 1 to 65535 UTF-8 bytes without control characters,
            ``/``, ``\\`` or ``..`` (it also names the state file of ``pblink
            server``: ``server_apps.state.check_client_id``). Default ``"pblink.server"``.
        username: MQTT user name; ``None`` (default) connects anonymously.
        password: MQTT password, with ``username``. Default ``None``.
        tls: ``None``/``False`` (default): plain TCP; ``True``: TLS with the
            system's default CA certificates; an ``ssl.SSLContext``: TLS with
            that context (your CA file, client certificates).
        protocol: ``MQTTv311`` (default) or ``MQTTv5`` (then with a session
            that outlives the connection).
        timeout_ms: the link's timeout in milliseconds, an int from 200 to
            3,600,000 (the devices' rule, link_core/schema.py); must be
            the devices' ``timeout_ms`` (pb_settings). Retransmissions start
            after it, and a device is offline after ``2 * timeout_ms`` of
            silence. Default 1500.
        state_path: file of the durable link state (JSON, written atomically);
            ``None`` (default): no state file, a restart starts new sessions.
        state_db: a ``postgresql://`` (or ``postgres://``) URL or a libpq
            ``key=value`` connection string: the state goes to a table that
            several server processes share (:mod:`server_apps.store_pg`),
            instead of a file. ``connection()``
            then waits for the conn_id's lease, which one process holds at a
            time. Not with ``state_path``. Default ``None``.
        lease_poll_ms: with ``state_db``, how often conn_ids waiting for their
            lease are tried (takeover of a dead process's conn_ids). At least
            10, default 250.
        state_db_timeout_ms: with ``state_db``, the client-side bound of every
            database operation (a commit, a lease poll, the liveness query):
            one that overruns (a hung, not dead, database session) logs one
            ERROR line and closes the server as a lost session does. 100 to
            600,000, default 5000 (``server_apps.store_pg.DEFAULT_TIMEOUT_MS``).
        serves: the conn_ids this process will ask ``connection()`` for:
            a device of one of them heard before its ``connection()`` call
            (a retained ``online`` status at start) is never reported as not
            served. Default: none (each conn_id counts from its
            ``connection()`` call on).
        queue_size: unread lines held per conn_id; while it is full the server
            stops acknowledging that device's lines (back-pressure). At least 1,
            default 64.
        window: qos lines per conn_id in flight (written, not acknowledged)
            before ``write()`` waits. At least 1, default ``SERVER_WINDOW`` (16).
        keepalive: MQTT keepalive in seconds. Default 60.
        connect_timeout: seconds to wait for the first connection (TCP, TLS and
            CONNACK) in ``start()``. Default 10.0.
        commit_delay_ms: milliseconds a state-file batch waits for more items
            after its first one (group commit). Default 2.
        fsync: ``fsync`` the state file and its folder on every write
            (default ``True``); ``False`` for tests on a slow disk.
        identity_probe_s: seconds ``start()`` waits for another process holding
            ``client_id`` to answer before it refuses to start (0: no probe; see
            docs/SERVER.md "One identity, one process"). Default 0.5.
        serve_hint: how the application would serve a conn_id, in the warning
            logged once per conn_id that talks but is not served (``{conn_id}``
            is replaced by it). Default: a hint naming ``LinkServer.connection()``.

    Raises:
        ValueError: an invalid ``root`` or ``client_id``; a ``host`` (no scheme, port or path), a
            ``port`` outside 1 to 65535 (or not an int), a ``timeout_ms``, or a
            ``password`` without ``username`` that the devices refuse, with their
            one-line message (``link_core.control.check_setting``, ``check_login``);
            ``queue_size`` or ``window`` under 1, an unknown ``protocol``, both
            ``state_path`` and ``state_db``, a ``state_db`` that is not a
            PostgreSQL URL or connection string (the empty string included:
            ``server_apps.store_pg.check_dsn``), a ``state_db_timeout_ms`` out
            of range, an invalid conn_id in ``serves``.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 1883,
        *,
        root: str = "pblink",
        client_id: str = "pblink.server",
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | bool | None = None,
        protocol: MQTTProtocolVersion = MQTTv311,
        timeout_ms: int = 1500,
        state_path: str | os.PathLike[str] | None = None,
        state_db: str | None = None,
        lease_poll_ms: int = 250,
        state_db_timeout_ms: int = DEFAULT_DB_TIMEOUT_MS,
        serves: Iterable[str] = (),
        queue_size: int = 64,
        window: int = SERVER_WINDOW,
        keepalive: int = 60,
        connect_timeout: float = 10.0,
        commit_delay_ms: int = 2,
        fsync: bool = True,
        identity_probe_s: float = 0.5,
        serve_hint: str = "ask for it with LinkServer.connection()",
    ) -> None:
        names.check_root(root)
        check_client_id(client_id)
        for name, value in (("host", host), ("port", port), ("timeout_ms", timeout_ms)):
            control.check_setting(name, value)  # the devices' rules, link_core/schema.py
        control.check_login(username, password)
        if queue_size < 1 or window < 1:
            raise ValueError("queue_size and window must be at least 1")
        if protocol not in (MQTTv311, MQTTv5):
            raise ValueError(f"unsupported MQTT protocol {protocol!r}: use MQTTv311 or MQTTv5")
        self.host = host
        self.port = port
        self.root = root
        self.client_id = client_id
        self.timeout_ms = timeout_ms
        self.queue_size = queue_size
        self.window = window
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.protocol = protocol
        self.identity_probe_s = identity_probe_s
        self.serve_hint = serve_hint  # how to serve a conn_id, for the "not served" log
        self._told_unserved: set[str] = set()
        self._told_waiting = False
        # conn_ids never reported as not served: those the application said it serves,
        # and those whose connection() runs (waiting for the lease or being set up)
        self._serves = frozenset(names.check_conn_id(c) for c in serves)
        self._asked: dict[str, int] = {}  # conn_id -> connection() calls running for it
        self._error: StateLostError | None = None  # why the server closed itself
        self._failed = asyncio.Event()
        self._fail_task: asyncio.Task[None] | None = None
        self._token = secrets.token_hex(4)  # this process's answer to identity probes
        level = client_id if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", client_id) else (
            client_id.encode().hex()[:128] or "-"
        )
        self._probe_topic = f"{root}/.servers/{level}/probe"
        self._probe_topic_b = self._probe_topic.encode()
        self._holder_topic = f"{root}/.servers/{level}/holder"
        self._quick_drops = 0  # broker connections lost soon after they came up
        self._up_since = 0.0
        self._username = username
        self._password = password
        self._tls = tls
        self._commit_delay = commit_delay_ms / 1000
        if state_path is not None and state_db is not None:
            raise ValueError("give state_path (a file) or state_db (PostgreSQL), not both")
        self._store: Store | PgStore | None = (
            StateStore(state_path, fsync=fsync) if state_path is not None
            else PgStore(state_db, root=root, owner=client_id, poll_ms=lease_poll_ms,
                         on_lost=self._store_lost, timeout_ms=state_db_timeout_ms)
            if state_db is not None else None
        )
        self._state = ServerState()
        self._conns: dict[str, Connection] = {}
        self._routes: dict[bytes, Connection] = {}  # up topic (bytes) -> its claimed Connection
        self._unclaimed: collections.OrderedDict[str, DeviceWatch] = collections.OrderedDict()
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: collections.deque[tuple[Any, ...]] = collections.deque()
        self._inbox_lock = threading.Lock()
        self._inbox_scheduled = False
        self._inbox_msgs = 0  # messages in the inbox (a batch counts each of its messages)
        self._outbox: list[tuple[str, bytes]] = []  # frames to publish (_flush_outbox)
        # topic -> its PUBLISH topic field (length + UTF-8): one per down topic, built once
        self._topic_fields: dict[str, bytes] = {}
        self._due: list[tuple[int, int, Connection]] = []  # heap: (check at ms, seq, conn)
        self._due_seq = 0
        self._started = False
        self._closed = True
        self._closing = False
        self._broker_up = False
        self._connack: asyncio.Future[tuple[bool, ReasonCode]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending_acks: list[tuple[str, bytes]] = []
        self._dirty: set[str] = set()  # claimed conn_ids whose stored entry changed
        self._commit_wanted = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._broker_signal = Signal()
        self._host = _Host(self)  # what its Connections use of it
        self.stats: dict[str, int] = collections.defaultdict(int)

    @property
    def broker(self) -> str:
        """The broker's address, ``"host:port"`` (for messages)."""
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        """The MQTT connection to the broker is up."""
        return self._broker_up

    @property
    def error(self) -> StateLostError | None:
        """Why the server closed itself (its state database session was lost), else ``None``."""
        return self._error

    async def wait_error(self) -> StateLostError:
        """Wait until the server closes itself (see "Errors" above); the error it raises since."""
        await self._failed.wait()
        assert self._error is not None
        return self._error

    @property
    def connections(self) -> dict[str, Connection]:
        """The conn_ids asked for so far."""
        return dict(self._conns)

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> LinkServer:
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
        """Load the state file, connect to the broker, subscribe (``async with`` calls it).

        Raises:
            LinkAuthError: the broker refused the credentials.
            LinkRefusedError: the broker refused the connection for another reason.
            BrokerUnreachableError: no connection within ``connect_timeout`` seconds.
            StateFileError: the state file exists but cannot be read as one.
            RuntimeError: ``start()`` was called before.
        """
        if self._started:
            raise RuntimeError("a LinkServer can be started only once")
        self._started = True
        self._loop = asyncio.get_running_loop()
        try:
            await self._claim_identity()
        except BaseException:
            await self._unlock_store()
            raise
        if self._store is not None and not isinstance(self._store, PgStore):
            existed = self._store.exists()
            self._state = await asyncio.to_thread(self._store.load)
            log.info(
                "state file %s: %d conn_id(s), last exit %s",
                self._store.where,
                len(self._state.conns),
                "clean" if self._state.clean
                else "not clean (sender sessions restart)" if existed
                else "none (a new file)",
            )
            self._state.clean = False
            await self._write_state(clean=False, changed=set())  # mark it dirty while we run
        self._closed = False
        self._closing = False
        try:
            await self._connect()
        except BaseException:
            self._closed = True
            await self._stop_client(wait=False)
            await self._unlock_store()
            raise
        self._tasks = [asyncio.create_task(self._ticker(), name="pblink-server-ticker")]
        if self._store is not None:
            self._tasks.append(asyncio.create_task(self._committer(), name="pblink-server-commit"))

    async def close(self) -> None:
        """Write the final (clean) state, then disconnect. Idempotent."""
        if self._closed:
            return
        self._closing = True
        self._wake_all()  # readers and writers raise LinkClosedError from now on
        async with self._commit_lock:  # a batch being written finishes first
            await self._stop_tasks()
            if self._store is not None:
                await self._commit(clean=True)
        self._flush_outbox()  # the last acks go out before DISCONNECT
        await self._disconnect()
        log.info("link server %s closed", self.client_id)

    async def abort(self) -> None:
        """Stop at once, as a crash would: no final state write, no DISCONNECT.

        The broker sees the TCP connection drop. For fault-injection tests: the
        state file keeps what the last batch wrote, so the next start continues
        the receive state and starts new sender sessions.
        """
        if self._closed:
            return
        self._closing = True
        await self._stop_tasks()
        self._outbox.clear()  # a crash publishes nothing more
        self._closed = True
        self._broker_up = False
        self._wake_all()
        client, self._client = self._client, None
        if client is not None:
            client.on_connect = client.on_disconnect = client.on_message = None
            if isinstance(client, _Client):
                client.on_publishes = None
            sock = client.socket()
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            await asyncio.to_thread(client.loop_stop)
        await self._unlock_store()
        log.warning("link server %s aborted", self.client_id)

    async def _disconnect(self) -> None:
        """Closed from now on: DISCONNECT from the broker, release the store."""
        self._closed = True
        self._broker_up = False
        self._wake_all()
        await self._stop_client()
        await self._unlock_store()

    async def _stop_tasks(self) -> None:
        """Cancel the ticker and the committer and wait for them to end."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _unlock_store(self) -> None:
        """Release the state file's lock, or close the database session (its leases go)."""
        if isinstance(self._store, PgStore):
            await self._store.close()
        elif self._store is not None:
            self._store.unlock()

    def _check_open(self) -> None:
        if self._closed or self._closing:
            raise self._closed_error("link server is closed")

    def _closed_error(self, message: str) -> LinkClosedError:
        """What a method of the closed server raises: why it closed, if it closed itself."""
        if self._error is not None:
            return StateLostError(str(self._error))
        return LinkClosedError(message)

    def _store_lost(self, exc: StateDbError) -> None:
        """PgStore lost its session (its ``on_lost``): close this server at once."""
        if self._error is not None or self._closed or self._loop is None:
            return
        self._error = StateLostError(f"link server {self.client_id} closed: {exc}")
        self._fail_task = self._loop.create_task(self._fail(), name="pblink-server-fail")

    async def _fail(self) -> None:
        """Stop as after a lost lease: nothing more is acknowledged or committed."""
        closing, self._closing = self._closing, True
        self._pending_acks.clear()  # their batch was not committed: never acknowledged
        self._outbox.clear()
        self._wake_all()  # readers and writers raise StateLostError from now on
        if not closing:  # close() is not running: stop its work here
            await self._stop_tasks()
            await self._disconnect()
        log.info("link server %s closed itself: lost its state database session", self.client_id)
        self._failed.set()

    # -- connections -----------------------------------------------------------

    async def connection(self, conn_id: str) -> Connection:
        """The Connection for ``conn_id`` (the same object on every call).

        Claiming a conn_id is what makes this server answer that device
        (until then its heartbeats go unanswered, so another server process
        may serve it). With a state file, the conn_id's stored receive state
        and unread lines are taken up.

        Raises:
            ValueError: ``conn_id`` is not 1 to 64 characters from
                ``A-Z a-z 0-9 _ -`` (PROTOCOL.md 4.1); the message names it.
            StateFileError: the stored state of this conn_id is damaged (the
                message names the file or database and the conn_id).
            LinkClosedError: the LinkServer is closed; :class:`StateLostError`
                when it closed itself (its state database session was lost).
        """
        conn_id = names.check_conn_id(conn_id)
        self._check_open()
        conn = self._conns.get(conn_id)
        if conn is not None:
            return conn
        self._asked[conn_id] = self._asked.get(conn_id, 0) + 1
        try:
            return await self._set_up(conn_id)
        finally:
            self._asked[conn_id] -= 1
            if not self._asked[conn_id]:
                del self._asked[conn_id]

    async def _set_up(self, conn_id: str) -> Connection:
        """connection(): claim ``conn_id`` and set its Connection up."""
        if isinstance(self._store, PgStore):  # wait for the lease (another process may hold it)
            try:
                stored = await self._store.claim(conn_id)
            except StateDbError:
                if self._error is not None:  # the session was lost: this server closes
                    raise self._closed_error("") from None
                raise
            self._check_open()
            if conn_id in self._conns:  # a concurrent call for it won
                return self._conns[conn_id]
        else:
            stored = self._state.conns.get(conn_id, ConnState())
        receiver = endpoint.Receiver(RX_WINDOW)
        sender: endpoint.Sender | None = None
        try:
            if stored.rx is not None:
                receiver.restore(stored.rx)
            if stored.tx is not None:
                sender = endpoint.Sender.restore(stored.tx)
        except ValueError as exc:
            raise StateFileError(f"{self._store_name()}, conn_id {conn_id!r}: {exc}") from exc
        if sender is not None:
            log.info(
                "%s: continuing sender session %s (%d unacknowledged)",
                conn_id, sender.session, sender.in_flight,
            )
        else:
            sender = endpoint.Sender(
                frames.new_session(os.urandom(4)), self.window, self.timeout_ms
            )
            log.info("%s: new sender session %s", conn_id, sender.session)
        live = self._unclaimed.pop(conn_id, None)
        if live is not None:
            live.silent(now_ms())
        conn = Connection(
            self._host, conn_id, self.root, sender, receiver, stored.unread,
            timeout_ms=self.timeout_ms, queue_size=self.queue_size, watch=live,
        )
        self._conns[conn_id] = conn
        self._routes[conn.up_topic.encode()] = conn
        self._schedule(conn, 0)
        # Its sender state is about to change: drop it from the file before any send.
        self._state.conns[conn_id] = ConnState(rx=stored.rx, unread=list(stored.unread))
        if self._store is not None:
            self._dirty.add(conn_id)
        if self._store is not None and not isinstance(self._store, PgStore):
            # PgStore.claim() dropped the sender state from its row already
            async with self._commit_lock:
                await self._commit(clean=False)
        if conn.online and self._broker_up:
            conn._resend_all()
        return conn

    # -- MQTT connection -------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        if self.protocol == MQTTv5:
            client = _Client(
                CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=MQTTv5
            )
        else:
            client = _Client(
                CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                clean_session=False,
                protocol=MQTTv311,
            )
        self._secure(client)
        client.reconnect_delay_set(1, 30)
        client.max_inflight_messages_set(100)
        client.connect_timeout = self.connect_timeout
        client.on_socket_open = _set_nodelay
        client.on_connect = self._paho_on_connect
        client.on_disconnect = self._paho_on_disconnect
        client.on_message = self._paho_on_message
        if isinstance(client, _Client):
            client.on_publishes = self._paho_on_publishes
        return client

    def _secure(self, client: mqtt.Client) -> None:
        """Credentials and TLS, as given to the constructor."""
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        if self._tls is True:
            client.tls_set_context(ssl.create_default_context())
        elif isinstance(self._tls, ssl.SSLContext):
            client.tls_set_context(self._tls)

    async def _claim_identity(self) -> None:
        """Lock the state file, then make sure no other process is connected as our client id."""
        if isinstance(self._store, PgStore):
            await self._store.open()
        elif self._store is not None:
            await asyncio.to_thread(self._store.lock, IDENTITY_HINT + FILE_HINT)
        if self.identity_probe_s > 0 and await asyncio.to_thread(self._identity_taken):
            raise ServerIdentityError(
                f"another server process is connected to MQTT broker {self.broker} as client id "
                f"{self.client_id!r}{self._identity_hint()}"
            )

    def _identity_hint(self) -> str:
        """IDENTITY_HINT, plus where the state lives when it is a file (not with PostgreSQL)."""
        return IDENTITY_HINT + ("" if isinstance(self._store, PgStore) else FILE_HINT)

    def _identity_taken(self) -> bool:
        """Blocking: does a running LinkServer answer a probe for our client id?

        Any failure of the probe connection counts as "no": the real
        connection then reports what is wrong (refusal, unreachable).
        """
        answered = threading.Event()
        ready = threading.Event()
        probe = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"pblink.probe-{secrets.token_hex(4)}",
            clean_session=True,
            protocol=MQTTv311,
        )
        self._secure(probe)
        probe.on_connect = lambda c, *a: c.subscribe(self._holder_topic, 0)
        probe.on_subscribe = lambda *a: ready.set()
        def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            # Checked: amqtt also hands a new subscriber retained messages of other topics.
            if msg.topic == self._holder_topic and not msg.retain:
                answered.set()

        probe.on_message = on_message
        try:
            probe.connect(self.host, self.port, 30)
        except (OSError, ValueError):
            return False
        probe.loop_start()
        try:
            if not ready.wait(self.connect_timeout):
                return False
            probe.publish(self._probe_topic, self._token, qos=0)
            return answered.wait(self.identity_probe_s)
        finally:
            with contextlib.suppress(Exception):
                probe.disconnect()
            probe.loop_stop()

    async def _connect(self) -> None:
        assert self._loop is not None
        client = self._client = self._make_client()
        self._connack = self._loop.create_future()
        kwargs: dict[str, Any] = {}
        if self.protocol == MQTTv5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = _SESSION_EXPIRY_S
            kwargs = {"clean_start": False, "properties": props}
        try:
            await asyncio.to_thread(client.connect, self.host, self.port, self.keepalive, **kwargs)
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                reason = f"timed out after {self.connect_timeout:g} s"
            raise BrokerUnreachableError(
                f"cannot reach MQTT broker {self.broker}: {reason}"
            ) from exc
        client.loop_start()
        try:
            async with asyncio.timeout(self.connect_timeout):
                ok, reason_code = await self._connack
        except TimeoutError:
            hint = " (MQTT 5 was asked for: does it speak 3.1.1 only?)" if (
                self.protocol == MQTTv5
            ) else ""
            raise BrokerUnreachableError(
                f"MQTT broker {self.broker} sent no CONNACK within {self.connect_timeout:g} s{hint}"
            ) from None
        if not ok:
            err = LinkAuthError if reason_code.value in _AUTH_CODES else LinkRefusedError
            raise err(self.broker, str(reason_code).lower())
        log.info("connected to MQTT broker %s as %s", self.broker, self.client_id)

    async def _stop_client(self, wait: bool = True) -> None:
        """Disconnect and stop paho's thread.

        ``wait=False`` (after a refused or failed start) does not wait for the
        thread: it may be in paho's reconnect sleep, which ends within 1 s.
        """
        client, self._client = self._client, None
        if client is None:
            return
        client.on_connect = None
        client.on_disconnect = None
        client.on_message = None
        if isinstance(client, _Client):
            client.on_publishes = None
        with contextlib.suppress(Exception):
            client.disconnect()
        if wait:
            await asyncio.to_thread(client.loop_stop)
        else:
            threading.Thread(target=client.loop_stop, name="paho-stop", daemon=True).start()

    # paho thread -> inbox -> asyncio thread

    def _paho_on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not reason_code.is_failure:
            client.subscribe([
                (topics.wildcard(self.root, "up"), 1),
                (topics.wildcard(self.root, "status"), 1),
                (self._probe_topic, 0),  # QoS 0: a probe is never queued for us
            ])
        self._to_loop(("connect", reason_code))

    def _paho_on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._to_loop(("disconnect", reason_code))

    def _paho_on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            log.warning("dropped a message on a topic that is not UTF-8")
            return
        if topic == self._probe_topic:  # another process asks who holds our client id
            if msg.payload != self._token.encode():
                client.publish(self._holder_topic, self._token, qos=0)
            return
        while self._inbox_msgs >= INBOX_LIMIT and not self._closing:
            time.sleep(0.002)  # the loop is behind: stop reading, TCP pushes back
        self._to_loop(("message", topic, bytes(msg.payload)))

    def _paho_on_publishes(self, batch: list[tuple[bytes, bytes]]) -> None:
        """The messages of one read of paho's thread (``_Client.on_publishes``), at once."""
        probe = self._probe_topic_b
        for topic, payload in batch:
            if topic == probe:  # another process asks who holds our client id
                if payload != self._token.encode() and self._client is not None:
                    self._client.publish(self._holder_topic, self._token, qos=0)
                batch = [m for m in batch if m[0] != probe]
                break
        while self._inbox_msgs >= INBOX_LIMIT and not self._closing:
            time.sleep(0.002)  # the loop is behind: stop reading, TCP pushes back
        if batch:
            self._to_loop(("messages", batch), len(batch))

    def _to_loop(self, event: tuple[Any, ...], count: int = 1) -> None:
        self._inbox.append(event)
        with self._inbox_lock:
            self._inbox_msgs += count
            if self._inbox_scheduled:
                return
            self._inbox_scheduled = True
        loop = self._loop
        try:
            if loop is not None:
                loop.call_soon_threadsafe(self._drain_inbox)
        except RuntimeError:  # the loop is closed: we are shutting down
            pass

    def _drain_inbox(self) -> None:
        with self._inbox_lock:
            self._inbox_scheduled = False
        inbox = self._inbox
        while inbox:
            event = inbox.popleft()
            try:
                if event[0] == "messages":
                    self._on_messages(event[1])
                elif event[0] == "message":
                    self._on_message(event[1], event[2])
                elif event[0] == "connect":
                    self._on_connect(event[1])
                else:
                    self._on_disconnect(event[1])
            except Exception:
                log.exception("error handling %s event", event[0])
            finally:
                with self._inbox_lock:
                    self._inbox_msgs -= len(event[1]) if event[0] == "messages" else 1

    def _on_connect(self, reason_code: ReasonCode) -> None:
        ok = not reason_code.is_failure
        first = self._connack is not None and not self._connack.done()
        if self._connack is not None and first:
            self._connack.set_result((ok, reason_code))
        if not ok:
            if not first:  # the first refusal is raised by start()
                log.error("MQTT broker %s refused the connection: %s", self.broker, reason_code)
            return
        if not first:
            log.info("reconnected to MQTT broker %s", self.broker)
        self._broker_up = True
        self._up_since = time.monotonic()
        for conn in self._conns.values():  # rare: once per (re)connect
            self._schedule(conn, 0)
        self._wake_all()

    def _on_disconnect(self, reason_code: ReasonCode) -> None:
        if self._connack is not None and not self._connack.done():
            hint = " (MQTT 5 was asked for: does it speak 3.1.1 only?)" if (
                self.protocol == MQTTv5
            ) else ""
            self._connack.set_exception(BrokerUnreachableError(
                f"MQTT broker {self.broker} closed the connection before CONNACK{hint}"
            ))
            return
        was_up = self._broker_up
        self._broker_up = False
        if was_up and not self._closing:
            quick = time.monotonic() - self._up_since < 5.0
            self._quick_drops = self._quick_drops + 1 if quick else 0
            hint = ""
            if reason_code.value == _SESSION_TAKEN_OVER or self._quick_drops >= 2:
                hint = (
                    f"; another client may be connected as client id {self.client_id!r} "
                    "(the broker keeps one connection per client id)" + self._identity_hint()
                )
            log.warning(
                "lost MQTT broker %s (%s); reconnecting with backoff%s",
                self.broker, reason_code, hint,
            )
        for conn in self._conns.values():
            conn._broker_lost()
        for live in self._unclaimed.values():
            live.lost()
        self._wake_all()

    def _wake_all(self) -> None:
        self._broker_signal.fire()
        for conn in self._conns.values():
            conn._wake()

    # -- incoming frames -------------------------------------------------------

    def _on_messages(self, batch: list[tuple[bytes, bytes]]) -> None:
        """The messages of one read of paho's thread: a claimed conn_id's ``up`` straight to its
        Connection (its topic's bytes looked up), anything else through ``_on_message``."""
        now = now_ms()
        routes = self._routes
        for topic, payload in batch:
            try:
                conn = routes.get(topic)
                if conn is not None:
                    if not conn._receive(payload, now):
                        self.stats["malformed"] += 1
                    continue
                try:
                    text = topic.decode()
                except UnicodeDecodeError:
                    log.warning("dropped a message on a topic that is not UTF-8")
                    continue
                self._on_message(text, payload)
            except Exception:
                log.exception("error handling a message on %r", topic[:100])

    def _on_message(self, topic: str, payload: bytes) -> None:
        parsed = topics.parse_topic(self.root, topic)
        if parsed is None:
            return
        conn_id, leaf = parsed
        now = now_ms()
        conn = self._conns.get(conn_id)
        if leaf == "status":
            self._on_status(conn_id, conn, payload, now)
        elif leaf == "up":
            if conn is None:
                self._heard_unclaimed(conn_id, now)
                self._unserved(conn_id)
                self.stats["unclaimed"] += 1
                return
            if not conn._receive(payload, now):
                self.stats["malformed"] += 1

    def _on_status(self, conn_id: str, conn: Connection | None, payload: bytes, now: int) -> None:
        if payload == b"online":
            online = True
        elif payload == b"offline":
            online = False
        else:
            log.warning("%s: ignored status payload %r", conn_id, payload[:40])
            return
        if conn is None:
            self._unclaimed_liveness(conn_id).status(online, now)
            if online:
                self._unserved(conn_id)
        else:
            conn._status(online, now)

    # -- liveness --------------------------------------------------------------

    def _unclaimed_liveness(self, conn_id: str) -> DeviceWatch:
        live = self._unclaimed.get(conn_id)
        if live is None:
            live = self._unclaimed[conn_id] = DeviceWatch(self.timeout_ms)
            if len(self._unclaimed) > UNCLAIMED_LIMIT:
                self._unclaimed.popitem(last=False)
        else:
            self._unclaimed.move_to_end(conn_id)
        return live

    def _unserved(self, conn_id: str) -> None:
        """Log, once per conn_id, a device this server hears but does not serve.

        A conn_id whose ``connection()`` waits for its lease (``state_db``) is
        served once the lease comes free: no warning; the first such device
        heard logs one INFO line for them all. Nor is one whose
        ``connection()`` runs otherwise (being set up) or is still to come
        (``serves``): it is served in a moment.
        """
        if isinstance(self._store, PgStore) and self._store.is_waiting(conn_id):
            if not self._told_waiting:
                self._told_waiting = True
                log.info("waiting for the lease of %d conn_id(s) held by another process "
                         "(device %s is online, among others maybe)",
                         self._store.waiting_count(), conn_id)
            return
        if conn_id in self._serves or conn_id in self._asked:
            return
        if conn_id in self._told_unserved or len(self._told_unserved) >= UNCLAIMED_LIMIT:
            return
        self._told_unserved.add(conn_id)
        log.warning(
            "device %s is online under %s/ but this server does not serve it (its frames get "
            "no answer and the device reports the server down): %s, unless another server "
            "process serves it", conn_id, self.root, self.serve_hint.format(conn_id=conn_id),
        )

    def _heard_unclaimed(self, conn_id: str, now: int) -> None:
        self._unclaimed_liveness(conn_id).heard(now)

    async def _ticker(self) -> None:
        """Silence timeouts and retransmissions, every ``timeout_ms / 8`` (10 to 100 ms).

        Only the Connections whose check is due are touched: each one is in a
        heap under the time it asked to be looked at again (``_schedule``), so
        a tick costs nothing for the devices with nothing due, however many
        there are. A watch of an unclaimed conn_id needs no tick: its silence
        is judged when the conn_id is claimed (``connection()``).
        """
        period = max(10, min(100, self.timeout_ms // 8)) / 1000
        due = self._due
        while True:
            await asyncio.sleep(period)
            now_mono = _mono_ms()
            now = now_ms()
            while due and due[0][0] <= now_mono:
                at, _seq, conn = heapq.heappop(due)
                if conn._check_at != at:
                    continue  # superseded by an earlier entry for this conn
                conn._check_at = None
                delay = conn._tick(now)
                if delay is not None:
                    self._schedule(conn, delay)

    def _schedule(self, conn: Connection, delay_ms: int) -> None:
        """Have the ticker look at ``conn`` in ``delay_ms`` (at least 1), unless it will sooner."""
        at = _mono_ms() + max(1, delay_ms)
        if conn._check_at is None or at < conn._check_at:
            conn._check_at = at
            self._due_seq += 1
            heapq.heappush(self._due, (at, self._due_seq, conn))

    # -- output ----------------------------------------------------------------

    def _publish(self, topic: str, payload: bytes) -> None:
        """Publish an end-to-end frame at its QoS (``liveness.mqtt_level``, PROTOCOL.md 4.1).

        The frame joins the outbox, published in order ``OUTBOX_DELAY_S``
        (2 ms) after the first frame of the burst by ``_flush_outbox`` (one
        ``send()`` or wake-up of paho's thread per burst, not per frame or per
        event-loop turn).
        """
        if self._client is None or not self._broker_up:
            return  # the sender keeps qos frames; acks and heartbeats may be lost
        self._outbox.append((topic, payload))
        if len(self._outbox) == 1 and self._loop is not None:
            self._loop.call_later(OUTBOX_DELAY_S, self._flush_outbox)

    def _flush_outbox(self) -> None:
        """Hand the outbox's frames to paho in order, with one wake-up of its network thread.

        Each run of QoS 0 frames (acks, heartbeat answers, non-qos lines) goes
        to paho's output queue as one block of ready-made PUBLISH packets
        (one ``send()``, no ``MQTTMessageInfo`` per frame); QoS 1 frames go
        through ``publish()`` (paho keeps them for its session). See
        :class:`_Client` for why (docs/PERFORMANCE.md "Server scale").
        """
        out, self._outbox = self._outbox, []
        client = self._client
        if not out or client is None or not self._broker_up:
            return
        if not isinstance(client, _Client):
            for topic, payload in out:
                self._publish_one(client, topic, payload, liveness.mqtt_level(payload))
            return
        v5 = self.protocol == MQTTv5
        fields = self._topic_fields
        if len(fields) > TOPIC_FIELDS_LIMIT:
            fields.clear()
        with client.batch():
            block = bytearray()
            for topic, payload in out:
                qos = liveness.mqtt_level(payload)
                if qos == 0:
                    field = fields.get(topic)
                    if field is None:
                        encoded = topic.encode()
                        field = fields[topic] = len(encoded).to_bytes(2, "big") + encoded
                    _append_publish0(block, field, payload, v5)
                    continue
                if block:
                    client.queue_block(block)
                    block = bytearray()
                self._publish_one(client, topic, payload, qos)
            if block:
                client.queue_block(block)

    @staticmethod
    def _publish_one(client: mqtt.Client, topic: str, payload: bytes, qos: int) -> None:
        info = client.publish(topic, payload, qos=qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.debug("publish on %s not sent: %s", topic, mqtt.error_string(info.rc))

    def _flush_acks(self, acks: list[tuple[str, bytes]]) -> None:
        for topic, ack in acks:
            self._publish(topic, ack)
        acks.clear()

    # -- durable state ---------------------------------------------------------

    async def _committer(self) -> None:
        while True:
            await self._commit_wanted.wait()
            await asyncio.sleep(self._commit_delay)
            async with self._commit_lock:
                await self._commit(clean=False)

    async def _write_state(self, clean: bool, changed: set[str]) -> None:
        """Store the state, with the entries of the ``changed`` conn_ids taken now.

        ``clean`` takes every claimed conn_id's entry, with its sender state.
        Unclaimed entries are carried over as they were loaded; a claimed
        conn_id whose entry did not change since the last batch keeps the entry
        that batch took (only the conn_ids with something new cost work here).
        """
        assert self._store is not None
        if clean:
            changed = set(self._conns)
        for conn_id in changed:
            self._state.conns[conn_id] = self._conns[conn_id]._snapshot(clean)
        if isinstance(self._store, PgStore):  # one row per leased conn_id: the changed ones
            await self._store.write({cid: self._state.conns[cid] for cid in changed})
            return
        state = ServerState(clean=clean, conns=dict(self._state.conns))
        await asyncio.to_thread(self._store.save, state, changed)

    def _store_name(self) -> str:
        """The store, for messages: ``state file PATH`` or ``state database URL`` (no password)."""
        if isinstance(self._store, PgStore):
            return f"state database {self._store.where}"
        return f"state file {self._store.where if self._store else '?'}"

    async def _commit(self, clean: bool) -> None:
        """Write one batch, then release its lines and publish its acks (caller holds the lock)."""
        self._commit_wanted.clear()
        acks, self._pending_acks = self._pending_acks, []
        changed, self._dirty = self._dirty, set()
        batch = {conn_id: self._conns[conn_id]._batch() for conn_id in changed}
        try:
            await self._write_state(clean, changed)
        except StateDbError as exc:  # the session is lost: this server closes itself
            self._store_lost(exc)
            return
        except Exception as exc:
            log.error("cannot write %s: %s (retrying)", self._store_name(), exc)
            self._pending_acks[:0] = acks
            self._dirty |= changed
            if not clean:
                await asyncio.sleep(1.0)
                self._commit_wanted.set()
            return
        self.stats["commits"] += 1
        for conn_id, count in batch.items():
            self._conns[conn_id]._release(count)
        self._flush_acks(acks)


class _Client(mqtt.Client):
    """paho's client with the per-packet costs of its network thread taken out.

    Measured at 1,000 to 5,000 devices (docs/PERFORMANCE.md "Server scale"),
    where paho 2.x spends its thread's time, and what this subclass does instead:

    - ``loop_read()`` reads as many packets as the client has QoS > 0 messages
      in flight, at least one: a server that mostly receives reads ONE packet
      per ``select()`` round. Here: up to ``READ_BATCH`` packets, and on to the
      end of what is already buffered, until the socket has no more
      (``MQTT_ERR_AGAIN``), as paho's own loop stops.
    - Every packet is read with two or three ``recv()`` calls (1 byte, the
      length bytes, the rest), each of which lets go of the GIL and waits to get
      it back from the event loop. Here: ``recv(RECV_SIZE)`` into a buffer and
      the packet bytes taken from it.
    - Every queued packet (a PUBACK for each QoS 1 message received, too)
      writes a byte into the thread's wake-up socketpair. Here: not when the
      network thread queues it itself (it writes what is queued in its next
      round anyway), nor inside ``batch()`` (one wake-up at its end).
    - Every message is matched against the (unused) per-topic callbacks.
      Here: straight to ``on_message``.
    - Every PUBLISH becomes an ``MQTTMessage`` (topic decoded, a debug log
      line formatted) handed over alone, and every PUBACK is its own
      ``send()``. Here (MQTT 3.1.1, ``on_publishes`` set): QoS 0 and 1
      PUBLISH packets are parsed from the read buffer into ``(topic,
      payload)`` bytes, handed over as one list per read, their PUBACKs
      queued after it as one block; anything else (QoS 2, a packet cut across
      reads, other packet types, MQTT 5) goes through paho's own code, after
      the messages before it.
    - Every queued packet is written with its own ``send()``. Here: the
      packets at the head of the queue are joined first (``_packet_write``).
    - Every batch of frames from the event loop wakes the network thread.
      Here: a block of QoS 0 PUBLISH packets is sent by the event loop itself
      when nothing is queued before it, on a plain TCP socket (not TLS: one
      SSL object is not written and read from two threads), under the lock
      paho's thread writes under (``queue_block``).

    It relies on paho 2.x internals (``_packet_read``, ``_packet_write``,
    ``_loop_rc_handle``, ``_sock_recv``, ``_packet_queue``, ``_out_packet``,
    ``_in_packet``, ``_sockpairW``, ``_msgtime_mutex``, ``_last_bytes_received``,
    ``_last_msg_out``, ``_handle_on_message``); pyproject.toml pins paho-mqtt
    below 3, and tests/test_server_outbox.py checks the packets against
    paho's own.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self._batching = False
        self._queued = False  # batch(): something joined paho's queue (wake its thread)
        self._send_lock = threading.RLock()  # one writer of the socket at a time
        # (topic, payload) of the PUBLISH packets of one loop_read(), MQTT 3.1.1 only; None:
        # every message through paho's own parsing and on_message
        self.on_publishes: Callable[[list[tuple[bytes, bytes]]], None] | None = None

    def reconnect(self) -> MQTTErrorCode:
        self._rbuf, self._rpos = b"", 0  # nothing of the old connection's stream is kept
        return super().reconnect()

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            data: bytes = super()._sock_recv(max(bufsize, RECV_SIZE))
            if len(data) <= bufsize:
                return data  # b"": the connection is closed
            self._rbuf, self._rpos = data, 0
        start = self._rpos
        self._rpos = start + bufsize
        return self._rbuf[start:start + bufsize]

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        fast = self.on_publishes
        if fast is None or self._protocol != MQTTv311:
            return self._loop_read(None)
        got: list[tuple[bytes, bytes]] = []
        acks = bytearray()
        try:
            return self._loop_read((got, acks))
        finally:
            self._hand_over(got, acks)

    def _hand_over(self, got: list[tuple[bytes, bytes]], acks: bytearray) -> None:
        """Give the messages taken so far to ``on_publishes``, then queue their PUBACKs."""
        if got and self.on_publishes is not None:
            self.on_publishes(got[:])
        got.clear()
        if acks and self._sock is not None:  # after the messages were handed over, as paho
            self._packet_queue(mqtt.PUBACK, bytes(acks), 0, 1)
        acks.clear()

    def _loop_read(self, fast: tuple[list[tuple[bytes, bytes]], bytearray] | None
                   ) -> MQTTErrorCode:
        count = 0
        while True:
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            if fast is not None and self._in_packet["command"] == 0:
                if self._rpos >= len(self._rbuf):
                    try:
                        data: bytes = mqtt.Client._sock_recv(self, RECV_SIZE)
                    except BlockingIOError:
                        return MQTTErrorCode.MQTT_ERR_SUCCESS
                    except OSError:
                        data = b""
                    if not data:  # closed or failed: paho's own read reports it
                        return self._loop_rc_handle(self._packet_read())
                    self._rbuf, self._rpos = data, 0
                n = self._take_publishes(fast[0], fast[1])
                if n:
                    count += n
                    with self._msgtime_mutex:
                        self._last_bytes_received = mqtt.time_func()
                    if count >= READ_BATCH and self._rpos >= len(self._rbuf):
                        return MQTTErrorCode.MQTT_ERR_SUCCESS  # select() sees what the socket has
                    continue
                if fast[0]:  # what paho's own read hands over comes after these, in order
                    self._hand_over(fast[0], fast[1])
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                if self._rpos < len(self._rbuf):
                    continue  # a long packet paused half-way: the rest is buffered here
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            count += 1
            if count >= READ_BATCH and self._rpos >= len(self._rbuf):
                return MQTTErrorCode.MQTT_ERR_SUCCESS  # select() sees what the socket has

    def _take_publishes(self, got: list[tuple[bytes, bytes]], acks: bytearray) -> int:
        """Take the complete QoS 0/1 PUBLISH packets at the head of the read buffer (3.1.1).

        Each one's ``(topic, payload)`` joins ``got`` and, at QoS 1, its PUBACK
        joins ``acks``. Stops at anything else (another packet type, QoS 2, a
        packet not wholly buffered yet, a malformed length): paho's own
        ``_packet_read`` takes it from the same buffer. Returns the packets taken.
        """
        buf = self._rbuf
        end = len(buf)
        pos = self._rpos
        taken = 0
        while pos + 2 <= end:
            head = buf[pos]
            if head & 0xF0 != 0x30 or head & 0x06 == 0x06 or head & 0x06 == 0x04:
                break  # not a PUBLISH at QoS 0 or 1
            # remaining length: 1 to 4 bytes, 7 bits each, least significant first
            length = 0
            shift = 0
            i = pos + 1
            while i < end and i < pos + 5:
                b = buf[i]
                length |= (b & 0x7F) << shift
                shift += 7
                i += 1
                if b < 0x80:
                    break
            else:
                break  # length not complete (or over 4 bytes: paho reports it)
            stop = i + length
            if stop > end or length < 2:
                break
            tlen = (buf[i] << 8) | buf[i + 1]
            at = i + 2 + tlen
            if head & 0x06:  # QoS 1: a packet id follows the topic
                if at + 2 > stop:
                    break
                acks += b"\x40\x02"
                acks += buf[at:at + 2]
                at += 2
            elif at > stop:
                break
            got.append((buf[i + 2:i + 2 + tlen], buf[at:stop]))
            pos = stop
            taken += 1
        self._rpos = pos
        return taken

    def _packet_queue(
        self,
        command: int,
        packet: bytes | bytearray,
        mid: int,
        qos: int,
        info: mqtt.MQTTMessageInfo | None = None,
    ) -> MQTTErrorCode:
        thread = self._thread
        if thread is None or not (self._batching or thread.ident == threading.get_ident()):
            return super()._packet_queue(command, packet, mid, qos, info)
        if self._batching:
            self._queued = True  # batch() wakes the network thread at its end
        self._out_packet.append({
            "command": command, "mid": mid, "qos": qos, "pos": 0,
            "to_process": len(packet), "packet": packet, "info": info,
        })
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _packet_write(self) -> MQTTErrorCode:
        """Write what is queued, consecutive packets joined into one ``send()``.

        paho writes each queued packet with its own ``send()``: one system call
        per PUBACK, per acknowledgement frame. Here the packets waiting at the
        head of the queue are joined first, up to a DISCONNECT (paho acts on its
        completion) and up to ``RECV_SIZE`` bytes; a QoS 0 PUBLISH among them
        counts as published when the joined packet is queued (nothing here waits
        for it). QoS 1 PUBLISHes stay paho's: it tracks them by their PUBACK.
        """
        with self._send_lock:
            return self._packet_write_joined()

    def _packet_write_joined(self) -> MQTTErrorCode:
        out = self._out_packet
        if len(out) > 1:
            taken: list[mqtt._OutPacket] = []
            size = 0
            while out and size < RECV_SIZE:
                head = out[0]
                if head["command"] & 0xF0 == mqtt.DISCONNECT or head["pos"]:
                    break
                taken.append(out.popleft())
                size += head["to_process"]
            if len(taken) > 1:
                joined = b"".join(p["packet"] for p in taken)
                for p in taken:
                    info = p["info"]
                    if info is not None and p["command"] & 0xF0 == mqtt.PUBLISH and p["qos"] == 0:
                        info._set_as_published()
                out.appendleft({"command": 0, "mid": 0, "qos": 0, "pos": 0,
                                "to_process": len(joined), "packet": joined, "info": None})
            elif taken:
                out.appendleft(taken[0])
        return super()._packet_write()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Publish several frames with at most one wake-up of the network thread (event loop only).

        No wake-up at all when everything went out directly (``queue_block``).
        """
        self._batching = True
        self._queued = False
        try:
            yield
        finally:
            self._batching = False
            wake = self._sockpairW
            if wake is not None and self._queued:
                with contextlib.suppress(OSError):
                    wake.send(b"0")

    def queue_block(self, block: bytearray) -> None:
        """Send ready-made QoS 0 PUBLISH packets with one ``send()`` (inside ``batch()``).

        On a plain TCP socket with nothing queued before them they are sent
        from the calling thread at once, under the lock paho's thread writes
        under (``_packet_write``), so that packets never interleave and stay in
        order: no wake-up of the network thread, no hand-off. Otherwise, or for
        what the socket does not take now, they join paho's queue. TLS sockets
        always go through the queue (one SSL object is not written and read
        from two threads).
        """
        sock = self._sock
        if sock is None:  # not connected: QoS 0 frames are lost, as with publish()
            return
        with self._send_lock:
            # connected: CONNECT went out (a reconnect's socket gets nothing before it)
            if not self._out_packet and type(sock) is socket.socket and self.is_connected():
                try:
                    sent = sock.send(block)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    return  # the connection is failing: paho's thread finds out and reconnects
                if sent:
                    with self._msgtime_mutex:
                        self._last_msg_out = mqtt.time_func()
                if sent == len(block):
                    return
                block = block[sent:]  # the rest: a PUBLISH cut in two, paho writes it next
            self._queued = True
            self._packet_queue(mqtt.PUBLISH, block, 0, 0, mqtt.MQTTMessageInfo(0))

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        on_message = self.on_message
        if on_message is None:
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception:
                log.exception("error in on_message")
                if not self.suppress_exceptions:
                    raise


class _Host:
    """The :class:`~server_apps.connection.Host` a LinkServer gives its Connections."""

    __slots__ = ("_server", "publish")

    def __init__(self, server: LinkServer) -> None:
        self._server = server
        # Host.publish: the server's own method, no hop through this object (once per ack)
        self.publish: Callable[[str, bytes], None] = server._publish

    @property
    def durable(self) -> bool:
        return self._server._store is not None

    def broker_up(self) -> bool:
        return self._server._broker_up

    def schedule(self, conn: Connection, delay_ms: int) -> None:
        self._server._schedule(conn, delay_ms)

    def closing(self) -> bool:
        return self._server._closed or self._server._closing

    def closed_error(self, message: str) -> LinkClosedError:
        return self._server._closed_error(message)

    def commit_later(self, conn_id: str, ack: tuple[str, bytes] | None, start: bool = True) -> None:
        server = self._server
        server._dirty.add(conn_id)
        if ack is not None:
            server._pending_acks.append(ack)
        if start:
            server._commit_wanted.set()


def _append_publish0(block: bytearray, field: bytes, payload: bytes, v5: bool) -> None:
    """Append an MQTT PUBLISH packet at QoS 0, not retained (MQTT 3.1.1 3.3; 5.0: no properties).

    ``field``: the topic as it goes on the wire, its 2-byte length and UTF-8 bytes."""
    n = len(field) + len(payload) + v5
    block.append(0x30)
    while True:  # remaining length, 7 bits a byte, least significant first
        if n < 0x80:
            block.append(n)
            break
        block.append((n & 0x7F) | 0x80)
        n >>= 7
    block += field
    if v5:
        block.append(0)  # property length 0
    block += payload


def _mono_ms() -> int:
    """Milliseconds of ``time.monotonic()``, not wrapped: the ticker's heap order."""
    return int(time.monotonic() * 1000)


def _set_nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """Disable Nagle: an ack or heartbeat must not wait for the TCP ack of the previous packet."""
    with contextlib.suppress(AttributeError, OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
