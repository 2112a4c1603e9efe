"""End-to-end reliability: Sender and Receiver (docs/PROTOCOL.md 3.1, 3.2).

Sans-I/O: the caller publishes the bytes these objects return and passes
received frames (as decoded by ``frames.decode``) and times in.

Sender::

    s = Sender(session, window=8, timeout_ms=1500)
    s.can_send() -> bool                  # window not full
    s.idle() -> bool                      # nothing unacknowledged
    s.send(line, now_ms) -> bytes         # qos frame; ValueError if window full
    s.unreliable(line) -> bytes           # 'u' frame
    s.on_ack(session, msg_id) -> bool     # True if it acked something outstanding
    s.due(now_ms, peer_up=True) -> list   # frames to retransmit now
    s.resend_all(now_ms) -> list          # all unacked frames, backoff reset
    s.next_deadline() -> int | None       # earliest retransmission time
    s.in_flight -> int
    s.snapshot() -> dict / Sender.restore(snap, now_ms=None) -> Sender

Receiver::

    r = Receiver(window=16)              # up to MAX_SESSIONS peer sessions
    r.on_frame(frame_tuple) -> (ack_or_None, lines)
    r.session, r.expected                 # most recently active session, its next id
    r.sessions() -> [[session, expected], ...]
    r.buffered -> int
    r.snapshot() -> dict / r.restore(snap)

``may_write(reachable, sender, qos, wait)``: write admission (3.1), for the
ends that write lines (the Pyboard, the server library, the device double);
here rather than in ``link_core.liveness``, which the ESP8266 bridge imports.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from link_core.clock import ticks_add, ticks_diff
from link_core.frames import (
    QOS,
    UNRELIABLE,
    check_session,
    encode_ack,
    encode_unreliable,
    qos_raw,
)
from link_core.lines import _line_bytes

TX_WINDOW_PYBOARD = const(8)
TX_WINDOW_SERVER = const(16)
RX_WINDOW = const(16)
MAX_SESSIONS = const(4)  # peer sessions a Receiver tracks at once
BACKOFF_MAX = const(8)  # retransmission wait grows up to BACKOFF_MAX * timeout_ms

_MASK = const(0xFFFF)
_HALF = const(0x8000)

# Sender entry fields: [id, line bytes, deadline or None, current wait]
_ID = const(0)
_LINE = const(1)
_DEADLINE = const(2)
_WAIT = const(3)

# Receiver session entry fields: [session, next expected id, {id: line}]
_S_SESSION = const(0)
_S_EXPECTED = const(1)
_S_BUF = const(2)


def id_after(a, b):
    """True when message id ``a`` is after ``b``: (a - b) mod 65536 in 1..32767."""
    d = (a - b) & _MASK
    return 0 < d < _HALF


def may_write(reachable, sender, qos, wait):
    """True when a ``write(line, qos, wait)`` may start now (PROTOCOL.md 3.1).

    ``reachable``: the peer application is reachable (the device's ``U``; on
    the server: the device online and the broker connected). ``sender``: the
    link_core ``Sender`` (``can_send()``: the window has room; ``idle()``:
    nothing unacknowledged). A qos line needs window room; with ``wait`` also
    no unacknowledged qos line. Every write waits while the peer is unreachable.
    """
    if not reachable:
        return False
    if not qos:
        return True
    return sender.can_send() and (not wait or sender.idle())


class Sender:
    """Sending half of one end-to-end connection (PROTOCOL.md 3.1).

    ``Sender(session, window=8, timeout_ms=1500)``: ``session`` is 8 hex
    digits (``frames.new_session``); ``window`` the most unacknowledged qos
    frames (``TX_WINDOW``, 8 on the Pyboard, 16 on the server, never more than
    the peer's ``RX_WINDOW``); ``timeout_ms`` the first retransmission wait.

    The first qos line gets id 1; ids wrap from 65535 to 0. Every frame sent or
    retransmitted carries the current base (oldest unacknowledged id).
    """

    def __init__(self, session, window=TX_WINDOW_PYBOARD, timeout_ms=1500):
        self.session = check_session(session)
        self._sb = session.encode()
        if not isinstance(window, int) or window < 1 or window > RX_WINDOW:
            raise ValueError("window " + repr(window) + " is not in 1..16 (the peer's RX_WINDOW)")
        if not isinstance(timeout_ms, int) or timeout_ms < 1:
            raise ValueError("timeout_ms " + repr(timeout_ms) + " is not a positive int")
        self.window = window
        self.timeout_ms = timeout_ms
        self.next_id = 1
        self._pending = []  # entries in id order
        self.sent = 0  # qos frames sent (first transmissions)
        self.retransmits = 0

    @property
    def in_flight(self):
        """Number of unacknowledged qos frames."""
        return len(self._pending)

    @property
    def base(self):
        """Oldest unacknowledged id, or the next id when nothing is outstanding."""
        if self._pending:
            return self._pending[0][_ID]
        return self.next_id

    def can_send(self):
        """True when the window has room for another qos line."""
        return len(self._pending) < self.window

    def idle(self):
        """True when no qos frame is unacknowledged (``wait=True`` waits for this)."""
        return not self._pending

    def unacked_ids(self):
        """List of the unacknowledged ids, oldest first."""
        return [e[_ID] for e in self._pending]

    def _frame(self, e):
        return qos_raw(self._sb, e[_ID], self._pending[0][_ID], e[_LINE])

    def send(self, line, now_ms):
        """Assign the next id to ``line`` and return its ``q`` frame to publish.

        The frame is kept until acknowledged and retransmitted by ``due``.
        ``ValueError`` if the window is full (check ``can_send`` first) or
        the line is invalid (``lines.check_line``); neither uses up an id.
        """
        if len(self._pending) >= self.window:
            raise ValueError("send window full: " + str(self.window) + " qos frames unacknowledged")
        data = _line_bytes(line, True)[0]
        msg_id = self.next_id
        self.next_id = (msg_id + 1) & _MASK
        e = [msg_id, data, ticks_add(now_ms, self.timeout_ms), self.timeout_ms]
        self._pending.append(e)
        self.sent += 1
        return self._frame(e)

    def unreliable(self, line):
        """Return the ``u`` frame for a non-qos line (sent once, never kept)."""
        return encode_unreliable(self.session, line)

    def on_ack(self, session, msg_id):
        """Apply an ``a`` frame. True if it acknowledged an outstanding id.

        Acks for another session, or for ids not outstanding, are ignored.
        """
        if session != self.session:
            return False
        p = self._pending
        for i in range(len(p)):
            if p[i][_ID] == msg_id:
                p.pop(i)
                return True
        return False

    def due(self, now_ms, peer_up=True):
        """Frames to retransmit at ``now_ms``, in id order.

        A frame is due when its wait (``timeout_ms``, doubled at each
        retransmission up to 8 x ``timeout_ms``) has passed since it was last
        sent. Returns ``[]`` and changes nothing while ``peer_up`` is False.
        """
        out = []
        if not peer_up or not self._pending:
            return out
        cap = self.timeout_ms * BACKOFF_MAX
        for e in self._pending:
            dl = e[_DEADLINE]
            if dl is None or ticks_diff(now_ms, dl) >= 0:
                if dl is not None:
                    w = e[_WAIT] * 2
                    e[_WAIT] = w if w < cap else cap
                e[_DEADLINE] = ticks_add(now_ms, e[_WAIT])
                out.append(self._frame(e))
                self.retransmits += 1
        return out

    def resend_all(self, now_ms):
        """Every unacknowledged frame, in id order; waits reset to ``timeout_ms``.

        Call when the peer becomes reachable again.
        """
        out = []
        for e in self._pending:
            e[_WAIT] = self.timeout_ms
            e[_DEADLINE] = ticks_add(now_ms, self.timeout_ms)
            out.append(self._frame(e))
            self.retransmits += 1
        return out

    def next_deadline(self):
        """Earliest retransmission time (a tick value), or None.

        Compare it with ``clock.ticks_diff``. Frames restored without
        ``now_ms`` have no deadline until ``due``/``resend_all`` sends them:
        ``restore`` documents this.
        """
        best = None
        for e in self._pending:
            dl = e[_DEADLINE]
            if dl is not None and (best is None or ticks_diff(dl, best) < 0):
                best = dl
        return best

    def snapshot(self):
        """JSON-serialisable dict: session, next id, window, timeout, unacked lines."""
        return {
            "session": self.session,
            "next_id": self.next_id,
            "window": self.window,
            "timeout_ms": self.timeout_ms,
            "unacked": [[e[_ID], e[_LINE].decode("utf-8")] for e in self._pending],
        }

    @classmethod
    def restore(cls, snap, now_ms=None):
        """Sender continuing the session of ``snapshot()`` output.

        With ``now_ms`` the restored frames are due at once (``next_deadline()
        == now_ms``). Without it they have no deadline: the first ``due()`` or
        ``resend_all()`` sends them. ``ValueError`` on a malformed snapshot.
        """
        try:
            s = cls(snap["session"], snap["window"], snap["timeout_ms"])
            next_id = snap["next_id"]
            unacked = snap["unacked"]
            ok = isinstance(next_id, int) and 0 <= next_id <= _MASK
            ok = ok and isinstance(unacked, list) and len(unacked) <= s.window
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise ValueError("malformed Sender snapshot " + repr(snap)[:80])
        prev = None
        for item in unacked:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not isinstance(item[0], int)
                or not 0 <= item[0] <= _MASK
                or (prev is not None and not id_after(item[0], prev))
                or not id_after(next_id, item[0])
            ):
                raise ValueError("malformed Sender snapshot entry " + repr(item)[:80])
            prev = item[0]
            dl = None if now_ms is None else ticks_add(now_ms, 0)
            s._pending.append([item[0], _line_bytes(item[1], True)[0], dl, s.timeout_ms])
        s.next_id = next_id
        return s


class Receiver:
    """Receiving half of the end-to-end connection with one peer (PROTOCOL.md 3.2).

    ``Receiver(window=16)``. ``on_frame`` takes a tuple from
    ``frames.decode`` and returns ``(ack, lines)``: ``ack`` is the ``a`` frame
    (bytes) to publish or None, ``lines`` the str lines now delivered, in
    order (at most ``window + 1`` per call). ``a`` and ``h`` frames are not
    the Receiver's business: they return ``(None, [])``.

    Several sender sessions of the peer side may be live at once (a server
    application and a short-lived ``pblink send``; a late frame of a session
    from before a restart). The Receiver tracks up to ``MAX_SESSIONS`` of them,
    each its own ordered stream with its own next expected id. A ``q`` frame
    of a session not tracked adopts it at the frame's ``base``; when the table
    is full, the least recently active session is evicted first. The reorder
    buffer holds at most ``window`` lines across all sessions, so memory stays
    bounded; a session's lines never exceed ``window`` ids past its expected.

    A ``q`` frame is acknowledged when its line is delivered by this call or
    was delivered before (a duplicate). A frame held in the reorder buffer
    is not acknowledged: the sender resends it (with a fresh base) and that
    copy is acknowledged once the gap before it is filled. So an ack always
    means "delivered", and a receiver that lost its state can never be left
    holding acknowledged lines behind a gap nobody will fill. For the same
    reason buffered lines may be dropped at any time without loss: those of
    an evicted session, and (when the buffer is full) those of another,
    less recently active session, to make room. Their senders resend them.

    Attributes: ``session`` and ``expected`` (the most recently active
    session, None before the first ``q`` frame, and its next expected id),
    ``buffered`` (lines held for reordering, all sessions); counters
    ``delivered``, ``duplicates``, ``dropped`` (beyond the window, or a
    buffered line dropped by an eviction or to make room), ``adopted``
    (sessions adopted, including re-adoptions after an eviction).
    """

    def __init__(self, window=RX_WINDOW):
        if not isinstance(window, int) or window < 1 or window > 1024:
            raise ValueError("window " + repr(window) + " is not in 1..1024")
        self.window = window
        self._tab = []  # [session, expected, {id: line}], least recently active first
        self._nbuf = 0  # lines buffered, all sessions
        self.delivered = 0
        self.duplicates = 0
        self.dropped = 0
        self.adopted = 0

    @property
    def session(self):
        """The most recently active session (last ``q`` frame), or None."""
        t = self._tab
        return t[-1][_S_SESSION] if t else None

    @property
    def expected(self):
        """Next expected id of the most recently active session (0 if none)."""
        t = self._tab
        return t[-1][_S_EXPECTED] if t else 0

    @property
    def buffered(self):
        """Number of lines held in the reorder buffer, all sessions."""
        return self._nbuf

    def sessions(self):
        """The tracked sessions as ``[session, expected]`` pairs, least recently active first."""
        return [[e[_S_SESSION], e[_S_EXPECTED]] for e in self._tab]

    def _find(self, session):
        t = self._tab
        i = len(t) - 1
        while i >= 0:
            if t[i][_S_SESSION] == session:
                return i
            i -= 1
        return -1

    def _make_room(self, keep):
        # Drop the furthest-ahead line of the least recently active other
        # session holding any. Never acked, so its sender resends it.
        for e in self._tab:
            buf = e[_S_BUF]
            if e is keep or not buf:
                continue
            exp = e[_S_EXPECTED]
            far = None
            fd = -1
            for k in buf:
                d = (k - exp) & _MASK
                if d > fd:
                    far = k
                    fd = d
            del buf[far]
            self._nbuf -= 1
            self.dropped += 1
            return True
        return False

    def on_frame(self, frame):
        """Apply one decoded frame; return ``(ack_bytes_or_None, [lines])``."""
        kind, session, msg_id, base, line = frame
        if kind == UNRELIABLE:
            self.delivered += 1
            return None, [line]
        if kind != QOS:
            return None, []
        t = self._tab
        i = self._find(session)
        if i < 0:
            if len(t) >= MAX_SESSIONS:
                old = t.pop(0)  # least recently active: its buffered lines are resent
                n = len(old[_S_BUF])
                self._nbuf -= n
                self.dropped += n
            e = [session, base, {}]
            t.append(e)
            self.adopted += 1
        else:
            e = t[i]
            if i != len(t) - 1:
                t.pop(i)
                t.append(e)
        buf = e[_S_BUF]
        lines = []
        exp = e[_S_EXPECTED]
        n = len(buf)
        skip = (base - exp) & _MASK
        if 0 < skip < _HALF:
            # The receiver lost state: deliver buffered lines before base, in order.
            if buf:
                keys = [k for k in buf if ((k - exp) & _MASK) < skip]
                keys.sort(key=lambda k: (k - exp) & _MASK)
                for k in keys:
                    lines.append(buf.pop(k))
            exp = base
            while exp in buf:
                lines.append(buf.pop(exp))
                exp = (exp + 1) & _MASK
        d = (msg_id - exp) & _MASK
        if d == 0:
            lines.append(line)
            exp = (exp + 1) & _MASK
            while exp in buf:
                lines.append(buf.pop(exp))
                exp = (exp + 1) & _MASK
        e[_S_EXPECTED] = exp
        self._nbuf -= n - len(buf)
        self.delivered += len(lines)
        if d == 0:
            return encode_ack(session, msg_id), lines
        if d > _HALF:  # before expected: a duplicate, delivered before
            self.duplicates += 1
            return encode_ack(session, msg_id), lines
        # After expected: buffer it if within the window. Not acked until
        # delivered, so an acknowledged line is always a delivered line and
        # the sender keeps (and resends, with a fresh base) what we hold.
        if d > self.window:  # beyond the window, or exactly half way round
            self.dropped += 1
        elif msg_id in buf:
            self.duplicates += 1
        elif self._nbuf < self.window or self._make_room(e):
            buf[msg_id] = line
            self._nbuf += 1
        else:  # cannot happen: this session alone holds fewer than window lines
            self.dropped += 1
        return None, lines

    def snapshot(self):
        """JSON-serialisable dict: window and the tracked sessions.

        ``{"window": w, "sessions": [[session, expected, [[id, line], ...]], ...]}``,
        least recently active session first.
        """
        return {
            "window": self.window,
            "sessions": [
                [e[_S_SESSION], e[_S_EXPECTED], [[k, e[_S_BUF][k]] for k in e[_S_BUF]]]
                for e in self._tab
            ],
        }

    def _entry(self, session, expected, buffer):
        # Validate one session's state; return its table entry.
        ok = isinstance(expected, int) and not isinstance(expected, bool)
        if not ok or not 0 <= expected <= _MASK:
            raise ValueError("malformed Receiver snapshot: expected " + repr(expected)[:20])
        check_session(session)
        if not isinstance(buffer, list):
            raise ValueError("malformed Receiver snapshot: buffer " + repr(buffer)[:40])
        buf = {}
        for item in buffer:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not isinstance(item[0], int)
                or not 0 < ((item[0] - expected) & _MASK) <= self.window
                or not isinstance(item[1], str)
            ):
                raise ValueError("malformed Receiver snapshot entry " + repr(item)[:80])
            buf[item[0]] = item[1]
        return [session, expected, buf]

    def restore(self, snap):
        """Replace this Receiver's state by ``snapshot()`` output (``ValueError`` if malformed).

        Only the ``MAX_SESSIONS`` most recently active sessions are kept; the
        lines they buffer must fit in ``window`` in total.
        """
        tab = []
        ok = True
        try:
            items = snap["sessions"]
            if not isinstance(items, list):
                raise TypeError
            for item in items[len(items) - MAX_SESSIONS if len(items) > MAX_SESSIONS else 0 :]:
                if not isinstance(item, list) or len(item) != 3:
                    raise TypeError
                tab.append(self._entry(item[0], item[1], item[2]))
        except (KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            raise ValueError("malformed Receiver snapshot " + repr(snap)[:80])
        n = 0
        for i in range(len(tab)):
            for j in range(i):
                if tab[j][_S_SESSION] == tab[i][_S_SESSION]:
                    raise ValueError("malformed Receiver snapshot: session twice")
            n += len(tab[i][_S_BUF])
        if n > self.window:
            raise ValueError("malformed Receiver snapshot: more than window lines buffered")
        self._tab = tab
        self._nbuf = n
