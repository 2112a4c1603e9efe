"""The I2C link's parts the ESP8266 bridge does not use (docs/PROTOCOL.md 1.3, 1.5).

The flags ``MORE``, ``HOLD``, ``SYNC``, ``FRESH``, ``VERSION`` and
``crc16``, ``encode_block``, ``decode_block`` and ``Block``: the block codec
for tools, tests and test vectors (the boards build and check blocks in
place with ``link_core.i2c_link.LinkEndpoint``). ``PollPolicy``: when the
Initiator (the Pyboard) starts its next exchange. Apart from
``link_core.i2c_link`` so that the bridge does not hold them in RAM
(docs/FIRMWARE.md "Memory budget").
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from link_core.clock import ticks_diff
from link_core.i2c_link import CHUNK_MAX, HEADER, _crc, check_block

# Block flags (byte 0): link_core.i2c_link keeps its own private (_MORE, ...),
# as a public name costs the ESP8266 bridge RAM; a test holds them equal
MORE = const(0x01)
HOLD = const(0x02)
SYNC = const(0x04)
FRESH = const(0x08)
VERSION = const(0x50)  # the version nibble, 0x5

# The Initiator's side of the bus layout (section 1.1): its target memory
MEM_SIZE = const(256)

# Timing defaults, ms (sections 1.2, 1.5, 1.6): the Initiator's; here, not in
# link_core.i2c_link, so that the bridge does not hold them in RAM
ACTIVE_POLL_MS = const(1)
IDLE_POLL_MS = const(10)
IDLE_AFTER_MS = const(200)
EXCHANGE_TIMEOUT_MS = const(1000)
KEEPALIVE_TIMEOUT_MS = const(4000)
RESET_PULSE_MS = const(200)
BOOT_WAIT_MS = const(1000)
SYNC_RETRY_MS = const(100)
SYNC_TIMEOUT_MS = const(10000)


# LinkEndpoint's counters in the order of its list (link_core.i2c_link's
# private _C_BLOCKS_OUT ... _C_RESETS); `syncs` is an attribute of its own
_COUNTERS = ("blocks_out", "blocks_ok", "blocks_bad", "bytes_out", "bytes_in", "messages_out",
             "messages_in", "too_long", "dropped", "peer_reboots", "resets")


def counters(ep):
    """The counters of ``ep`` (a ``LinkEndpoint``) as a dict, for logs and tests.

    Keys: ``blocks_out``, ``blocks_ok``, ``blocks_bad``, ``bytes_out`` (payload
    bytes acknowledged by the peer), ``bytes_in`` (payload bytes accepted),
    ``messages_out``, ``messages_in``, ``too_long``, ``dropped``, ``syncs``,
    ``peer_reboots``, ``resets``. Here, not a method: the bridge never reads them.
    """
    n = ep._n
    d = {"syncs": ep.syncs}
    for i in range(len(_COUNTERS)):
        d[_COUNTERS[i]] = n[i]
    return d


def crc16(data, crc=0xFFFF):
    """CRC-16/CCITT-FALSE (poly 0x1021, no reflection, no final xor) of ``data``.

    Pass a previous result as ``crc`` to continue over more data.
    ``crc16(b"123456789") == 0x29B1``.
    """
    return _crc(data, 0, len(data), crc)


def encode_block(flags, seq, ack, payload=b"", buf=None):
    """Build one block.

    ``flags``: any of MORE, HOLD, SYNC, FRESH (the version nibble is added).
    Returns bytes, or with ``buf`` (writable, at least 6 + len(payload)
    bytes) writes the block at ``buf[0]`` and returns its length.
    """
    n = len(payload)
    if n > CHUNK_MAX:
        raise ValueError("payload of " + str(n) + " bytes exceeds CHUNK_MAX = 120")
    if not 0 <= seq <= 255 or not 0 <= ack <= 255:
        raise ValueError("seq " + repr(seq) + " / ack " + repr(ack) + " not in 0..255")
    out = bytearray(HEADER + n + 2) if buf is None else buf
    out[0] = VERSION | (flags & 0x0F)
    out[1] = seq
    out[2] = ack
    out[3] = n
    if n:
        out[HEADER : HEADER + n] = payload
    crc = _crc(out, 0, HEADER + n, 0xFFFF)
    out[HEADER + n] = crc >> 8
    out[HEADER + n + 1] = crc & 0xFF
    if buf is None:
        return bytes(out)
    return HEADER + n + 2


class Block:
    """A decoded block: ``flags`` (the whole byte), ``seq``, ``ack``, ``payload`` (bytes).

    Properties ``more``, ``hold``, ``sync``, ``fresh`` test the flag bits.
    """

    def __init__(self, flags, seq, ack, payload):
        self.flags = flags
        self.seq = seq
        self.ack = ack
        self.payload = payload

    @property
    def more(self):
        return bool(self.flags & MORE)

    @property
    def hold(self):
        return bool(self.flags & HOLD)

    @property
    def sync(self):
        return bool(self.flags & SYNC)

    @property
    def fresh(self):
        return bool(self.flags & FRESH)

    def __repr__(self):
        return (
            "Block(flags="
            + hex(self.flags)
            + ", seq="
            + str(self.seq)
            + ", ack="
            + str(self.ack)
            + ", payload="
            + repr(self.payload)
            + ")"
        )


def decode_block(buf):
    """``Block`` for the block at the start of ``buf``, or None if it is corrupt.

    ``buf``: bytes, bytearray or memoryview; bytes after the block are ignored.
    """
    ln = check_block(buf)
    if ln < 0:
        return None
    return Block(buf[0], buf[1], buf[2], bytes(buf[HEADER : HEADER + ln]))


class PollPolicy:
    """When the Initiator starts the next exchange (PROTOCOL.md 1.5).

    ``PollPolicy(active_poll_ms=1, idle_poll_ms=10, idle_after_ms=200)``.
    After each exchange call ``delay_ms(now_ms, moved)`` with
    ``moved = endpoint.busy``; it returns how many ms to wait before the next
    poll: ``active_poll_ms`` while traffic flows and for ``idle_after_ms``
    after the last traffic, then ``idle_poll_ms``. ``kick(now_ms)`` records
    traffic without an exchange (e.g. the application queued a message).
    """

    def __init__(
        self,
        active_poll_ms=ACTIVE_POLL_MS,
        idle_poll_ms=IDLE_POLL_MS,
        idle_after_ms=IDLE_AFTER_MS,
    ):
        self.active_poll_ms = active_poll_ms
        self.idle_poll_ms = idle_poll_ms
        self.idle_after_ms = idle_after_ms
        self._last = None

    def kick(self, now_ms):
        """Record traffic at ``now_ms``: poll fast for the next ``idle_after_ms``."""
        self._last = now_ms

    def delay_ms(self, now_ms, moved):
        """Milliseconds to wait before the next poll."""
        if moved:
            self._last = now_ms
            return self.active_poll_ms
        if self._last is not None:
            if ticks_diff(now_ms, self._last) < self.idle_after_ms:
                return self.active_poll_ms
            self._last = None
        return self.idle_poll_ms
