# Compact non-blocking MQTT 3.1.1 client for the ESP8266 (MicroPython).
#
# One connection at a time; the owner (bridge.py) decides when to connect and
# reconnect. Features: CONNECT with will, credentials and clean_session;
# CONNACK refusals as MQTTError with a readable reason; PUBLISH QoS 0 and 1
# (QoS 1 with a bounded in-flight table, retried with DUP after response_ms,
# resent on reconnect, due resends in acceptance order); SUBSCRIBE; PINGREQ
# keepalive with dead-broker detection; optional TLS; incoming messages in a
# bounded queue: while it is full the socket is not read (TCP then pushes back
# on the broker).
#
# No asyncio, no coroutines (docs/FIRMWARE.md "Memory budget"): a state
# machine over the non-blocking socket. The owner calls wait(ms) (select.poll
# on the socket: its one sleep) and step() (reads what has come, writes what
# the socket takes, runs the timers) in its main loop. connect(), publish()
# and subscribe() only start things; step() carries them on.
#
# Hot paths reuse preallocated buffers: a received packet is read into one
# bytearray; packets go out one at a time, header from one buffer, payload
# from the caller's bytes; only the (topic, payload) bytes handed to the
# consumer are new.
from micropython import const
import gc
import select
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
_POLL_MS = const(10)  # disconnect(): how often the last writes are looked at

# connection states
_CLOSED = const(0)
_OPENING = const(1)  # TCP (and TLS) connecting, CONNECT going out
_CONNACK_WAIT = const(2)
_UP = const(3)

# reader states
_R_TYPE = const(0)  # first byte of a fixed header
_R_LEN = const(1)  # remaining-length bytes
_R_BODY = const(2)  # the packet body into _rmv
_R_DRAIN = const(3)  # the rest of an oversized PUBLISH, dropped
_R_HOLD = const(4)  # a PUBLISH in _rmv waiting for queue room or memory

# flags of the in-flight table (MQTTClient._f_fl)
_FL_DUE = const(1)
_FL_DUP = const(2)
_FL_RET = const(4)
_FL_TRY = const(8)

_POLLIN = const(1)
_POLLOUT = const(4)

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
    max_inflight: unacknowledged QoS 1 publishes; publish() returns -1 when full.
    rx_slots: size of the incoming message queue (back-pressure when full).
    retries: DUP resends of a QoS 1 publish on one connection before the
    connection is dropped (it is resent again after the reconnect).

    State: connecting() (connect() started, no CONNACK yet), isconnected();
    after a failed attempt `err` holds its MQTTError or OSError; `why` says
    why the last established connection ended; `present` is the CONNACK
    session-present flag; `suback` the granted QoS of the last subscribe()
    (-1 while unanswered, 0x80 refused).
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
        # Few attributes: the instance dict's table is sized for their count
        # (73 slots, 592 B, up to 73 attributes; 97 slots, 784 B, beyond), so
        # fields that are never needed at once share one (docs/FIRMWARE.md).
        check_session(client_id, user, password, clean_session)
        # the session: (client id, user, password, keepalive_s, clean_session, will)
        self._sess = (_b(client_id), _b(user) if user else b"", _b(password) if password else b"",
                      keepalive_s, clean_session, will)
        self.response_ms = response_ms
        self._retries = retries
        # receive buffer for one packet body (topic + pid + payload), as a
        # memoryview (indexing it gives ints, as a bytearray's)
        self._rmv = memoryview(bytearray(4 + TOPIC_MAX + max_msg))
        self._one = bytearray(1)  # fixed-header bytes are read one at a time
        self._tbuf = bytearray(9 + TOPIC_MAX)  # outgoing fixed header + topic + pid
        self._abuf = bytearray(b"\x40\x02\x00\x00")  # PUBACK
        self._p = select.poll()
        self._pmask = 0  # events the socket is registered for (0: not registered)
        self._rev = 0  # events the last wait() saw
        self._s: socket.socket | None = None  # the socket (non-blocking), or an SSL socket over it
        self._tls = False
        self._st = _CLOSED
        self._t0 = time.ticks_ms()  # when the current connect phase began
        # (while up: when the packet being written started)
        # the packet being written: _oal bytes of _oa (header or whole packet),
        # then _ob (payload, or None), which then moves to _oa; _oo the offset
        # in _oa. socket.write(buf, off, n): no slice is made
        self._oa = None
        self._oal = 0
        self._ob = None
        self._oo = 0
        self._oslot = -1  # in-flight slot of the publish being written
        self._ack = -1  # packet id of a PUBACK to send (one at a time)
        self._sub: tuple = (b"", 0)  # (topic filter, QoS) of the last subscribe()
        self._sub_due = False
        self._sub_ms = self._t0
        self._pid = 0
        # in-flight QoS 1 table (parallel lists, fixed size)
        n = max_inflight
        self._f_pid = [0] * n
        self._f_topic = [b""] * n
        self._f_msg = [b""] * n
        self._f_ms = [self._t0] * n
        # _FL_DUE: to be written (first time, a retry, after a reconnect);
        # _FL_DUP: written once, DUP from now on; _FL_RET: retain; the DUP
        # resends on this connection in steps of _FL_TRY
        self._f_fl = [0] * n
        self._f_seq = [0] * n  # acceptance order
        self._seq = 0
        self._f_n = 0
        # incoming queue (ring of (topic, payload, retain))
        self._q: list = [None] * rx_slots
        self._qh = 0
        self._qn = 0
        self._paused = False
        # the reader
        self._rs = _R_TYPE
        self._rt = 0  # packet type byte
        self._rn = 0  # remaining length
        # _rg, _rw by reader state: _R_LEN the varint shift, -; _R_BODY body
        # bytes read, wanted in _rmv; _R_DRAIN bytes to drain, -; _R_HOLD the
        # PUBLISH's topic length, topic + packet id length
        self._rg = 0
        self._rw = 0
        self._rpid = 0  # packet id of the PUBLISH being read
        self._oom_ms = self._t0
        self._sub_pid = -1
        self.suback = -1
        self.present = False
        self._ping = 0  # PINGREQ: 0 none, 1 to be written, 2 written and unanswered
        self._ping_ms = self._t0  # when it was asked for
        self._last_rx = self._t0
        self._last_tx = self._t0
        self._dns: tuple | None = None  # (host, resolved address): DNS once, getaddrinfo blocks
        self._fails = 0  # connect attempts failed in a row
        self.err: Exception | None = None  # why the last connect attempt failed
        self.why = ""  # why the last connection ended
        self.oversize = 0  # incoming messages dropped for size
        self.mem_errors = 0  # MemoryErrors caught (nothing lost: see _write_safe, _deliver)

    def configure(
        self, client_id, user="", password="", keepalive_s=60, will=None, response_ms=10000,
        retries=2, clean_session=False,
    ) -> None:
        """New session parameters (while disconnected). Forgets queued and in-flight messages.

        ValueError (nothing changed) for settings MQTT 3.1.1 forbids (check_session)."""
        check_session(client_id, user, password, clean_session)
        self.close("reconfigure")
        self._sess = (_b(client_id), _b(user) if user else b"", _b(password) if password else b"",
                      keepalive_s, clean_session, will)
        self.response_ms = response_ms
        self._retries = retries
        self._forget()
        while self._qn:
            self.get()

    def _forget(self) -> None:
        for i in range(len(self._f_pid)):
            self._f_pid[i] = 0
            self._f_topic[i] = b""
            self._f_msg[i] = b""
            self._f_fl[i] = 0
        self._f_n = 0

    # ----- state -----

    def isconnected(self) -> bool:
        return self._st == _UP

    def connecting(self) -> bool:
        return self._st == _OPENING or self._st == _CONNACK_WAIT

    def get(self):
        """Take the oldest incoming (topic, payload, retain), or None."""
        if not self._qn:
            return None
        q = self._q
        m = q[self._qh]
        q[self._qh] = None
        self._qh = (self._qh + 1) % len(q)
        self._qn -= 1
        if self._s is not None:
            self._mask()  # the reader may go on
        return m

    def wait(self, ms: int) -> None:
        """Sleep up to ms, less once the socket has something for step() (the
        owner's one sleep: select.poll, which on the ESP8266 runs scheduled IRQ
        handlers meanwhile)."""
        if self._rs == _R_HOLD and self._qn < len(self._q):
            ms = 0  # a message waits for the room just made
        ev = 0
        for _s, e in self._p.ipoll(ms):
            ev |= e
        self._rev = ev

    # ----- connection -----

    def connect(self, host, port: int = 1883, tls: bool = False) -> None:
        """Start opening the connection; step() carries it on. connecting() is
        True until it is up (isconnected()) or failed (`err` says why).

        Raises OSError when it cannot even start (DNS, socket)."""
        self.close("reconnect")
        self.why = ""
        self.err = None
        try:
            # DNS once: getaddrinfo blocks (on the ESP8266 it still runs scheduled
            # IRQ handlers: the I2C link goes on in the syn handler)
            d = self._dns
            if d is None or d[0] != host or self._fails >= 4:
                self._fails = 0
                a = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
                # the ESP8266 (lwIP) gives ('a.b.c.d', port): keep the literal;
                # other ports give an opaque sockaddr: keep the name
                d = self._dns = (host, a[0] if isinstance(a, tuple) else host)
            ai = socket.getaddrinfo(d[1], port, 0, socket.SOCK_STREAM)[0]
            s = socket.socket(ai[0], ai[1], ai[2])
            self._s = s  # closed by _close_sock if what follows fails
            s.setblocking(False)
            try:
                s.connect(ai[-1])
            except OSError as e:
                if e.errno != _EINPROGRESS:
                    raise
            if tls:
                s = _tls_context().wrap_socket(s, server_hostname=host,
                                               do_handshake_on_connect=False)
                s.setblocking(False)
                self._s = s
            self._tls = tls
            # Small publishes (acks, heartbeats, QoS 0 lines) must not wait ~40 ms for
            # the broker's delayed ACK (Nagle's algorithm). Where the port's socket
            # does not offer TCP_NODELAY (the ESP8266's lwIP binding refuses it; so do
            # TLS sockets) the option is simply not set.
            try:
                s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY
            except (AttributeError, OSError, TypeError):
                pass
            # the CONNECT packet
            cid, user, pw, keepalive_s, clean, will = self._sess
            n = 10 + 2 + len(cid)
            flags = 0x02 if clean else 0
            wt = wm = b""
            if will:
                wt = _b(will[0])
                wm = _b(will[1])
                n += 4 + len(wt) + len(wm)
                flags |= 0x04 | (will[2] << 3) | (0x20 if will[3] else 0)
            if user:
                n += 2 + len(user)
                flags |= 0x80
            if pw:
                n += 2 + len(pw)
                flags |= 0x40
            pkt = bytearray(5 + n)
            pkt[0] = _CONNECT
            i = put_len(pkt, 1, n)
            i = _put_str(pkt, i, b"MQTT")
            pkt[i] = 4  # protocol level 3.1.1
            pkt[i + 1] = flags
            pkt[i + 2] = keepalive_s >> 8
            pkt[i + 3] = keepalive_s & 0xFF
            i = _put_str(pkt, i + 4, cid)
            if will:
                i = _put_str(pkt, i, wt)
                i = _put_str(pkt, i, wm)
            if user:
                i = _put_str(pkt, i, user)
            if pw:
                i = _put_str(pkt, i, pw)
            n = i
        except OSError:
            self._close_sock()
            self._fails += 1  # after 4 in a row: resolve again (DHCP may have moved it)
            raise
        self._start(pkt, n, None)
        self._st = _OPENING
        self._t0 = time.ticks_ms()
        self._mask()

    def _close_sock(self) -> None:
        s = self._s
        self._s = None
        if s is not None:
            if self._pmask:
                try:
                    self._p.unregister(s)
                except (OSError, KeyError):
                    pass
            try:
                s.close()
            except Exception:
                pass
        self._pmask = 0
        self._rev = 0

    def close(self, why: str = "closed") -> None:
        """Drop the connection at once (the broker publishes the will)."""
        if self._st == _UP:
            self.why = why
        self._st = _CLOSED
        self._close_sock()
        self._oa = None
        self._ob = None
        self._oo = 0
        self._oslot = -1
        self._ack = -1
        self._sub_due = False
        self._sub_pid = -1
        self._ping = 0
        self._paused = False
        self._rs = _R_TYPE

    def disconnect(self) -> None:
        """Finish the packets due (within response_ms), say DISCONNECT (no will) and close."""
        if self._st == _UP:
            t0 = time.ticks_ms()
            while self._st == _UP and (self._oa is not None or self._due()):
                if time.ticks_diff(time.ticks_ms(), t0) > self.response_ms:
                    break
                self.wait(_POLL_MS)
                self.step()
            if self._st == _UP and self._oa is None:
                try:
                    self._s.write(b"\xe0\x00")  # type: ignore[union-attr]  # DISCONNECT
                except OSError:
                    pass
        self.close("disconnect")

    def _lost(self, e, why) -> None:
        # an error on the socket: an established connection ends (why), an
        # attempt fails (err)
        if self._st == _UP:
            self.close(why)
        elif self._st:
            self.close()
            self.err = e
            self._fails += 1

    # ----- sending -----

    def _start(self, a, n, b) -> None:
        self._oa = a
        self._oal = n
        self._ob = b
        self._oo = 0
        self._t0 = time.ticks_ms()

    def _due(self) -> bool:
        if self._ack >= 0 or self._ping == 1 or self._sub_due:
            return True
        for d in self._f_fl:
            if d & _FL_DUE:
                return True
        return False

    def _next_out(self) -> bool:
        # the next packet to write, by priority: PUBACK, PINGREQ, SUBSCRIBE,
        # then the due QoS 1 publishes in acceptance order
        if self._st != _UP:
            return False
        if self._ack >= 0:
            a = self._abuf
            a[2] = self._ack >> 8
            a[3] = self._ack & 0xFF
            self._ack = -1
            self._start(a, 4, None)
            return True
        if self._ping == 1:
            self._ping = 2
            self._start(b"\xc0\x00", 2, None)  # PINGREQ
            return True
        b = self._tbuf
        if self._sub_due:
            self._sub_due = False
            topic, qos = self._sub
            pid = self._sub_pid
            b[0] = _SUBSCRIBE
            i = put_len(b, 1, 5 + len(topic))
            b[i] = pid >> 8
            b[i + 1] = pid & 0xFF
            i = _put_str(b, i + 2, topic)
            b[i] = qos
            self._start(b, i + 1, None)
            self._sub_ms = time.ticks_ms()
            return True
        k = -1
        for i in range(len(self._f_pid)):
            if self._f_fl[i] & _FL_DUE and (k < 0 or self._f_seq[i] < self._f_seq[k]):
                k = i
        if k < 0:
            return False
        fl = self._f_fl[k]
        n = self._head(self._f_topic[k], self._f_msg[k], 1, fl & _FL_RET, self._f_pid[k],
                       fl & _FL_DUP)
        self._f_fl[k] = (fl & ~_FL_DUE) | _FL_DUP
        self._oslot = k
        self._start(self._tbuf, n, self._f_msg[k])
        return True

    def _head(self, topic, msg, qos, retain, pid, dup) -> int:
        b = self._tbuf
        b[0] = _PUBLISH | (8 if dup else 0) | (qos << 1) | (1 if retain else 0)
        i = put_len(b, 1, 2 + len(topic) + len(msg) + (2 if qos else 0))
        i = _put_str(b, i, topic)
        if qos:
            b[i] = pid >> 8
            b[i + 1] = pid & 0xFF
            i += 2
        return i

    def _write_safe(self) -> None:
        try:
            # Write what the socket takes of the packet being written, then of the
            # next ones. OSError and MemoryError are handled below.
            s = self._s
            while s is not None:
                if self._oa is None and not self._next_out():
                    return
                part = self._oa
                ln = self._oal
                o = self._oo
                n = s.write(part, o, ln - o)  # type: ignore[call-arg]
                if not n:
                    return  # the socket is full (or the TLS handshake goes on)
                o += n
                if o < ln:
                    self._oo = o
                    return
                self._oo = 0
                part = self._ob
                if part:  # the header is out: now the payload
                    self._oa = part
                    self._oal = len(part)
                    self._ob = None
                    continue
                now = time.ticks_ms()
                self._oa = None
                self._ob = None
                self._last_tx = now
                if self._oslot >= 0:
                    self._f_ms[self._oslot] = now
                    self._oslot = -1
                if self._st == _OPENING:  # CONNECT is out: wait for CONNACK
                    self._st = _CONNACK_WAIT
                    self._t0 = now
                    return
        except OSError as e:
            self._lost(e, "write: %s" % e)
        except MemoryError:
            # the packet may be incomplete, so the connection must go (a QoS 1 message is resent after the
            # reconnect, a QoS 0 one was not sent)
            self.mem_errors += 1
            self._lost(OSError(_ENOMEM), "write: out of memory")

    def _next_pid(self) -> int:
        while True:
            self._pid = self._pid % 65535 + 1
            if self._pid not in self._f_pid and self._pid != self._sub_pid:
                return self._pid

    def publish(self, topic, msg, qos: int = 0, retain: bool = False) -> int:
        """Publish. QoS 1: the packet id once the message is in the in-flight
        table (it goes out, is retried and resent after a reconnect until its
        PUBACK arrives), -1 while the table is full. QoS 0: 0 once it is
        going out, -1 while another packet is (try again after step()).

        Raises OSError when not connected (not accepted), ValueError when too
        long, for a wildcard in the topic (MQTT-3.3.2-2) or a QoS other than 0 and 1."""
        topic = _b(topic) if isinstance(topic, str) else topic
        if len(topic) > TOPIC_MAX or not topic:
            raise ValueError("topic length")
        if b"+" in topic or b"#" in topic:
            raise ValueError("wildcard in a PUBLISH topic (MQTT-3.3.2-2)")
        if qos != 0 and qos != 1:
            raise ValueError("QoS %d: only 0 and 1 are supported" % qos)
        if len(msg) > 268435455 - 4 - len(topic):
            raise ValueError("payload length")
        if self._st != _UP:
            raise OSError(_ENOTCONN)
        if not qos:
            self._write_safe()  # what is due goes first
            if self._oa is not None or self._st != _UP:
                if self._st != _UP:
                    raise OSError(_ENOTCONN)
                return -1
            n = self._head(topic, msg, 0, retain, 0, False)
            self._start(self._tbuf, n, msg)
            self._write_safe()
            self._mask()
            if self._st != _UP:
                raise OSError(_ENOTCONN)
            return 0
        if self._f_n >= len(self._f_pid):
            return -1
        slot = self._f_pid.index(0)
        pid = self._next_pid()
        self._f_pid[slot] = pid
        self._f_topic[slot] = topic
        self._f_msg[slot] = msg
        self._f_fl[slot] = _FL_DUE | (_FL_RET if retain else 0)
        self._f_ms[slot] = time.ticks_ms()
        self._seq += 1
        self._f_seq[slot] = self._seq
        self._f_n += 1
        self._write_safe()  # accepted: a failed write resends it after the reconnect
        self._mask()
        return pid

    def subscribe(self, topic, qos: int = 1) -> int:
        """Start subscribing to one filter; return its packet id. `suback` then
        holds the granted QoS (0x80: refused) once step() has read the SUBACK.

        ValueError for a QoS other than 0 and 1: this client cannot take QoS 2
        deliveries (it would answer PUBLISH QoS 2 with nothing). OSError when
        not connected."""
        topic = _b(topic)
        if len(topic) > TOPIC_MAX or not topic:
            raise ValueError("topic length")
        if qos != 0 and qos != 1:
            raise ValueError("subscription QoS %d: only 0 and 1 are supported" % qos)
        if self._st != _UP:
            raise OSError(_ENOTCONN)
        pid = self._next_pid()
        self._sub_pid = pid
        self.suback = -1
        self._sub = (topic, qos)
        self._sub_due = True
        self._sub_ms = time.ticks_ms()
        self._write_safe()
        self._mask()
        return pid

    # ----- the main loop's step -----

    def step(self) -> None:
        """Carry everything on: connect, read, write, keepalive, retries."""
        st = self._st
        if not st:
            return
        now = time.ticks_ms()
        if st != _UP:
            if time.ticks_diff(now, self._t0) > self.response_ms:
                self._lost(OSError(_ETIMEDOUT), "")
                return
            if st == _OPENING:
                if self._tls or self._rev:  # writable, or an error to be had by writing
                    self._write_safe()
            else:
                self._read_safe()
            self._mask()
            return
        self._read_safe()
        if self._st == _UP:
            self._timers(now)
        if self._st == _UP:
            self._write_safe()
        self._mask()

    def _mask(self) -> None:
        # poll for writability only while something is to be written, for
        # readability only while the reader takes packets: else poll would
        # return at once, and the owner's loop would spin
        s = self._s
        if s is None:
            return
        st = self._st
        m = 0
        if st == _OPENING or self._oa is not None or (st == _UP and self._due()):
            m = _POLLOUT
        # reading: not while a PUBLISH is held or a PUBACK waits to go out
        # (one at a time), nor at a packet's start while the queue is full
        rs = self._rs
        if (st >= _CONNACK_WAIT and rs != _R_HOLD and self._ack < 0
                and not (rs == _R_TYPE and self._qn >= len(self._q))):
            m |= _POLLIN
        if m == self._pmask:
            return
        p = self._p
        if not m:
            p.unregister(s)
        elif self._pmask:
            p.modify(s, m)
        else:
            p.register(s, m)
        self._pmask = m

    # ----- receiving -----

    def _read_safe(self) -> None:
        try:
            self._read()
        except OSError as e:
            self._lost(e, "read: %s" % e)
        except (MQTTError, ValueError, IndexError) as e:
            self._lost(e, "malformed: %s" % e)
        except MemoryError:
            # an allocation failed outside the retried copy: drop the connection;
            # a QoS 1 message not yet acknowledged is redelivered after the reconnect
            self.mem_errors += 1
            self._lost(OSError(_ENOMEM), "out of memory")

    def _some(self, mv) -> int:
        # bytes read into mv, 0 when none has come; EOF is an error
        r = self._s.readinto(mv)  # type: ignore[union-attr]
        if r is None:
            return 0
        if not r:
            raise OSError(_ECONNRESET)
        self._last_rx = time.ticks_ms()
        return r

    def _read(self) -> None:
        b = mv = self._rmv
        one = self._one
        while self._st >= _CONNACK_WAIT:
            rs = self._rs
            if rs == _R_HOLD:
                if not self._deliver():
                    return
                continue
            if self._ack >= 0:
                self._write_safe()  # the PUBACK goes out before anything more is read
                if self._ack >= 0:
                    return
            if rs == _R_TYPE:
                if self._st == _UP:
                    if self._qn >= len(self._q):  # consumer full: stop reading the socket
                        self._paused = True
                        return
                    if self._paused:
                        self._paused = False
                        self._resume_timers()
                if not self._some(one):
                    return
                self._rt = one[0]
                self._rn = 0
                self._rg = 0  # varint shift
                self._rs = _R_LEN
            elif rs == _R_LEN:
                if not self._some(one):
                    return
                v = one[0]
                self._rn |= (v & 0x7F) << self._rg
                if v & 0x80:
                    self._rg += 7
                    if self._rg > 21:
                        raise MQTTError("remaining length")
                    continue
                # the fixed header is complete
                t = self._rt
                n = self._rn
                if self._st == _CONNACK_WAIT and (t != _CONNACK or n != 2):
                    raise MQTTError("bad CONNACK")
                if t & 0xF0 == _PUBLISH:
                    qos = (t >> 1) & 3
                    if qos > 1 or n < 2 + (2 if qos else 0):
                        raise MQTTError("bad PUBLISH")
                elif n > 4:
                    raise MQTTError("packet %02x length %d" % (t, n))
                self._rg = 0
                self._rw = n if n <= len(self._rmv) else len(self._rmv)
                self._rs = _R_BODY
            elif rs == _R_BODY:
                g = self._rg
                if g < self._rw:
                    r = self._some(mv[g : self._rw])
                    if not r:
                        return
                    self._rg = g + r
                    if self._rg < self._rw:
                        continue
                self._packet(b)
            else:  # _R_DRAIN
                k = self._rg  # bytes left to drain
                if k > len(b):
                    k = len(b)
                r = self._some(mv[:k])
                if not r:
                    return
                self._rg -= r
                if not self._rg:
                    self._dropped()

    def _packet(self, b) -> None:
        # a body complete in _rmv (or its first len(_rmv) bytes)
        t = self._rt
        n = self._rn
        self._rs = _R_TYPE
        if t & 0xF0 == _PUBLISH:
            qos = (t >> 1) & 3
            tl = (b[0] << 8) | b[1]
            hl = tl + (2 if qos else 0)
            if tl > TOPIC_MAX or 2 + hl > n:
                raise MQTTError("bad topic length")
            self._rpid = (b[2 + tl] << 8) | b[3 + tl] if qos else -1
            pl = n - 2 - hl
            if n > len(b):
                # too long for the link: drain it in pieces, acknowledge it (else a
                # persistent session would redeliver it for ever) and count it
                self._rg = n - len(b)  # to drain
                self._rs = _R_DRAIN
            elif pl > len(b) - 4 - TOPIC_MAX:  # max_msg
                self._dropped()
            else:
                self._rg = tl
                self._rw = hl
                self._rs = _R_HOLD
                self._deliver()
            return
        if self._st == _CONNACK_WAIT:
            if b[1]:
                raise MQTTError(refusal(b[1]), b[1])
            # CONNACK accepted
            self._fails = 0
            if self._sess[4]:  # clean_session
                # MQTT-3.1.2-6: a clean session discards the old one, in-flight
                # publishes included; the end-to-end layer resends what matters.
                self._forget()
            now = time.ticks_ms()
            self._last_rx = now
            self._last_tx = now
            self._ping = 0
            self._paused = False
            self.present = bool(b[0] & 1)
            self._st = _UP
            # MQTT-4.4.0-1: resend unacknowledged publishes with their packet ids
            # (in acceptance order, DUP set)
            for i in range(len(self._f_pid)):
                if self._f_pid[i]:
                    self._f_fl[i] = (self._f_fl[i] & _FL_RET) | _FL_DUE | _FL_DUP  # tries 0
            return
        if t == _PUBACK and n == 2:
            pid = (b[0] << 8) | b[1]
            if pid in self._f_pid:
                i = self._f_pid.index(pid)
                self._f_pid[i] = 0
                self._f_topic[i] = b""
                self._f_msg[i] = b""
                self._f_fl[i] = 0
                self._f_n -= 1
        elif t == _SUBACK and n == 3:
            if (b[0] << 8) | b[1] == self._sub_pid:
                self.suback = b[2]
                self._sub_pid = -1
        elif t == _PINGRESP and n == 0:
            if self._ping == 2:
                self._ping = 0
        else:
            raise MQTTError("unexpected packet %02x" % t)

    def _dropped(self) -> None:
        self.oversize += 1
        self._rs = _R_TYPE
        if self._rpid >= 0:
            self._ack = self._rpid

    def _deliver(self) -> bool:
        # the PUBLISH in _rmv into the queue; False while there is no room
        # (or no memory for the copy: it stays unacknowledged and the socket
        # unread, and the copy is retried; the timers judge nothing meanwhile)
        q = self._q
        if self._qn >= len(q):
            self._paused = True
            return False
        if self._paused and time.ticks_diff(time.ticks_ms(), self._oom_ms) < _OOM_RETRY_MS:
            return False
        mv = self._rmv
        tl = self._rg  # _R_HOLD: topic length
        hl = self._rw  # and topic + packet id length
        try:
            item = (bytes(mv[2 : 2 + tl]), bytes(mv[2 + hl : self._rn]), self._rt & 1)
        except MemoryError:
            self.mem_errors += 1
            self._paused = True
            self._oom_ms = time.ticks_ms()
            gc.collect()
            return False
        if self._paused:
            self._paused = False
            self._resume_timers()
        q[(self._qh + self._qn) % len(q)] = item
        self._qn += 1
        self._rs = _R_TYPE
        if self._rpid >= 0:
            self._ack = self._rpid
        return True

    # ----- timers: keepalive, dead broker, QoS 1 retries -----

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
        self._sub_ms = now
        for i in range(len(self._f_pid)):
            if self._f_pid[i]:
                self._f_ms[i] = now

    def _timers(self, now) -> None:
        if self._oa is not None and time.ticks_diff(now, self._t0) > self.response_ms:
            self.close("write stalled")
            return
        ping = self._sess[3] * 250  # ping after keepalive/4 of silence
        if self._paused:
            # not reading: judge nothing, but keep the broker's keepalive fed
            if ping and self._ping != 1 and time.ticks_diff(now, self._last_tx) >= ping:
                self._ping_ms = now
                self._ping = 1
            return
        if self._ping:
            if self._ping == 2 and self._overdue(self._ping_ms, now):
                self.close("no PINGRESP")
                return
        elif ping and (
            time.ticks_diff(now, self._last_rx) >= ping
            or time.ticks_diff(now, self._last_tx) >= ping
        ):
            self._ping_ms = now
            self._ping = 1
        if (self._sub_pid >= 0 and not self._sub_due
                and self._overdue(self._sub_ms, now)):
            self.close("no SUBACK")
            return
        for i in range(len(self._f_pid)):
            fl = self._f_fl[i]
            if (self._f_pid[i] and not fl & _FL_DUE and i != self._oslot
                    and self._overdue(self._f_ms[i], now)):
                if fl // _FL_TRY >= self._retries:
                    self.close("no PUBACK")
                    return
                self._f_fl[i] = fl + _FL_TRY | _FL_DUE
