# Compact non-blocking MQTT 3.1.1 client for the ESP8266 (MicroPython).
#
# One connection at a time; the owner (bridge.py) decides when to connect and
# reconnect. Features: CONNECT with will, credentials and clean_session;
# CONNACK refusals as MQTTError with a readable reason; PUBLISH QoS 0 and 1
# (QoS 1 with a bounded in-flight table, retried with DUP after response_ms,
# resent on reconnect, due resends in acceptance order); SUBSCRIBE; PINGREQ
# keepalive with dead-broker detection; optional TLS; incoming messages read
# in place, one at a time: a PUBLISH stays in the receive buffer until the
# consumer has taken it (get(), then release()), and meanwhile the socket is
# not read (TCP then pushes back on the broker). One subscription, to one
# topic (no wildcards): a PUBLISH is taken only on that topic, so its topic is
# compared as it is read and never kept, and the receive buffer holds only a
# packet id and a payload.
#
# No asyncio, no coroutines (docs/FIRMWARE.md "Memory budget"): a state
# machine over the non-blocking socket. The owner calls wait(ms) (select.poll
# on the socket: its one sleep) and step() (reads what has come, writes what
# the socket takes, runs the timers) in its main loop. connect(), publish()
# and subscribe() only start things; step() carries them on.
#
# Heap: the client's state is one preallocated list indexed by const()s (an
# attribute costs a slot of the instance dict's hash table, 8 B, whose size
# grows in steps; a list entry 4 B), the QoS 1 in-flight table at its end, and
# few methods (each is a function object and a slot of the class dict).
# Nothing is copied per message: a received packet is read into one bytearray
# (a PUBLISH in parts over its start: topic length, topic, packet id and
# payload) and the consumer gets a memoryview of its payload there; a packet
# goes out in up to four parts written from where they are (a 9-byte header
# buffer, the topic, the packet id in the header buffer, the payload) with
# socket.write(buf, off, n).
from micropython import const
import select
import socket
import time

_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)
_PINGRESP = const(0xD0)
_SUBACK = const(0x90)

_EINPROGRESS = const(115)
_ENOTCONN = const(107)
_ETIMEDOUT = const(110)
_ECONNRESET = const(104)
_ENOMEM = const(12)
_POLL_MS = const(10)  # disconnect(): how often the last writes are looked at

# connection states
_CLOSED = const(0)
_OPENING = const(1)  # TCP (and TLS) connecting, CONNECT going out
_CONNACK_WAIT = const(2)
_UP = const(3)

# reader states
_R_TYPE = const(0)  # first byte of a fixed header
_R_LEN = const(1)  # remaining-length bytes
_R_BODY = const(2)  # the packet body into the receive buffer (a PUBLISH's: its topic length)
_R_DRAIN = const(3)  # bytes of a PUBLISH dropped: a topic not ours, the rest of a long one
_R_HOLD = const(4)  # a PUBLISH in the receive buffer, until release()
_R_TOPIC = const(5)  # a PUBLISH's topic into the receive buffer, then compared
_R_REST = const(6)  # a PUBLISH's packet id and payload into the receive buffer (its start)
_NOT_OURS = const(0x100)  # in _RT: the PUBLISH being read is on another topic

# flags of an in-flight entry
_FL_DUE = const(1)  # to be written (first time, a retry, after a reconnect)
_FL_DUP = const(2)  # written once: DUP from now on
_FL_RET = const(4)  # retain
_FL_TRY = const(8)  # the DUP resends on this connection, in steps of this

_POLLIN = const(1)
_POLLOUT = const(4)

# MQTTClient._v, the state. 0 to 11: the packet being written, four parts of
# (buffer, offset, end): the fixed header (or a whole packet), the topic, the
# packet id (or SUBSCRIBE's QoS) at 7 in the header buffer, the payload
_WEND = const(12)
_OUT = const(12)  # the part being written at _OUT..+2; _WEND: none
_S = const(13)  # the socket (non-blocking), or an SSL socket over it, or None
_ST = const(14)  # connection state
_T0 = const(15)  # when the connect phase began; while up: when the packet being written started
_PMASK = const(16)  # events the socket is registered for (0: not registered)
_REV = const(17)  # events the last wait() saw
_SSL = const(18)  # the socket is TLS (a name apart from the settings row `tls`)
_OSLOT = const(19)  # in-flight entry (its index in _v) of the publish being written, or -1
_ACK = const(20)  # packet id of a PUBACK to send (one at a time), or -1
_SUBT = const(21)  # the topic taken (bytes): of the last subscribe() or configure()
_SUBQ = const(22)  # its QoS while its SUBSCRIBE is due, else -1
_SUB_MS = const(23)  # when it was written
_SUB_PID = const(24)  # its packet id while unanswered, else -1
_PID = const(25)  # the packet id counter (see publish())
_FN = const(26)  # in-flight entries in use
_RS = const(27)  # reader state
_RT = const(28)  # packet type byte (| _NOT_OURS)
# _RN: the remaining length; of a PUBLISH, once its topic length is read, the
# length of its packet id and payload; while the rest of a long one is
# drained, -1
_RN = const(29)
# _RG, _RW by reader state: _R_LEN the varint shift, -; _R_BODY, _R_TOPIC,
# _R_REST bytes read, wanted; _R_DRAIN bytes to drain, -; _R_HOLD where the
# payload begins and ends in the buffer
_RG = const(30)
_RW = const(31)
_RPID = const(32)  # packet id of the PUBLISH being read, -1 for QoS 0
_PING = const(33)  # PINGREQ: 0 none, 1 to be written, 2 written and unanswered
_PING_MS = const(34)  # when it was asked for
_LAST_RX = const(35)
_LAST_TX = const(36)
_DHOST = const(37)  # DNS once (getaddrinfo blocks): the host name resolved,
_DADDR = const(38)  # and its address
_FAILS = const(39)  # connect attempts failed in a row
_CID = const(40)  # the session: client id, user, password (bytes), keepalive_s,
_USER = const(41)  # clean_session, will
_PW = const(42)
_KEEP = const(43)
_CLEAN = const(44)
_WILL = const(45)
_RESP = const(46)  # response_ms
_RETRIES = const(47)
_RMV = const(48)  # the receive buffer (memoryview)
_HB = const(49)  # the header buffer
_POLL = const(50)  # select.poll of the socket
_Q0T = const(51)  # a QoS 0 publish being started: topic (b"": none),
_Q0M = const(52)  # payload,
_Q0F = const(53)  # retain flag (_FL_RET)
# from _F on: the in-flight QoS 1 table, _FS entries each: packet id (0: free),
# topic, payload, when last written (ms), flags (_FL_*), rank in acceptance
# order (0 the oldest; ranks above one acknowledged move down)
_F = const(54)
_FS = const(6)

# longest topic sent: MQTT allows 65535 bytes, but a SUBSCRIBE's fixed header
# (its remaining length 5 + topic in two varint bytes) must fit the header
# buffer before its QoS at 7. The topic taken is also at most the receive
# buffer's length (max_msg + 4), as it is compared there.
TOPIC_MAX = const(16378)
MSG_MAX = const(1152)  # longest payload accepted (PROTOCOL.md MAX_MESSAGE)


class MQTTError(Exception):
    """A protocol-level failure. code: the CONNACK return code (1-5, or what
    the broker sent) or 0; with a code the text is its reason (the text
    given is not used), e.g. 'refused: not authorised', 'refused: code 9'."""

    def __init__(self, text: str, code: int = 0) -> None:
        if code:
            text = "refused: " + (
                ("unacceptable protocol version", "identifier rejected", "server unavailable",
                 "bad user name or password", "not authorised")[code - 1]
                if code < 6 else "code %d" % code)
        super().__init__(text)
        self.code = code


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


def _b(s) -> bytes:
    return s.encode() if isinstance(s, str) else bytes(s)


class MQTTClient:
    """MQTT 3.1.1 client. The owner calls connect() again after a failure.

    will: None or (topic, payload, qos, retain).
    response_ms: how long to wait for CONNACK, SUBACK, PUBACK, PINGRESP or a
    stuck write before the connection is deemed dead.
    max_inflight: unacknowledged QoS 1 publishes; publish() returns -1 when full.
    retries: DUP resends of a QoS 1 publish on one connection before the
    connection is dropped (it is resent again after the reconnect).
    max_msg: the longest incoming payload taken (longer ones are dropped,
    acknowledged and counted in `oversize`, as are messages on a topic other
    than the one taken: see subscribe()).
    ValueError for settings MQTT 3.1.1 forbids (see configure()).

    State: connecting() (connect() started, no CONNACK yet), isconnected();
    after a failed attempt `err` holds its MQTTError or OSError; `why` says
    why the last established connection ended; `present` is the CONNACK
    session-present flag; `suback` the granted QoS of the last subscribe()
    (-1 while unanswered, 0x80 refused); `oversize` incoming messages dropped
    (too long, or on another topic than the one taken); `mem_errors`
    MemoryErrors caught (the connection was dropped: nothing acknowledged is
    lost, a QoS 1 publish is resent after the reconnect).
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
        retries: int = 2,
        max_msg: int = MSG_MAX,
    ) -> None:
        t = time.ticks_ms()
        v: list = [0] * (_F + _FS * max_inflight)
        v[_OUT] = _WEND
        v[_T0] = v[_SUB_MS] = v[_PING_MS] = v[_LAST_RX] = v[_LAST_TX] = t
        v[_OSLOT] = v[_ACK] = v[_SUBQ] = v[_SUB_PID] = v[_RPID] = -1
        v[_S] = v[_DHOST] = v[_DADDR] = None
        v[0] = v[3] = v[9] = v[_SUBT] = v[_Q0T] = v[_Q0M] = b""
        # receive buffer for one packet body, a PUBLISH's in parts over its
        # start (topic length; topic, compared with the one taken; packet id
        # and payload), as a memoryview (indexing it gives ints, as a
        # bytearray's); 4: the longest body of other packets, or a packet id
        v[_RMV] = memoryview(bytearray(4 + max_msg))
        # a PUBLISH's fixed header and topic length (at most 7 bytes), then its
        # packet id; a SUBSCRIBE's up to its topic, then its QoS; a PUBACK
        v[6] = v[_HB] = bytearray(9)
        v[_POLL] = select.poll()
        for i in range(_F, len(v), _FS):
            v[i + 1] = v[i + 2] = b""
        self._v = v
        self.suback = -1
        self.present = False
        self.err: Exception | None = None  # why the last connect attempt failed
        self.why = ""  # why the last connection ended
        self.oversize = 0
        self.mem_errors = 0
        self.configure(client_id, user, password, keepalive_s, will, response_ms, retries,
                       clean_session)

    def configure(
        self, client_id, user="", password="", keepalive_s=60, will=None, response_ms=10000,
        retries=2, clean_session=False, topic=b"",
    ) -> None:
        """New session parameters (while disconnected). Forgets the held and
        in-flight messages. topic: the one incoming messages are taken on
        until subscribe() names one (a persistent session may deliver on its
        subscription before subscribe() is called on the new connection);
        subscribe() checks it, not this.

        ValueError (nothing changed) for settings MQTT 3.1.1 forbids, refused
        here, never sent: a password without a user name (MQTT-3.1.2-22), an
        empty client id with a persistent session (MQTT-3.1.3-7, a broker
        answers 'identifier rejected')."""
        if password and not user:
            raise ValueError("MQTT password without a user name (MQTT-3.1.2-22)")
        if not client_id and not clean_session:
            raise ValueError("empty MQTT client id with a persistent session (MQTT-3.1.3-7)")
        self.close("reconfigure")
        v = self._v
        v[_CID] = _b(client_id)
        v[_USER] = _b(user) if user else b""
        v[_PW] = _b(password) if password else b""
        v[_KEEP] = keepalive_s
        v[_CLEAN] = clean_session
        v[_WILL] = will
        v[_RESP] = response_ms
        v[_RETRIES] = retries
        v[_SUBT] = _b(topic)
        for i in range(_F, len(v), _FS):
            v[i] = v[i + 4] = 0
            v[i + 1] = v[i + 2] = b""
        v[_FN] = 0

    # ----- state -----

    def isconnected(self) -> bool:
        return self._v[_ST] == _UP

    def connecting(self) -> bool:
        st = self._v[_ST]
        return st == _OPENING or st == _CONNACK_WAIT

    def get(self, part: int = 0):
        """The incoming message held for the consumer (on the topic taken), in
        place (nothing is copied): part 0 its payload, a memoryview into the
        receive buffer, valid until release() (or close()); 2 its retain flag
        (0 or 1). None while there is none."""
        v = self._v
        if v[_RS] != _R_HOLD:
            return None
        if part == 2:
            return v[_RT] & 1
        return v[_RMV][v[_RG] : v[_RW]]

    def release(self) -> None:
        """Done with the message get() gives (the consumer has what it needs of
        it): it is acknowledged (QoS 1) and the next packets are read (a
        step())."""
        v = self._v
        if v[_RS] != _R_HOLD:
            return
        v[_RS] = _R_TYPE
        v[_ACK] = v[_RPID]
        # nothing was read while it was held: restart the response clocks
        now = time.ticks_ms()
        v[_PING_MS] = v[_LAST_RX] = v[_SUB_MS] = now
        for i in range(_F, len(v), _FS):
            if v[i]:
                v[i + 3] = now
        self.step()

    def wait(self, ms: int) -> None:
        """Sleep up to ms, less once the socket has something for step() (the
        owner's one sleep: select.poll, which on the ESP8266 runs scheduled IRQ
        handlers meanwhile)."""
        ev = 0
        for _s, e in self._v[_POLL].ipoll(ms):
            ev |= e
        self._v[_REV] = ev

    # ----- connection -----

    def connect(self, host, port: int = 1883, tls: bool = False) -> None:
        """Start opening the connection; step() carries it on. connecting() is
        True until it is up (isconnected()) or failed (`err` says why).

        Raises OSError when it cannot even start (DNS, socket)."""
        self.close("reconnect")
        self.why = ""
        self.err = None
        v = self._v
        try:
            # DNS once: getaddrinfo blocks (on the ESP8266 it still runs scheduled
            # IRQ handlers: the I2C link goes on in the syn handler)
            if v[_DHOST] != host or v[_FAILS] >= 4:
                v[_FAILS] = 0
                a = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
                # the ESP8266 (lwIP) gives ('a.b.c.d', port): keep the literal;
                # other ports give an opaque sockaddr: keep the name
                v[_DADDR] = a[0] if isinstance(a, tuple) else host
                v[_DHOST] = host
            ai = socket.getaddrinfo(v[_DADDR], port, 0, socket.SOCK_STREAM)[0]
            s = socket.socket(ai[0], ai[1], ai[2])
            v[_S] = s  # closed by close() if what follows fails
            s.setblocking(False)
            try:
                s.connect(ai[-1])
            except OSError as e:
                if e.errno != _EINPROGRESS:
                    raise
            if tls:
                # micropython-lib's ssl.SSLContext sets CERT_NONE; the ESP8266
                # (axTLS) cannot verify certificates anyway: TLS here encrypts,
                # it does not authenticate the broker (docs/FIRMWARE.md)
                try:
                    from ssl import PROTOCOL_TLS_CLIENT, SSLContext
                except ImportError:
                    from tls import PROTOCOL_TLS_CLIENT, SSLContext  # type: ignore[no-redef]
                s = SSLContext(PROTOCOL_TLS_CLIENT).wrap_socket(
                    s, server_hostname=host, do_handshake_on_connect=False)
                s.setblocking(False)
                v[_S] = s
            v[_SSL] = tls
            # Small publishes (acks, heartbeats, QoS 0 lines) must not wait ~40 ms for
            # the broker's delayed ACK (Nagle's algorithm). Where the port's socket
            # does not offer TCP_NODELAY (the ESP8266's lwIP binding refuses it; so do
            # TLS sockets) the option is simply not set.
            try:
                s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY
            except (AttributeError, OSError, TypeError):
                pass
            # the CONNECT packet (allocated per connection: it is written once):
            # the variable header, then the client id, will topic and message,
            # user and password, each with its 16-bit length, as the flags say
            will = v[_WILL]
            keepalive_s = v[_KEEP]
            flags = 0x02 if v[_CLEAN] else 0
            wt = wm = b""
            if will:
                wt = _b(will[0])
                wm = _b(will[1])
                flags |= 0x04 | (will[2] << 3) | (0x20 if will[3] else 0)
            if v[_USER]:
                flags |= 0x80
            if v[_PW]:
                flags |= 0x40
            strs = (v[_CID], wt, wm, v[_USER], v[_PW])
            n = 10
            for k in range(5):
                if flags & (0, 0x04, 0x04, 0x80, 0x40)[k] or not k:
                    n += 2 + len(strs[k])
            pkt = bytearray(5 + n)
            pkt[0] = _CONNECT
            i = put_len(pkt, 1, n)
            pkt[i : i + 7] = b"\x00\x04MQTT\x04"  # protocol name, level 3.1.1
            pkt[i + 7] = flags
            pkt[i + 8] = keepalive_s >> 8
            pkt[i + 9] = keepalive_s & 0xFF
            i += 10
            for k in range(5):
                if flags & (0, 0x04, 0x04, 0x80, 0x40)[k] or not k:
                    x = strs[k]
                    pkt[i] = len(x) >> 8
                    pkt[i + 1] = len(x) & 0xFF
                    pkt[i + 2 : i + 2 + len(x)] = x
                    i += 2 + len(x)
        except OSError:
            self.close()
            v[_FAILS] += 1  # after 4 in a row: resolve again (DHCP may have moved it)
            raise
        v[0] = pkt  # the parts after it are empty since close()
        v[1] = 0
        v[2] = i
        v[_OUT] = 0
        v[_ST] = _OPENING
        v[_T0] = time.ticks_ms()
        self._mask()

    def close(self, why: str = "closed", err=None) -> None:
        """Drop the connection at once (the broker publishes the will).

        why: for `why` when the connection was up; err: for `err` when an
        attempt ends (an error of the socket or the protocol)."""
        v = self._v
        if v[_ST] == _UP:
            self.why = why
        elif v[_ST] and err is not None:
            self.err = err
            v[_FAILS] += 1
        v[_ST] = _CLOSED
        s = v[_S]
        v[_S] = None
        if s is not None:
            if v[_PMASK]:
                try:
                    v[_POLL].unregister(s)
                except (OSError, KeyError):
                    pass
            try:
                s.close()
            except Exception:
                pass
        v[_PMASK] = v[_REV] = v[_PING] = 0
        v[_OUT] = _WEND
        v[0] = v[3] = v[9] = v[_Q0T] = v[_Q0M] = b""  # the buffers go to the GC
        v[4] = v[5] = v[7] = v[8] = v[10] = v[11] = 0  # parts 1 to 3 empty (see connect())
        v[_OSLOT] = v[_ACK] = v[_SUBQ] = v[_SUB_PID] = -1
        v[_RS] = _R_TYPE  # a held message is dropped unacknowledged: the broker resends it

    def disconnect(self) -> None:
        """Finish the packets due (within response_ms), say DISCONNECT (no will) and close."""
        v = self._v
        if v[_ST] == _UP:
            t0 = time.ticks_ms()
            # _mask() polls for writing while something is being written or due
            while v[_ST] == _UP and self._mask() & _POLLOUT:
                if time.ticks_diff(time.ticks_ms(), t0) > v[_RESP]:
                    break
                self.wait(_POLL_MS)
                self.step()
            if v[_ST] == _UP and v[_OUT] == _WEND:
                try:
                    v[_S].write(b"\xe0\x00")  # DISCONNECT
                except OSError:
                    pass
        self.close("disconnect")

    # ----- sending -----

    def _write(self) -> None:
        # Write what the socket takes of the packet being written, then of the
        # next ones. Packets go out one at a time, so they never interleave;
        # the next by priority: a QoS 0 publish (taken only while nothing is
        # being written), PUBACK, PINGREQ, SUBSCRIBE, then the due QoS 1
        # publishes in acceptance order.
        v = self._v
        s = v[_S]
        hb = v[_HB]
        try:
            while s is not None:
                j = v[_OUT]
                if j < _WEND:
                    o = v[j + 1]
                    e = v[j + 2]
                    if o < e:
                        n = s.write(v[j], o, e - o)
                        if not n:
                            return  # the socket is full (or the TLS handshake goes on)
                        o += n
                        v[j + 1] = o
                        if o < e:
                            return
                    j += 3
                    v[_OUT] = j
                    if j < _WEND:
                        continue
                    # the packet is out
                    now = time.ticks_ms()
                    v[0] = v[3] = v[9] = b""
                    v[_LAST_TX] = now
                    k = v[_OSLOT]
                    if k >= 0:
                        v[k + 3] = now
                        v[_OSLOT] = -1
                    if v[_ST] == _OPENING:  # CONNECT is out: wait for CONNACK
                        v[_ST] = _CONNACK_WAIT
                        v[_T0] = now
                        return
                    continue
                if v[_ST] != _UP:
                    return
                # the next packet: a = its first part a[:an]; the parts after it
                a = hb
                topic = msg = b""
                pe = 7  # hb[7:pe]: the packet id or QoS after the topic
                fl = -1  # a PUBLISH's flags (_FL_*), -1 for other packets
                if v[_Q0T]:
                    topic = v[_Q0T]
                    msg = v[_Q0M]
                    fl = v[_Q0F]
                    pid = 0
                    v[_Q0T] = v[_Q0M] = b""
                elif v[_ACK] >= 0:
                    pid = v[_ACK]
                    v[_ACK] = -1
                    hb[0] = _PUBACK
                    hb[1] = 2
                    hb[2] = pid >> 8
                    hb[3] = pid & 0xFF
                    an = 4
                elif v[_PING] == 1:
                    v[_PING] = 2
                    a = b"\xc0\x00"  # PINGREQ
                    an = 2
                elif v[_SUBQ] >= 0:
                    topic = v[_SUBT]
                    pid = v[_SUB_PID]
                    n = len(topic)
                    hb[0] = _SUBSCRIBE
                    i = put_len(hb, 1, 5 + n)
                    hb[i] = pid >> 8
                    hb[i + 1] = pid & 0xFF
                    hb[i + 2] = n >> 8
                    hb[i + 3] = n & 0xFF
                    hb[7] = v[_SUBQ]
                    v[_SUBQ] = -1
                    v[_SUB_MS] = time.ticks_ms()
                    an = i + 4
                    pe = 8
                else:
                    k = -1
                    for i in range(_F, len(v), _FS):
                        if v[i + 4] & _FL_DUE and (k < 0 or v[i + 5] < v[k + 5]):
                            k = i
                    if k < 0:
                        return
                    pid = v[k]
                    topic = v[k + 1]
                    msg = v[k + 2]
                    fl = v[k + 4]
                    v[k + 4] = (fl & ~_FL_DUE) | _FL_DUP
                    v[_OSLOT] = k
                    pe = 9
                if fl >= 0:  # a PUBLISH: its fixed header, topic length, packet id
                    n = len(topic)
                    hb[0] = _PUBLISH | (8 if fl & _FL_DUP else 0) | (2 if pid else 0) | (
                        1 if fl & _FL_RET else 0)
                    i = put_len(hb, 1, 2 + n + len(msg) + (2 if pid else 0))
                    hb[i] = n >> 8
                    hb[i + 1] = n & 0xFF
                    hb[7] = pid >> 8
                    hb[8] = pid & 0xFF
                    an = i + 2
                v[0] = a
                v[1] = 0
                v[2] = an
                v[3] = topic
                v[4] = 0
                v[5] = len(topic)
                v[7] = 7
                v[8] = pe
                v[9] = msg
                v[10] = 0
                v[11] = len(msg)
                v[_OUT] = 0
                v[_T0] = time.ticks_ms()
        except OSError as e:
            self.close("write: %s" % e, e)
        except MemoryError:
            # the packet may be incomplete, so the connection must go (a QoS 1
            # message is resent after the reconnect, a QoS 0 one was not sent)
            self.mem_errors += 1
            self.close("write: out of memory", OSError(_ENOMEM))

    def publish(self, topic, msg, qos: int = 0, retain: bool = False) -> int:
        """Publish. QoS 1: the packet id once the message is in the in-flight
        table (it goes out, is retried and resent after a reconnect until its
        PUBACK arrives), -1 while the table is full. QoS 0: 0 once it is
        going out, -1 while another packet is (try again after step()).
        topic and msg (bytes) are written from where they are: they must not
        change until the message is out (QoS 0) or acknowledged (QoS 1).

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
        v = self._v
        if v[_ST] != _UP:
            raise OSError(_ENOTCONN)
        fl = _FL_RET if retain else 0
        if not qos:
            self._write()  # what is due goes first
            busy = v[_OUT] < _WEND
            if v[_ST] == _UP and not busy:
                v[_Q0T] = topic
                v[_Q0M] = msg
                v[_Q0F] = fl
                self._write()
            self._mask()
            if v[_ST] != _UP:
                raise OSError(_ENOTCONN)
            return -1 if busy else 0
        if v[_FN] * _FS >= len(v) - _F:
            return -1
        k = _F
        while v[k]:
            k += _FS
        # packet ids: entry r's are 1 + r + m * c, the SUBSCRIBE's m + m * c, for
        # a counter c (m: entries + 1): none in use is given again, and no search
        m = (len(v) - _F) // _FS + 1
        c = v[_PID] = (v[_PID] + 1) % (65535 // m)
        pid = v[k] = 1 + (k - _F) // _FS + m * c
        v[k + 1] = topic
        v[k + 2] = msg
        v[k + 3] = time.ticks_ms()
        v[k + 4] = _FL_DUE | fl
        v[k + 5] = v[_FN]  # the newest
        v[_FN] += 1
        self._write()  # accepted: a failed write resends it after the reconnect
        self._mask()
        return pid

    def subscribe(self, topic, qos: int = 1) -> int:
        """Start subscribing to one topic; return its packet id. `suback` then
        holds the granted QoS (0x80: refused) once step() has read the SUBACK.
        From now on (across reconnects too) incoming messages are taken on
        that topic only: others (of a subscription a persistent session kept)
        are dropped, acknowledged and counted in `oversize`.

        ValueError for a topic that is empty, longer than TOPIC_MAX or the
        receive buffer (max_msg + 4), or has a wildcard (a message's topic is
        compared with it, not matched); for a QoS other than 0 and 1: this
        client cannot take QoS 2 deliveries (it would answer PUBLISH QoS 2 with
        nothing). OSError when not connected."""
        topic = _b(topic)
        v = self._v
        if len(topic) > TOPIC_MAX or len(topic) > len(v[_RMV]) or not topic:
            raise ValueError("topic length")
        if b"+" in topic or b"#" in topic:
            raise ValueError("wildcard in a subscription: one topic is taken")
        if qos != 0 and qos != 1:
            raise ValueError("subscription QoS %d: only 0 and 1 are supported" % qos)
        if v[_ST] != _UP:
            raise OSError(_ENOTCONN)
        m = (len(v) - _F) // _FS + 1  # packet ids: see publish()
        c = v[_PID] = (v[_PID] + 1) % (65535 // m)
        pid = v[_SUB_PID] = m + m * c
        self.suback = -1
        v[_SUBT] = topic
        v[_SUBQ] = qos
        v[_SUB_MS] = time.ticks_ms()
        self._write()
        self._mask()
        return pid

    # ----- the main loop's step -----

    def step(self) -> None:
        """Carry everything on: connect, read, write, keepalive, retries."""
        v = self._v
        st = v[_ST]
        if not st:
            return
        now = time.ticks_ms()
        rt = v[_RESP]
        d = time.ticks_diff
        if st != _UP and d(now, v[_T0]) > rt:
            self.close("", OSError(_ETIMEDOUT))
            return
        if st == _OPENING:
            if v[_SSL] or v[_REV]:  # writable, or an error to be had by writing
                self._write()
        else:
            # Read and handle packets until the socket has no more, a PUBLISH
            # is held for the consumer or a PUBACK cannot go out yet. Errors
            # end the connection (or the attempt).
            mv = v[_RMV]
            try:
                while v[_ST] >= _CONNACK_WAIT:
                    rs = v[_RS]
                    if rs == _R_HOLD:
                        break  # until release()
                    if v[_ACK] >= 0:
                        self._write()  # the PUBACK goes out before anything more is read
                        if v[_ACK] >= 0:
                            break
                        continue
                    if rs == _R_TOPIC and v[_RG] == v[_RW]:
                        # the topic, as long as the one taken: is it that one?
                        if mv[: v[_RW]] != v[_SUBT]:
                            v[_RT] |= _NOT_OURS
                        rs = _R_DRAIN  # nothing left to drop: the packet id and payload next
                        v[_RG] = 0
                    if rs == _R_DRAIN and not v[_RG] and v[_RN] >= 0:
                        # the packet id and payload (their first len(mv) bytes) next
                        v[_RG] = 0
                        v[_RW] = min(v[_RN], len(mv))
                        v[_RS] = rs = _R_REST
                    if rs == _R_REST and v[_RG] == v[_RW]:
                        t = v[_RT]
                        n = v[_RN]
                        hl = 2 if t & 6 else 0
                        v[_RPID] = (mv[0] << 8) | mv[1] if hl else -1
                        v[_RS] = _R_TYPE
                        if n > len(mv):
                            # too long for the link: drain the rest in pieces, then
                            # acknowledge it (else a persistent session would
                            # redeliver it for ever) and count it
                            v[_RG] = n - len(mv)  # to drain
                            v[_RN] = -1
                            v[_RS] = _R_DRAIN
                        elif t & _NOT_OURS or n - hl > len(mv) - 4:  # or longer than max_msg
                            v[_ACK] = v[_RPID]
                            self.oversize += 1
                        else:  # held for get() until release()
                            v[_RG] = hl
                            v[_RW] = n
                            v[_RS] = _R_HOLD
                        continue
                    if rs == _R_BODY and v[_RG] == v[_RW]:
                        # a body complete in mv (of a PUBLISH: its topic length)
                        t = v[_RT]
                        n = v[_RN]
                        v[_RS] = _R_TYPE
                        if t & 0xF0 == _PUBLISH:
                            tl = (mv[0] << 8) | mv[1]
                            n -= 2 + tl  # the packet id and payload
                            if not tl or n < (2 if t & 6 else 0):
                                raise MQTTError("bad topic length")
                            v[_RN] = n
                            v[_RG] = tl
                            v[_RS] = _R_DRAIN
                            if tl == len(v[_SUBT]) and tl <= len(mv):
                                v[_RG] = 0
                                v[_RW] = tl
                                v[_RS] = _R_TOPIC
                            else:  # another topic: dropped, the packet id kept (drained)
                                v[_RT] = t | _NOT_OURS
                        elif v[_ST] == _CONNACK_WAIT:
                            if mv[1]:
                                raise MQTTError("", mv[1])
                            # CONNACK accepted
                            v[_FAILS] = 0
                            v[_LAST_RX] = v[_LAST_TX] = time.ticks_ms()
                            v[_PING] = 0
                            self.present = bool(mv[0] & 1)
                            v[_ST] = _UP
                            for i in range(_F, len(v), _FS):
                                if v[_CLEAN]:
                                    # MQTT-3.1.2-6: a clean session discards the old one,
                                    # in-flight publishes included; the end-to-end layer
                                    # resends what matters.
                                    v[i] = v[i + 4] = 0
                                    v[i + 1] = v[i + 2] = b""
                                    v[_FN] = 0
                                elif v[i]:
                                    # MQTT-4.4.0-1: resend unacknowledged publishes with
                                    # their packet ids (in acceptance order, DUP set),
                                    # tries from 0
                                    v[i + 4] = (v[i + 4] & _FL_RET) | _FL_DUE | _FL_DUP
                        elif t == _PUBACK and n == 2:
                            pid = (mv[0] << 8) | mv[1]
                            for i in range(_F, len(v), _FS):
                                if v[i] == pid:
                                    r = v[i + 5]
                                    v[i] = v[i + 4] = 0
                                    v[i + 1] = v[i + 2] = b""
                                    v[_FN] -= 1
                                    for k in range(_F, len(v), _FS):
                                        if v[k] and v[k + 5] > r:
                                            v[k + 5] -= 1  # acceptance order goes on
                                    break
                        elif t == _SUBACK and n == 3:
                            if (mv[0] << 8) | mv[1] == v[_SUB_PID]:
                                self.suback = mv[2]
                                v[_SUB_PID] = -1
                        elif t == _PINGRESP and n == 0:
                            if v[_PING] == 2:
                                v[_PING] = 0
                        else:
                            raise MQTTError("unexpected packet %02x" % t)
                        continue
                    # what to read: a byte of the fixed header (into mv[0]), the
                    # rest of the body or of a PUBLISH's part, or bytes of a
                    # PUBLISH to drop
                    k = 1
                    buf = mv
                    if rs == _R_DRAIN:
                        k = min(v[_RG], len(mv))
                    elif rs >= _R_BODY:
                        k = v[_RW] - v[_RG]
                        if v[_RG]:
                            buf = mv[v[_RG] :]
                    r = v[_S].readinto(buf, k)
                    if r is None:
                        break
                    if not r:
                        raise OSError(_ECONNRESET)
                    v[_LAST_RX] = time.ticks_ms()
                    if rs == _R_TYPE:
                        v[_RT] = mv[0]
                        v[_RN] = v[_RG] = 0
                        v[_RS] = _R_LEN
                    elif rs == _R_LEN:
                        b = mv[0]
                        n = v[_RN] | (b & 0x7F) << v[_RG]
                        v[_RN] = n
                        if b & 0x80:
                            v[_RG] += 7
                            if v[_RG] > 21:
                                raise MQTTError("remaining length")
                            continue
                        # the fixed header is complete
                        t = v[_RT]
                        if v[_ST] == _CONNACK_WAIT and (t != _CONNACK or n != 2):
                            raise MQTTError("bad CONNACK")
                        if t & 0xF0 == _PUBLISH:
                            qos = (t >> 1) & 3
                            if qos > 1 or n < 2 + (2 if qos else 0):
                                raise MQTTError("bad PUBLISH")
                        elif n > 4:
                            raise MQTTError("packet %02x length %d" % (t, n))
                        v[_RG] = 0
                        v[_RW] = 2 if t & 0xF0 == _PUBLISH else n  # its topic length first
                        v[_RS] = _R_BODY
                    elif rs == _R_DRAIN:
                        v[_RG] -= r
                        if not v[_RG] and v[_RN] < 0:
                            # the rest of a long PUBLISH dropped: acknowledged, counted
                            v[_RS] = _R_TYPE
                            v[_ACK] = v[_RPID]
                            self.oversize += 1
                    else:
                        v[_RG] += r
            except OSError as e:
                self.close("read: %s" % e, e)
            except (MQTTError, ValueError, IndexError) as e:
                self.close("malformed: %s" % e, e)
            except MemoryError:
                # an allocation failed: drop the connection; a QoS 1 message not
                # yet acknowledged is redelivered after the reconnect
                self.mem_errors += 1
                self.close("out of memory", OSError(_ENOMEM))
        if v[_ST] == _UP:
            # the timers: keepalive, dead broker, QoS 1 retries
            why = ""
            ping = v[_KEEP] * 250  # ping after keepalive/4 of silence
            if v[_OUT] < _WEND and d(now, v[_T0]) > rt:
                why = "write stalled"
            elif v[_RS] == _R_HOLD:
                # not reading (a message held for the consumer): judge nothing,
                # but keep the broker's keepalive fed
                if ping and v[_PING] != 1 and d(now, v[_LAST_TX]) >= ping:
                    v[_PING_MS] = now
                    v[_PING] = 1
            else:
                # A response asked for at `since` is late (the broker deemed
                # dead) only when response_ms have passed since the request AND
                # since the last byte read: a broker may queue it (SUBACK,
                # PUBACK, PINGRESP) behind a backlog of PUBLISHes that this
                # client reads only as fast as the I2C link drains them; while
                # bytes keep coming, or while we hold the socket unread, it is
                # alive.
                quiet = d(now, v[_LAST_RX]) > rt
                if v[_PING]:
                    if v[_PING] == 2 and quiet and d(now, v[_PING_MS]) > rt:
                        why = "no PINGRESP"
                elif ping and (d(now, v[_LAST_RX]) >= ping or d(now, v[_LAST_TX]) >= ping):
                    v[_PING_MS] = now
                    v[_PING] = 1
                if v[_SUB_PID] >= 0 and v[_SUBQ] < 0 and quiet and d(now, v[_SUB_MS]) > rt:
                    why = "no SUBACK"
                for i in range(_F, len(v), _FS):
                    fl = v[i + 4]
                    if (v[i] and not fl & _FL_DUE and i != v[_OSLOT] and quiet
                            and d(now, v[i + 3]) > rt):
                        if fl // _FL_TRY >= v[_RETRIES]:
                            why = "no PUBACK"
                        v[i + 4] = fl + _FL_TRY | _FL_DUE
            if why:
                self.close(why)
            else:
                self._write()
        self._mask()

    def _mask(self) -> int:
        # poll for writability only while something is to be written, for
        # readability only while the reader takes packets: else poll would
        # return at once, and the owner's loop would spin. Returns the events.
        v = self._v
        s = v[_S]
        if s is None:
            return 0
        st = v[_ST]
        m = 0
        if st == _OPENING or v[_OUT] < _WEND:
            m = _POLLOUT
        elif st == _UP:
            if v[_ACK] >= 0 or v[_PING] == 1 or v[_SUBQ] >= 0:
                m = _POLLOUT
            for i in range(_F + 4, len(v), _FS):
                if v[i] & _FL_DUE:
                    m = _POLLOUT
        # reading: not while a PUBLISH is held or a PUBACK waits to go out
        # (one at a time)
        if st >= _CONNACK_WAIT and v[_RS] != _R_HOLD and v[_ACK] < 0:
            m |= _POLLIN
        if m != v[_PMASK]:
            p = v[_POLL]
            if not m:
                p.unregister(s)
            elif v[_PMASK]:
                p.modify(s, m)
            else:
                p.register(s, m)
            v[_PMASK] = m
        return m

    # ----- receiving -----
