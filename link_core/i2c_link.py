"""The I2C link layer (docs/PROTOCOL.md section 1), sans-I/O.

Block format (1.3)::

    byte 0  flags   MORE 0x01, HOLD 0x02, SYNC 0x04, FRESH 0x08, version 0x50
    byte 1  seq     sequence number of the chunk carried (0 when len = 0)
    byte 2  ack     seq of the last chunk accepted from the other side
    byte 3  len     payload length 0..120
    4..     payload
    last 2  CRC-16/CCITT-FALSE over bytes 0..3+len, big-endian

``LinkEndpoint(role)`` runs one side of the link: message queues,
chunking, stop-and-wait retransmission, HOLD flow control and the SYNC/FRESH
handshake. The board code moves blocks: it calls ``build_block()`` for the
block it sends in an exchange and ``on_block()`` with the block it got.

The ESP8266 bridge imports this module, and every function and class here
costs it RAM even frozen (docs/FIRMWARE.md "Memory budget"): the public flag
names (``MORE`` ...), the block codec for tools and tests (``crc16``,
``encode_block``, ``decode_block``, ``Block``) and the Initiator's
``PollPolicy`` are in ``link_core.i2c_tools``.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x
else:
    # MicroPython's compiler folds every const() itself: the name would only
    # cost the ESP8266 bridge a slot of this module's dict
    del const


from link_core.names import MAX_MESSAGE

# Flags (byte 0), private: each public name costs the ESP8266 bridge a slot of
# this module's dict. The public ones are link_core.i2c_tools' (the same values,
# a test holds them equal).
_MORE = const(0x01)
_HOLD = const(0x02)
_SYNC = const(0x04)
_FRESH = const(0x08)
_VERSION = const(0x50)
_VERSION_MASK = const(0xF0)

# Sizes (section 0)
HEADER = const(4)
CHUNK_MAX = const(120)
BLOCK_MAX = const(126)
# MAX_MESSAGE (1152) comes from link_core.names

# Bus layout (section 1.1); MEM_SIZE is in link_core.i2c_tools
I2C_ADDR = const(0x12)
MEM_INITIATOR = const(0x00)  # Initiator's block
MEM_RESPONDER = const(0x80)  # Responder's block

# The Initiator's timing defaults (sections 1.2, 1.5, 1.6) are in
# link_core.i2c_tools: underscored constants here stay out of the module's dict.

# Queue bounds (messages), LinkEndpoint's defaults
_TX_QUEUE = const(4)
_RX_QUEUE = const(4)

INITIATOR = "initiator"
RESPONDER = "responder"

_CRC_HI = (
    b"\x00\x10\x20\x30\x40\x50\x60\x70\x81\x91\xa1\xb1\xc1\xd1\xe1\xf1"
    b"\x12\x02\x32\x22\x52\x42\x72\x62\x93\x83\xb3\xa3\xd3\xc3\xf3\xe3"
    b"\x24\x34\x04\x14\x64\x74\x44\x54\xa5\xb5\x85\x95\xe5\xf5\xc5\xd5"
    b"\x36\x26\x16\x06\x76\x66\x56\x46\xb7\xa7\x97\x87\xf7\xe7\xd7\xc7"
    b"\x48\x58\x68\x78\x08\x18\x28\x38\xc9\xd9\xe9\xf9\x89\x99\xa9\xb9"
    b"\x5a\x4a\x7a\x6a\x1a\x0a\x3a\x2a\xdb\xcb\xfb\xeb\x9b\x8b\xbb\xab"
    b"\x6c\x7c\x4c\x5c\x2c\x3c\x0c\x1c\xed\xfd\xcd\xdd\xad\xbd\x8d\x9d"
    b"\x7e\x6e\x5e\x4e\x3e\x2e\x1e\x0e\xff\xef\xdf\xcf\xbf\xaf\x9f\x8f"
    b"\x91\x81\xb1\xa1\xd1\xc1\xf1\xe1\x10\x00\x30\x20\x50\x40\x70\x60"
    b"\x83\x93\xa3\xb3\xc3\xd3\xe3\xf3\x02\x12\x22\x32\x42\x52\x62\x72"
    b"\xb5\xa5\x95\x85\xf5\xe5\xd5\xc5\x34\x24\x14\x04\x74\x64\x54\x44"
    b"\xa7\xb7\x87\x97\xe7\xf7\xc7\xd7\x26\x36\x06\x16\x66\x76\x46\x56"
    b"\xd9\xc9\xf9\xe9\x99\x89\xb9\xa9\x58\x48\x78\x68\x18\x08\x38\x28"
    b"\xcb\xdb\xeb\xfb\x8b\x9b\xab\xbb\x4a\x5a\x6a\x7a\x0a\x1a\x2a\x3a"
    b"\xfd\xed\xdd\xcd\xbd\xad\x9d\x8d\x7c\x6c\x5c\x4c\x3c\x2c\x1c\x0c"
    b"\xef\xff\xcf\xdf\xaf\xbf\x8f\x9f\x6e\x7e\x4e\x5e\x2e\x3e\x0e\x1e"
)

_CRC_LO = (
    b"\x00\x21\x42\x63\x84\xa5\xc6\xe7\x08\x29\x4a\x6b\x8c\xad\xce\xef"
    b"\x31\x10\x73\x52\xb5\x94\xf7\xd6\x39\x18\x7b\x5a\xbd\x9c\xff\xde"
    b"\x62\x43\x20\x01\xe6\xc7\xa4\x85\x6a\x4b\x28\x09\xee\xcf\xac\x8d"
    b"\x53\x72\x11\x30\xd7\xf6\x95\xb4\x5b\x7a\x19\x38\xdf\xfe\x9d\xbc"
    b"\xc4\xe5\x86\xa7\x40\x61\x02\x23\xcc\xed\x8e\xaf\x48\x69\x0a\x2b"
    b"\xf5\xd4\xb7\x96\x71\x50\x33\x12\xfd\xdc\xbf\x9e\x79\x58\x3b\x1a"
    b"\xa6\x87\xe4\xc5\x22\x03\x60\x41\xae\x8f\xec\xcd\x2a\x0b\x68\x49"
    b"\x97\xb6\xd5\xf4\x13\x32\x51\x70\x9f\xbe\xdd\xfc\x1b\x3a\x59\x78"
    b"\x88\xa9\xca\xeb\x0c\x2d\x4e\x6f\x80\xa1\xc2\xe3\x04\x25\x46\x67"
    b"\xb9\x98\xfb\xda\x3d\x1c\x7f\x5e\xb1\x90\xf3\xd2\x35\x14\x77\x56"
    b"\xea\xcb\xa8\x89\x6e\x4f\x2c\x0d\xe2\xc3\xa0\x81\x66\x47\x24\x05"
    b"\xdb\xfa\x99\xb8\x5f\x7e\x1d\x3c\xd3\xf2\x91\xb0\x57\x76\x15\x34"
    b"\x4c\x6d\x0e\x2f\xc8\xe9\x8a\xab\x44\x65\x06\x27\xc0\xe1\x82\xa3"
    b"\x7d\x5c\x3f\x1e\xf9\xd8\xbb\x9a\x75\x54\x37\x16\xf1\xd0\xb3\x92"
    b"\x2e\x0f\x6c\x4d\xaa\x8b\xe8\xc9\x26\x07\x64\x45\xa2\x83\xe0\xc1"
    b"\x1f\x3e\x5d\x7c\x9b\xba\xd9\xf8\x17\x36\x55\x74\x93\xb2\xd1\xf0"
)


def _crc(data, start, end, crc):
    hi = _CRC_HI
    lo = _CRC_LO
    for i in range(start, end):
        j = (crc >> 8) ^ data[i]
        crc = (((crc & 0xFF) ^ hi[j]) << 8) | lo[j]
    return crc


def check_block(buf):
    """Payload length of the block at the start of ``buf``, or -1 if corrupt.

    ``buf`` is bytes-like (bytes, bytearray, memoryview) and may be longer
    than the block. Corrupt: shorter than 6 bytes, version nibble not 0x5,
    length over ``CHUNK_MAX``, truncated, or CRC mismatch.
    """
    n = len(buf)
    if n < 6 or buf[0] & _VERSION_MASK != _VERSION:
        return -1
    ln = buf[3]
    if ln > CHUNK_MAX or n < ln + 6:
        return -1
    e = HEADER + ln
    if _crc(buf, 0, e, 0xFFFF) != (buf[e] << 8) | buf[e + 1]:
        return -1
    return ln


# LinkEndpoint's state, packed because every instance attribute costs the
# ESP8266 a slot of the instance's dict (8 B; the table grows in steps of
# 2 to 17 slots): ints in one list, indexed by these, and private flags in
# one int. `synced`, `peer_fresh`, `peer_hold` and `syncs` stay attributes
# (the boards read them); a property would cost more than the slot it saves.
# Counters (link_core.i2c_tools.counters names them, in this order):
_C_BLOCKS_OUT = const(0)
_C_BLOCKS_OK = const(1)
_C_BLOCKS_BAD = const(2)
_C_BYTES_OUT = const(3)
_C_BYTES_IN = const(4)
_C_MESSAGES_OUT = const(5)
_C_MESSAGES_IN = const(6)
_C_TOO_LONG = const(7)
_C_DROPPED = const(8)
_C_PEER_REBOOTS = const(9)
_C_RESETS = const(10)
# Link state:
_S_TX_SEQ = const(11)  # seq of the chunk being sent
_S_TX_OFF = const(12)  # offset in the first queued message of that chunk
_S_TAIL_SENDS = const(13)  # times the message's last chunk went out
_S_LAST_ACC = const(14)  # seq of the last chunk accepted
_S_ASM_LEN = const(15)  # bytes of the message being reassembled in _asm
_S_TX_MAX = const(16)
_S_RX_MAX = const(17)
_N = const(18)
# Flags (LinkEndpoint._f):
_F_INITIATOR = const(0x01)
_F_SYNC_REPLY = const(0x02)  # Responder: answer SYNC (the last good block had SYNC)
_F_CHUNK_OUT = const(0x04)  # the current chunk went out, no ack for it yet
_F_DISCARD = const(0x08)  # the message being received is too long: dropped
_F_PEER_MORE = const(0x10)  # the peer's last good block had MORE
_F_SENT = const(0x20)  # the last block built carried payload
_F_MOVED = const(0x40)  # the last exchange carried payload either way
_F_LINK = const(0x7C)  # the flags reset(True) clears


class LinkEndpoint:
    """One side of the I2C link (PROTOCOL.md 1.3 to 1.6).

    ``LinkEndpoint(role, tx_queue=4, rx_queue=4)``; ``role`` is
    ``INITIATOR`` (``'initiator'``, the Pyboard) or ``RESPONDER``
    (``'responder'``, the ESP8266).

    Messages (bytes of 1 to ``MAX_MESSAGE``): ``queue_message(msg)`` adds one
    to the bounded outgoing queue (False when full), ``pop_message()`` takes
    the oldest complete received one (None when none). Each exchange:
    ``build_block()`` gives the block to send (calling it again gives the
    same bytes until ``on_block`` or the queues change; it only records that
    the chunk went out) and ``on_block(data)`` takes the block received
    (False if corrupt).

    Synchronisation: a new or ``reset()`` Initiator sends SYNC blocks (no
    payload) until a good block with SYNC comes back; then ``synced`` is
    True, ``syncs`` counts up, and ``sync_message`` (if set, e.g. the ``C``
    config message) is put ahead of everything queued. A Responder answers
    FRESH (no payload) until it gets a SYNC block; then it resets its link
    state and answers SYNC. An Initiator that sees FRESH while synced resets
    its link state and resyncs (``peer_reboots`` counts up).

    On every link reset the partial received message is dropped and the
    message being sent restarts from its first chunk, except when its last
    chunk was already sent: the peer may have it, so it is dropped
    (``dropped`` counts up) rather than risk a duplicate. (A last chunk sent
    only in the exchange a FRESH Responder answered cannot have arrived: that
    message restarts.)

    State: ``synced``, ``peer_fresh`` (Initiator: the last good block had
    FRESH), ``peer_hold`` (the peer's last good block had HOLD), ``syncs``,
    ``busy`` (poll fast), ``tx_pending``, ``rx_pending``, ``can_queue()``.
    ``link_core.i2c_tools.counters(ep)`` returns the counters as a dict
    (a method would cost the bridge RAM, and it never reads them): ``blocks_out``,
    ``blocks_ok``, ``blocks_bad``, ``bytes_out`` (payload bytes acknowledged
    by the peer), ``bytes_in`` (payload bytes accepted), ``messages_out``,
    ``messages_in``, ``too_long``, ``dropped``, ``syncs``, ``peer_reboots``,
    ``resets``.
    """

    def __init__(self, role, tx_queue=_TX_QUEUE, rx_queue=_RX_QUEUE):
        if role != INITIATOR and role != RESPONDER:
            raise ValueError("role " + repr(role) + " is not 'initiator' or 'responder'")
        if tx_queue < 1 or rx_queue < 1:
            raise ValueError("queue bounds must be at least 1")
        self._f = _F_INITIATOR if role == INITIATOR else 0
        n = self._n = [0] * _N
        n[_S_TX_MAX] = tx_queue
        n[_S_RX_MAX] = rx_queue
        self._txq = []
        self._rxq = []
        self._asm = bytearray(MAX_MESSAGE)
        self._out = None  # build_block()'s own buffer, made on its first use without buf
        self.sync_message = None
        self.synced = False
        self.peer_fresh = False
        self.peer_hold = False
        self.syncs = 0
        self.reset(True)  # sets the per-link state

    # -- state -------------------------------------------------------------

    def reset(self, _link=False):
        """Forget the link state and go back to unsynchronised.

        Initiator: call after a reset pulse (or any failure of 1.2); it then
        sends SYNC blocks. Responder: back to answering FRESH. Whole queued
        and received messages are kept (see the class doc for the message
        being sent). ``_link=True`` (internal; one method fewer costs the
        bridge less RAM): only the link state, back to 'just synchronised'
        (1.6 step 2).
        """
        n = self._n
        if not _link:
            self.synced = False
            self.peer_fresh = False
            self._f &= ~_F_SYNC_REPLY
            n[_C_RESETS] += 1
        if self._txq and n[_S_TAIL_SENDS]:
            self._txq.pop(0)
            n[_C_DROPPED] += 1
        n[_S_TX_SEQ] = 1
        n[_S_TX_OFF] = 0
        n[_S_TAIL_SENDS] = 0
        n[_S_LAST_ACC] = 0
        n[_S_ASM_LEN] = 0
        self._f &= ~_F_LINK
        self.peer_hold = False

    def can_queue(self):
        """True when ``queue_message`` would accept a message."""
        return len(self._txq) < self._n[_S_TX_MAX]

    @property
    def tx_pending(self):
        """Messages queued to send, including the one being sent."""
        return len(self._txq)

    @property
    def rx_pending(self):
        """Complete received messages waiting for ``pop_message``."""
        return len(self._rxq)

    @property
    def busy(self):
        """True when the Initiator should poll fast (1.5).

        The last exchange carried payload either way, a message waits to be
        sent (and the peer is synced and not holding), or the peer's last
        block had MORE.
        """
        return bool(self._f & (_F_MOVED | _F_PEER_MORE)) or (
            self.synced and bool(self._txq) and not self.peer_hold
        )

    # -- messages ----------------------------------------------------------

    def queue_message(self, msg, first=False):
        """Queue one link message to send. False (nothing queued) when the queue is full.

        ``msg``: bytes-like, 1 to ``MAX_MESSAGE`` bytes, else ``ValueError``.
        ``first=True`` puts it ahead of every queued message that has not
        started to go out.
        """
        n = len(msg)
        if n == 0 or n > MAX_MESSAGE:
            raise ValueError(
                "link message of " + str(n) + " bytes: must be 1 to MAX_MESSAGE = 1152"
            )
        q = self._txq
        if len(q) >= self._n[_S_TX_MAX]:
            return False
        if not isinstance(msg, bytes):
            msg = bytes(msg)
        if first:
            started = self._n[_S_TX_OFF] > 0 or self._f & _F_CHUNK_OUT
            q.insert(1 if q and started else 0, msg)
        else:
            q.append(msg)
        return True

    def pop_message(self):
        """The oldest complete received message (bytes), or None."""
        if self._rxq:
            return self._rxq.pop(0)
        return None

    # -- blocks ------------------------------------------------------------

    def build_block(self, buf=None):
        """The block to send in the next exchange.

        Without ``buf`` returns it as bytes. With ``buf`` (a writable
        bytearray or memoryview of at least ``BLOCK_MAX`` bytes, e.g. a view
        of the I2C memory) writes it at ``buf[0]`` and returns its length.
        It carries the current chunk (unless there is none, the peer holds,
        or the link is not synchronised), ``ack`` = last chunk accepted, HOLD
        when the received-message queue is full, SYNC (Initiator while
        unsynchronised; Responder answering a SYNC block) or FRESH
        (Responder not synchronised since boot or ``reset()``).
        """
        if buf is None:
            out = self._out
            if out is None:  # boards pass their own buffer: this one is never made
                out = self._out = bytearray(BLOCK_MAX)
        else:
            if len(buf) < BLOCK_MAX:
                raise ValueError("build_block buffer is shorter than BLOCK_MAX = 126")
            out = buf
        st = self._n
        f = self._f
        flags = _VERSION
        if len(self._rxq) >= st[_S_RX_MAX]:
            flags |= _HOLD
        n = 0
        seq = 0
        if not self.synced:
            flags |= _SYNC if f & _F_INITIATOR else _FRESH
        elif f & _F_SYNC_REPLY:
            flags |= _SYNC
        elif self._txq and not self.peer_hold:
            msg = self._txq[0]
            off = st[_S_TX_OFF]
            n = len(msg) - off
            if n > CHUNK_MAX:
                n = CHUNK_MAX
                flags |= _MORE
            else:
                st[_S_TAIL_SENDS] += 1
            seq = st[_S_TX_SEQ]
            out[HEADER : HEADER + n] = memoryview(msg)[off : off + n]
            f |= _F_CHUNK_OUT
        out[0] = flags
        out[1] = seq
        out[2] = st[_S_LAST_ACC]
        out[3] = n
        e = HEADER + n
        crc = _crc(out, 0, e, 0xFFFF)
        out[e] = crc >> 8
        out[e + 1] = crc & 0xFF
        self._f = f | _F_SENT if n else f & ~_F_SENT
        st[_C_BLOCKS_OUT] += 1
        if buf is None:
            return bytes(memoryview(out)[: e + 2])
        return e + 2

    def on_block(self, data):
        """Take the block received in an exchange. False if it was corrupt (ignored).

        ``data``: bytes, bytearray or memoryview, possibly longer than the
        block. A good block's ack may complete the chunk being sent; its
        chunk is accepted if it is the next in sequence and the received
        queue has room; a completed message goes to ``pop_message``.
        MemoryError (no room for a completed message) leaves that chunk
        unaccepted: the next
        ``build_block`` does not acknowledge it, the peer sends it again; the
        rest of the block (its ack) has been taken.
        """
        ln = check_block(data)
        st = self._n
        if ln < 0:
            st[_C_BLOCKS_BAD] += 1
            return False
        st[_C_BLOCKS_OK] += 1
        flags = data[0]
        if self._f & _F_INITIATOR:
            if not self.synced:
                self.peer_fresh = bool(flags & _FRESH)
                if flags & _SYNC:
                    self.synced = True
                    self.peer_fresh = False
                    self.syncs += 1
                    self.peer_hold = bool(flags & _HOLD)
                    m = self.sync_message
                    if m is not None:  # ahead of everything, and only once
                        q = self._txq
                        i = 0
                        while i < len(q):
                            if q[i] is m:
                                q.pop(i)
                            else:
                                i += 1
                        q.insert(0, m)
                return True
            if flags & _FRESH:
                if st[_S_TAIL_SENDS] == 1:
                    # Its only copy went to this FRESH Responder, which
                    # accepts nothing: it cannot have arrived, keep it.
                    st[_S_TAIL_SENDS] = 0
                self.peer_fresh = True
                st[_C_PEER_REBOOTS] += 1
                self.synced = False
                self.reset(True)
                return True
            if flags & _SYNC:
                # A repeated answer to our last SYNC (our next block was
                # corrupt at the Responder): no information in it.
                return True
        else:
            if flags & _SYNC:
                self.reset(True)
                self.synced = True
                self._f |= _F_SYNC_REPLY
                self.syncs += 1
                self.peer_hold = bool(flags & _HOLD)
                return True
            if not self.synced:
                return True
        f = self._f & ~(_F_SYNC_REPLY | _F_PEER_MORE | _F_MOVED)
        self.peer_hold = bool(flags & _HOLD)
        if flags & _MORE and ln > 0:
            f |= _F_PEER_MORE
        if f & _F_SENT or ln > 0:
            f |= _F_MOVED
        if f & _F_CHUNK_OUT and data[2] == st[_S_TX_SEQ]:
            # the chunk went through: on to the next, or the message is out
            f &= ~_F_CHUNK_OUT
            msg = self._txq[0]
            off = st[_S_TX_OFF]
            n = len(msg) - off
            if n > CHUNK_MAX:
                n = CHUNK_MAX
            off += n
            st[_C_BYTES_OUT] += n
            st[_S_TX_SEQ] = (st[_S_TX_SEQ] + 1) & 0xFF
            if off >= len(msg):
                self._txq.pop(0)
                off = 0
                st[_S_TAIL_SENDS] = 0
                st[_C_MESSAGES_OUT] += 1
            st[_S_TX_OFF] = off
        self._f = f
        if not ln:
            return True
        seq = data[1]
        if seq != (st[_S_LAST_ACC] + 1) & 0xFF or len(self._rxq) >= st[_S_RX_MAX]:
            return True
        # Accept the chunk (inline, as a method costs the bridge RAM). Every
        # allocation (the finished message, the queue's growth) comes BEFORE
        # the chunk is committed: if one fails (MemoryError on a fragmented
        # ESP8266 heap) the chunk stays unacknowledged and the peer sends it
        # again, so nothing is lost. The caller counts the error.
        more = flags & _MORE
        a = st[_S_ASM_LEN]
        discard = f & _F_DISCARD or a + ln > MAX_MESSAGE
        if not discard:
            mv = data if isinstance(data, memoryview) else memoryview(data)
            self._asm[a : a + ln] = mv[HEADER : HEADER + ln]
            if not more:
                self._rxq.append(bytes(memoryview(self._asm)[: a + ln]))
                st[_C_MESSAGES_IN] += 1
        st[_S_LAST_ACC] = seq
        st[_C_BYTES_IN] += ln
        if more:
            if discard:
                self._f = f | _F_DISCARD
            else:
                st[_S_ASM_LEN] = a + ln
            return True
        if discard:
            st[_C_TOO_LONG] += 1
        self._f = f & ~_F_DISCARD
        st[_S_ASM_LEN] = 0
        return True
