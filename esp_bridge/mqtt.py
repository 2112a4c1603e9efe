# Compact asyncio MQTT 3.1.1 client for the ESP8266 (MicroPython).
#
# One connection at a time; the owner (bridge.py) decides when to connect and
# reconnect. Features: CONNECT with will, credentials and clean_session;
# CONNACK refusals as MQTTError with a readable reason; PUBLISH QoS 0 and 1
# (QoS 1 with a bounded in-flight table, retried with DUP after response_ms,
# resent on reconnect); SUBSCRIBE; PINGREQ keepalive with dead-broker
# detection; optional TLS; incoming messages in a bounded queue: while it is
# full the socket is not read (TCP then pushes back on the broker).
#
# Hot paths reuse preallocated buffers: a received packet is read into one
# bytearray; only the (topic, payload) bytes handed to the consumer are new.
#
# The socket is used directly, non-blocking, waiting on asyncio's I/O queue
# (_io): asyncio.stream and asyncio.Lock are not loaded, 1,184 B of the
# ESP8266's heap (docs/FIRMWARE.md "Memory budget"), and a write the socket
# does not take at once is not copied into a stream buffer.
from micropython import const
import asyncio
from asyncio import core  # type: ignore[attr-defined]  # MicroPython's asyncio.core
import gc
import socket
import time

_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)
_SUBACK = const(0x90)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)

_EINPROGRESS = const(115)
_ENOTCONN = const(107)
_ETIMEDOUT = const(110)
_ECONNRESET = const(104)
_ENOMEM = const(12)
_OOM_RETRY_MS = const(50)  # wait before retrying an allocation that failed
_POLL_MS = const(10)  # how often a connect or subscribe in progress is checked

TOPIC_MAX = const(128)  # longest topic sent or accepted
MSG_MAX = const(1152)  # longest payload accepted (PROTOCOL.md MAX_MESSAGE)

_REASONS = (
    "",
    "unacceptable protocol version",
    "identifier rejected",
    "server unavailable",
    "bad user name or password",
    "not authorised",
)


class MQTTError(Exception):
    """A protocol-level failure. code: the CONNACK return code (1-5) or 0."""

    def __init__(self, text: str, code: int = 0) -> None:
        super().__init__(text)
        self.code = code


def refusal(code: int) -> str:
    """The text for a CONNACK return code, e.g. 'refused: not authorised'."""
    if 0 < code < len(_REASONS):
        return "refused: " + _REASONS[code]
    return "refused: code %d" % code


def put_len(buf: bytearray, i: int, n: int) -> int:
    """Write n as an MQTT remaining-length varint at buf[i]; return the next index."""
    if n < 0 or n > 268435455:
        raise ValueError("length")
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            b |= 0x80
        buf[i] = b
        i += 1
        if not n:
            return i


def _put_str(buf: bytearray, i: int, s: bytes) -> int:
    n = len(s)
    buf[i] = n >> 8
    buf[i + 1] = n & 0xFF
    buf[i + 2 : i + 2 + n] = s
    return i + 2 + n


def _nothing(on: bool) -> None:
    pass


def _io(s, write):
    # awaited: wait until s is writable (write) or readable, as asyncio.stream does
    q = core._io_queue
    yield q.queue_write(s) if write else q.queue_read(s)


def _no_delay(s) -> None:
    # Small publishes (acks, heartbeats, QoS 0 lines) must not wait ~40 ms for
    # the broker's delayed ACK (Nagle's algorithm). Where the port's socket
    # does not offer TCP_NODELAY (the ESP8266's lwIP binding refuses it; so do
    # TLS sockets) the option is simply not set.
    try:
        s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY
    except (AttributeError, OSError, TypeError):
        pass


def _tls_context():
    # micropython-lib's ssl.SSLContext sets CERT_NONE; the ESP8266 (axTLS)
    # cannot verify certificates anyway: TLS here encrypts, it does not
    # authenticate the broker (docs/FIRMWARE.md)
    try:
        import ssl

        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    except (ImportError, AttributeError):
        import tls

        return tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)


async def _settled(coro):
    # coro's result or the Exception it raised: a task that ends with an exception
    # before it is awaited would go to asyncio's exception handler (_within)
    try:
        return await coro
    except Exception as e:
        return e


def _b(s) -> bytes:
    return s.encode() if isinstance(s, str) else bytes(s)


def check_session(client_id, user, password, clean_session) -> None:
    """ValueError for CONNECT settings MQTT 3.1.1 forbids (refused here, never sent).

    A password needs a user name (MQTT-3.1.2-22); an empty client id needs a
    clean session (MQTT-3.1.3-7, a broker answers 'identifier rejected').
    """
    if password and not user:
        raise ValueError("MQTT password without a user name (MQTT-3.1.2-22)")
    if not client_id and not clean_session:
        raise ValueError("empty MQTT client id with a persistent session (MQTT-3.1.3-7)")


class MQTTClient:
    """MQTT 3.1.1 client. The owner calls connect() again after a failure.

    will: None or (topic, payload, qos, retain).
    response_ms: how long to wait for CONNACK, SUBACK, PUBACK, PINGRESP or a
    stuck write before the connection is deemed dead.
    max_inflight: unacknowledged QoS 1 publishes; publish() waits when full.
    rx_slots: size of the incoming message queue (back-pressure when full).
    retries: DUP resends of a QoS 1 publish on one connection before the
    connection is dropped (it is resent again after the reconnect).
    """

    def __init__(
        self,
        client_id,
        user="",
        password="",
        keepalive_s: int = 60,
        clean_session: bool = False,
        will=None,
        response_ms: int = 10000,
        max_inflight: int = 4,
        rx_slots: int = 4,
        retries: int = 2,
        max_msg: int = MSG_MAX,
    ) -> None:
        check_session(client_id, user, password, clean_session)
        self._cid = _b(client_id)
        self._user = _b(user) if user else b""
        self._pw = _b(password) if password else b""
        self.keepalive_s = keepalive_s
        self.clean_session = clean_session
        self._will = will
        self.response_ms = response_ms
        self._retries = retries
        self._max_msg = max_msg
        # receive buffer for one packet body (topic + pid + payload)
        self._rbuf = bytearray(4 + TOPIC_MAX + max_msg)
        self._rmv = memoryview(self._rbuf)
        self._tbuf = bytearray(9 + TOPIC_MAX)  # outgoing fixed header + topic + pid
        self._tmv = memoryview(self._tbuf)
        self._abuf = bytearray(b"\x40\x02\x00\x00")  # PUBACK
        self._s: socket.socket | None = None  # the socket (non-blocking), or an SSL socket over it
        self._connected = False
        self._tasks: list = []
        self._wl = False  # a packet is being written (packets never interleave)
        # Any state change: PUBACK, SUBACK, connection down, write lock
        # released, message queued or taken. One Event for every waiter (each
        # re-checks its own condition): an Event is 64 B of the ESP8266's heap.
        self._ev = asyncio.Event()
        self._pid = 0
        # in-flight QoS 1 table (parallel lists, fixed size)
        n = max_inflight
        self._f_pid = [0] * n
        self._f_topic = [b""] * n
        self._f_msg = [b""] * n
        self._f_ret = [False] * n
        self._f_ms = [time.ticks_ms()] * n
        self._f_try = [0] * n
        self._f_n = 0
        # incoming queue (ring of (topic, payload, retain))
        self._q: list = [None] * rx_slots
        self._qh = 0
        self._qn = 0
        self._paused = False
        self._sub_pid = -1
        self._sub_rc = -1
        self._pinging = False  # a PINGREQ is unanswered
        self._ping_ms = time.ticks_ms()  # when it went out
        self._last_rx = self._ping_ms
        self._last_tx = self._ping_ms
        self._wbusy = False
        self._wt0 = self._ping_ms
        self._ip: str | None = None  # resolved broker address (DNS once, getaddrinfo blocks)
        self._host: str | None = None
        self._fails = 0  # connect attempts failed in a row
        self.on_block = _nothing  # called with True/False around a blocking DNS lookup
        self.why = ""  # why the last connection ended
        self.oversize = 0  # incoming messages dropped for size
        self.mem_errors = 0  # MemoryErrors caught (nothing lost: see _write, _on_publish)

    def configure(
        self, client_id, user="", password="", keepalive_s=60, will=None, response_ms=10000,
        retries=2, clean_session=False,
    ) -> None:
        """New session parameters (while disconnected). Forgets queued and in-flight messages.

        ValueError (nothing changed) for settings MQTT 3.1.1 forbids (check_session)."""
        check_session(client_id, user, password, clean_session)
        self.close("reconfigure")
        self._cid = _b(client_id)
        self._user = _b(user) if user else b""
        self._pw = _b(password) if password else b""
        self.keepalive_s = keepalive_s
        self._will = will
        self.response_ms = response_ms
        self._retries = retries
        self.clean_session = clean_session
        for i in range(len(self._f_pid)):
            self._f_pid[i] = 0
            self._f_topic[i] = b""
            self._f_msg[i] = b""
        self._f_n = 0
        while self._qn:
            self.get()

    # ----- state -----

    def isconnected(self) -> bool:
        return self._connected

    def get(self):
        """Take the oldest incoming (topic, payload, retain), or None."""
        if not self._qn:
            return None
        q = self._q
        m = q[self._qh]
        q[self._qh] = None
        self._qh = (self._qh + 1) % len(q)
        self._qn -= 1
        self._ev.set()
        return m

    async def next(self):
        """Wait for and take the next incoming (topic, payload, retain)."""
        while not self._qn:
            self._ev.clear()
            await self._ev.wait()
        return self.get()

    # ----- connection -----

    def _resolve(self, host, port):
        # DNS once: getaddrinfo blocks the event loop (on the ESP8266 it still
        # runs scheduled IRQ handlers: on_block lets the I2C link go on)
        if self._ip is None or self._host != host or self._fails >= 4:
            self._host = host
            self._fails = 0
            self.on_block(True)
            try:
                a = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
            finally:
                self.on_block(False)
            # the ESP8266 (lwIP) gives ('a.b.c.d', port): keep the literal;
            # other ports give an opaque sockaddr: keep the name
            self._ip = a[0] if isinstance(a, tuple) else host
        return self._ip

    async def connect(self, host, port: int = 1883, tls: bool = False) -> bool:
        """Open the connection; return the CONNACK session-present flag.

        Raises MQTTError (refused, malformed) or OSError (network)."""
        self.close("reconnect")
        self.why = ""
        try:
            ip = self._resolve(host, port)
            ctx = None
            if tls:
                ctx = _tls_context()
            await self._within(self._open(ip, port, ctx, host))
            _no_delay(self._s)
        except OSError:  # ETIMEDOUT included
            self._fails += 1  # after 4 in a row: resolve again (DHCP may have moved it)
            raise
        try:
            await self._within(self._handshake())
        except Exception:
            self._close_sock()
            self._fails += 1
            raise
        self._fails = 0
        if self.clean_session:
            # MQTT-3.1.2-6: a clean session discards the old one, in-flight
            # publishes included; the end-to-end layer resends what matters.
            for i in range(len(self._f_pid)):
                self._f_pid[i] = 0
                self._f_topic[i] = b""
                self._f_msg[i] = b""
            self._f_n = 0
        now = time.ticks_ms()
        self._last_rx = now
        self._last_tx = now
        self._pinging = False
        self._paused = False
        self._connected = True
        present = bool(self._rbuf[2] & 1)
        self._tasks = [asyncio.create_task(self._reader()), asyncio.create_task(self._keeper())]
        # MQTT-4.4.0-1: resend unacknowledged publishes with their packet ids
        for i in range(len(self._f_pid)):
            if self._f_pid[i]:
                self._f_try[i] = 0
                await self._send_pub(i, True)
        return present

    async def _open(self, ip, port, ctx, host) -> None:
        # asyncio.open_connection without asyncio.stream
        ai = socket.getaddrinfo(ip, port, 0, socket.SOCK_STREAM)[0]
        s = socket.socket(ai[0], ai[1], ai[2])
        self._s = s  # closed by _close_sock if what follows fails
        s.setblocking(False)
        try:
            s.connect(ai[-1])
        except OSError as e:
            if e.errno != _EINPROGRESS:
                raise
        if ctx is not None:
            s = ctx.wrap_socket(s, server_hostname=host, do_handshake_on_connect=False)
            s.setblocking(False)
            self._s = s
        await _io(s, True)

    async def _within(self, coro):
        """The result of coro, run as a task; OSError(ETIMEDOUT) once response_ms
        have passed (it is then cancelled). asyncio.wait_for_ms does the same but
        loads asyncio.funcs, 384 B of the ESP8266's heap (docs/FIRMWARE.md)."""
        t = asyncio.create_task(_settled(coro))
        t0 = time.ticks_ms()
        while not t.done():
            if time.ticks_diff(time.ticks_ms(), t0) > self.response_ms:
                t.cancel()
                raise OSError(_ETIMEDOUT)
            await asyncio.sleep_ms(_POLL_MS)
        r = await t
        if isinstance(r, Exception):
            raise r
        return r

    async def _handshake(self) -> None:
        will = self._will
        n = 10 + 2 + len(self._cid)
        flags = 0x02 if self.clean_session else 0
        if will:
            wt = _b(will[0])
            wm = _b(will[1])
            n += 4 + len(wt) + len(wm)
            flags |= 0x04 | (will[2] << 3) | (0x20 if will[3] else 0)
        if self._user:
            n += 2 + len(self._user)
            flags |= 0x80
        if self._pw:
            n += 2 + len(self._pw)
            flags |= 0x40
        pkt = bytearray(5 + n)
        pkt[0] = _CONNECT
        i = put_len(pkt, 1, n)
        i = _put_str(pkt, i, b"MQTT")
        pkt[i] = 4  # protocol level 3.1.1
        pkt[i + 1] = flags
        pkt[i + 2] = self.keepalive_s >> 8
        pkt[i + 3] = self.keepalive_s & 0xFF
        i = _put_str(pkt, i + 4, self._cid)
        if will:
            i = _put_str(pkt, i, wt)
            i = _put_str(pkt, i, wm)
        if self._user:
            i = _put_str(pkt, i, self._user)
        if self._pw:
            i = _put_str(pkt, i, self._pw)
        await self._send(memoryview(pkt)[:i], None, True)
        del pkt
        mv = self._rmv
        await self._readn(mv[:4])
        b = self._rbuf
        if b[0] != _CONNACK or b[1] != 2:
            raise MQTTError("bad CONNACK")
        if b[3]:
            raise MQTTError(refusal(b[3]), b[3])

    def _close_sock(self) -> None:
        s = self._s
        self._s = None
        if s is not None:
            try:
                s.close()
            except Exception:
                pass

    def close(self, why: str = "closed") -> None:
        """Drop the connection at once (the broker publishes the will)."""
        was = self._connected
        self._connected = False
        cur = asyncio.current_task()
        for t in self._tasks:
            if t is not cur:
                t.cancel()
        self._tasks = []
        self._close_sock()
        if was:
            self.why = why
        self._ev.set()

    async def disconnect(self) -> None:
        """Say DISCONNECT (no will) and close."""
        if self._connected:
            try:
                await self._lock()
                try:
                    self._tbuf[0] = _DISCONNECT
                    self._tbuf[1] = 0
                    await self._write(self._tmv[:2])
                finally:
                    self._unlock()
            except OSError:
                pass
        self.close("disconnect")

    def _fail(self, why: str) -> None:
        if self._connected:
            self.close(why)

    # ----- sending -----

    async def _lock(self) -> None:
        # asyncio.Lock without asyncio.lock: the caller calls _unlock in a finally
        while self._wl:
            self._ev.clear()
            await self._ev.wait()
        self._wl = True

    def _unlock(self) -> None:
        self._wl = False
        self._ev.set()

    async def _send(self, a, b=None, connecting: bool = False) -> None:
        await self._lock()
        try:
            await self._write(a, b, connecting)
        finally:
            self._unlock()

    async def _put(self, s, buf) -> None:
        # all of buf into the socket s, waiting while it is full
        off = s.write(buf) or 0
        n = len(buf)
        if off < n:
            mv = memoryview(buf)
            while off < n:
                await _io(s, True)  # a socket closed meanwhile: write raises OSError
                off += s.write(mv[off:]) or 0

    async def _write(self, a, b=None, connecting: bool = False) -> None:
        # Caller holds the write lock (_lock): packets never interleave, and
        # _tbuf (filled under the lock) is not overwritten before it is written.
        s = self._s
        if s is None or not (self._connected or connecting):
            raise OSError(_ENOTCONN)
        try:
            self._wt0 = time.ticks_ms()
            self._wbusy = True
            await self._put(s, a)
            if b:
                await self._put(s, b)
            await asyncio.sleep_ms(0)  # always yield, as a stream's drain does
        except OSError as e:
            self._wbusy = False
            self._fail("write: %s" % e)
            raise
        except MemoryError:
            # a slice could not be made: the packet may be incomplete, so
            # the connection must go; callers see the usual OSError (a QoS 1
            # message is resent after the reconnect, a QoS 0 one was not sent)
            self._wbusy = False
            self.mem_errors += 1
            self._fail("write: out of memory")
            raise OSError(_ENOMEM)
        self._wbusy = False
        self._last_tx = time.ticks_ms()

    def _next_pid(self) -> int:
        while True:
            self._pid = self._pid % 65535 + 1
            if self._pid not in self._f_pid and self._pid != self._sub_pid:
                return self._pid

    async def _send_pub(self, slot: int, dup: bool) -> None:
        await self._pub(
            self._f_topic[slot], self._f_msg[slot], 1, self._f_ret[slot], self._f_pid[slot], dup
        )
        self._f_ms[slot] = time.ticks_ms()

    async def _pub(self, topic, msg, qos, retain, pid, dup) -> None:
        await self._lock()
        try:
            b = self._tbuf
            b[0] = _PUBLISH | (8 if dup else 0) | (qos << 1) | (1 if retain else 0)
            n = 2 + len(topic) + len(msg) + (2 if qos else 0)
            i = put_len(b, 1, n)
            i = _put_str(b, i, topic)
            if qos:
                b[i] = pid >> 8
                b[i + 1] = pid & 0xFF
                i += 2
            await self._write(self._tmv[:i], msg)
        finally:
            self._unlock()

    async def publish(self, topic, msg, qos: int = 0, retain: bool = False) -> int:
        """Publish; QoS 1 returns the packet id once it is in the in-flight table.

        A QoS 1 message, once accepted, is retried and resent after a
        reconnect until its PUBACK arrives. Raises OSError when not connected
        (the message was not accepted), ValueError when too long, for a
        wildcard in the topic (MQTT-3.3.2-2) or a QoS other than 0 and 1."""
        topic = _b(topic) if isinstance(topic, str) else topic
        if len(topic) > TOPIC_MAX or not topic:
            raise ValueError("topic length")
        if b"+" in topic or b"#" in topic:
            raise ValueError("wildcard in a PUBLISH topic (MQTT-3.3.2-2)")
        if qos != 0 and qos != 1:
            raise ValueError("QoS %d: only 0 and 1 are supported" % qos)
        if len(msg) > 268435455 - 4 - len(topic):
            raise ValueError("payload length")
        if not qos:
            if not self._connected:
                raise OSError(_ENOTCONN)
            await self._pub(topic, msg, 0, retain, 0, False)
            return 0
        while self._f_n >= len(self._f_pid):
            if not self._connected:
                raise OSError(_ENOTCONN)
            self._ev.clear()  # set by a PUBACK or the end of the connection (among others)
            await self._ev.wait()
        if not self._connected:
            raise OSError(_ENOTCONN)
        slot = self._f_pid.index(0)
        pid = self._next_pid()
        self._f_pid[slot] = pid
        self._f_topic[slot] = topic
        self._f_msg[slot] = msg
        self._f_ret[slot] = retain
        self._f_try[slot] = 0
        self._f_ms[slot] = time.ticks_ms()
        self._f_n += 1
        try:
            await self._send_pub(slot, False)
        except OSError:
            pass  # accepted: it goes out again after the reconnect
        except MemoryError:  # nothing was written: accepted, the retry timer resends it
            self.mem_errors += 1
        return pid

    async def subscribe(self, topic, qos: int = 1) -> int:
        """Subscribe to one filter; return the granted QoS. MQTTError if refused.

        ValueError for a QoS other than 0 and 1: this client cannot take QoS 2
        deliveries (it would answer PUBLISH QoS 2 with nothing)."""
        topic = _b(topic)
        if len(topic) > TOPIC_MAX or not topic:
            raise ValueError("topic length")
        if qos != 0 and qos != 1:
            raise ValueError("subscription QoS %d: only 0 and 1 are supported" % qos)
        pid = self._next_pid()
        self._sub_pid = pid
        self._sub_rc = -1
        await self._lock()
        try:
            b = self._tbuf
            b[0] = _SUBSCRIBE
            i = put_len(b, 1, 5 + len(topic))
            b[i] = pid >> 8
            b[i + 1] = pid & 0xFF
            i = _put_str(b, i + 2, topic)
            b[i] = qos
            await self._write(self._tmv[: i + 1])
        finally:
            self._unlock()
        t0 = time.ticks_ms()
        while self._sub_rc < 0:
            if not self._connected:
                raise OSError(_ENOTCONN)
            if self._overdue(t0, time.ticks_ms()):
                self._fail("no SUBACK")
                raise OSError(_ETIMEDOUT)
            await asyncio.sleep_ms(_POLL_MS)
        self._sub_pid = -1
        if self._sub_rc == 0x80:
            raise MQTTError("subscription refused")
        return self._sub_rc

    # ----- receiving -----

    async def _readn(self, mv) -> None:
        """Fill mv exactly from the socket."""
        n = len(mv)
        got = 0
        s = self._s
        if s is None:
            raise OSError(_ENOTCONN)
        while got < n:
            await _io(s, False)
            r = s.readinto(mv[got:])
            if r is None:  # TLS: record not complete yet
                continue
            if not r:
                raise OSError(_ECONNRESET)
            got += r
            self._last_rx = time.ticks_ms()

    async def _reader(self) -> None:
        try:
            await self._read_loop()
        except OSError as e:
            self._fail("read: %s" % e)
        except (MQTTError, ValueError, IndexError) as e:
            self._fail("malformed: %s" % e)
        except MemoryError:
            # an allocation failed outside the retried copy: drop the connection;
            # a QoS 1 message not yet acknowledged is redelivered after the reconnect
            self.mem_errors += 1
            self._fail("out of memory")

    async def _read_loop(self) -> None:
        b = self._rbuf
        mv = self._rmv
        q = self._q
        while True:
            if self._qn >= len(q):  # consumer full: stop reading the socket
                self._paused = True
                while self._qn >= len(q):
                    self._ev.clear()
                    await self._ev.wait()
                self._paused = False
                self._resume_timers()
            await self._readn(mv[:2])
            t = b[0]
            n = b[1] & 0x7F
            if b[1] & 0x80:
                sh = 7
                while True:
                    await self._readn(mv[1:2])
                    n |= (b[1] & 0x7F) << sh
                    if not b[1] & 0x80:
                        break
                    sh += 7
                    if sh > 21:
                        raise MQTTError("remaining length")
            if t & 0xF0 == _PUBLISH:
                await self._on_publish(t, n)
                continue
            if n > 4:
                raise MQTTError("packet %02x length %d" % (t, n))
            if n:
                await self._readn(mv[:n])
            if t == _PUBACK and n == 2:
                pid = (b[0] << 8) | b[1]
                if pid in self._f_pid:
                    i = self._f_pid.index(pid)
                    self._f_pid[i] = 0
                    self._f_topic[i] = b""
                    self._f_msg[i] = b""
                    self._f_n -= 1
                    self._ev.set()
            elif t == _SUBACK and n == 3:
                if (b[0] << 8) | b[1] == self._sub_pid:
                    self._sub_rc = b[2]
                    self._ev.set()
            elif t == _PINGRESP and n == 0:
                self._pinging = False
            else:
                raise MQTTError("unexpected packet %02x" % t)

    async def _on_publish(self, t: int, n: int) -> None:
        b = self._rbuf
        mv = self._rmv
        qos = (t >> 1) & 3
        if qos > 1 or n < 2 + (2 if qos else 0):
            raise MQTTError("bad PUBLISH")
        await self._readn(mv[:2])
        tl = (b[0] << 8) | b[1]
        hl = tl + (2 if qos else 0)
        if tl > TOPIC_MAX or 2 + hl > n:
            raise MQTTError("bad topic length")
        await self._readn(mv[:hl])
        pid = (b[tl] << 8) | b[tl + 1] if qos else 0
        pl = n - 2 - hl
        if pl > self._max_msg:
            # too long for the link: drain it in pieces, acknowledge it (else a
            # persistent session would redeliver it for ever) and count it
            left = pl
            while left:
                k = min(left, len(b) - hl)
                await self._readn(mv[hl : hl + k])
                left -= k
            self.oversize += 1
        else:
            await self._readn(mv[hl : hl + pl])
            q = self._q
            while True:
                try:
                    item = (bytes(mv[:tl]), bytes(mv[hl : hl + pl]), t & 1)
                    break
                except MemoryError:
                    # the packet stays in _rbuf, unacknowledged and the socket
                    # unread, until the copy fits (the keeper judges nothing meanwhile)
                    self.mem_errors += 1
                    self._paused = True
                    gc.collect()
                    await asyncio.sleep_ms(_OOM_RETRY_MS)
            if self._paused:
                self._paused = False
                self._resume_timers()
            q[(self._qh + self._qn) % len(q)] = item
            self._qn += 1
            self._ev.set()
        if qos:
            a = self._abuf  # own buffer: _tbuf may be in use by a publisher
            a[2] = pid >> 8
            a[3] = pid & 0xFF
            await self._send(a)

    # ----- timers: keepalive, dead broker, QoS 1 retries -----

    def _tick_ms(self) -> int:
        return min(self.response_ms // 4, 500)

    def _overdue(self, since, now) -> bool:
        """A response asked for at `since` is late: the broker is deemed dead.

        Only when response_ms have passed since the request AND since the last
        byte read, and the reader is not paused. A broker may queue a response
        (SUBACK, PUBACK, PINGRESP) behind a backlog of PUBLISHes that this
        client reads only as fast as the I2C link drains them: while bytes
        keep coming, or while we hold the socket unread, it is alive."""
        if self._paused:
            return False
        rt = self.response_ms
        return time.ticks_diff(now, since) > rt and time.ticks_diff(now, self._last_rx) > rt

    def _resume_timers(self) -> None:
        # nothing could be read while paused: restart the response clocks
        now = time.ticks_ms()
        self._ping_ms = now
        self._last_rx = now
        for i in range(len(self._f_pid)):
            if self._f_pid[i]:
                self._f_ms[i] = now

    async def _keeper(self) -> None:
        ping = self.keepalive_s * 250  # ping after keepalive/4 of silence
        tick = self._tick_ms()
        b = bytearray(2)
        b[0] = _PINGREQ
        try:
            while self._connected:
                await asyncio.sleep_ms(tick)
                now = time.ticks_ms()
                if self._wbusy and time.ticks_diff(now, self._wt0) > self.response_ms:
                    self._fail("write stalled")
                    return
                if self._paused:
                    # not reading: judge nothing, but keep the broker's keepalive fed
                    if ping and time.ticks_diff(now, self._last_tx) >= ping:
                        self._pinging = True
                        self._ping_ms = now
                        await self._send(b)
                    continue
                if self._pinging:
                    if self._overdue(self._ping_ms, now):
                        self._fail("no PINGRESP")
                        return
                elif ping and (
                    time.ticks_diff(now, self._last_rx) >= ping
                    or time.ticks_diff(now, self._last_tx) >= ping
                ):
                    self._pinging = True
                    self._ping_ms = now
                    await self._send(b)
                for i in range(len(self._f_pid)):
                    if self._f_pid[i] and self._overdue(self._f_ms[i], now):
                        if self._f_try[i] >= self._retries:
                            self._fail("no PUBACK")
                            return
                        self._f_try[i] += 1
                        await self._send_pub(i, True)
        except OSError:
            pass  # _send already failed the connection
