"""End-to-end frame codec (docs/PROTOCOL.md section 3).

Frames are UTF-8 text, fields separated by ``|``, the line last::

    q|<session>|<id>|<base>|<line>     qos data
    u|<session>|<line>                 non-qos data
    a|<session>|<id>                   ack
    h                                  heartbeat

``decode`` returns a ``Frame``, the named tuple ``(kind, session, msg_id,
base, line)`` with ``None`` in the fields a kind does not have, and raises
``ValueError`` on anything malformed. The types are in ``frames.pyi``.
"""

import struct
from collections import namedtuple

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from link_core.lines import _line_bytes
from link_core.names import _show

QOS = "q"
UNRELIABLE = "u"
ACK = "a"
HB = "h"
HEARTBEAT = b"h"

ID_MOD = const(65536)
ID_MASK = const(0xFFFF)
SESSION_LEN = const(8)

_HEX = b"0123456789abcdef"

# A decoded frame; a tuple, so ``kind, session, msg_id, base, line = frame`` works too.
Frame = namedtuple("Frame", ("kind", "session", "msg_id", "base", "line"))


def new_session(random4):
    """Session string (8 lowercase hex digits) from 4 random bytes."""
    if len(random4) != 4:
        raise ValueError("new_session needs 4 random bytes, got " + _show(random4))
    v = struct.unpack(">I", bytes(random4))[0]
    return f"{v:08x}"


def _session_ok(s):
    if len(s) != SESSION_LEN:
        return False
    for c in s:
        if c not in _HEX:
            return False
    return True


def check_session(session):
    """Return ``session`` (str) if it is 8 lowercase hex digits, else ``ValueError``."""
    if not isinstance(session, str) or not _session_ok(session.encode()):
        raise ValueError("session " + _show(session) + " is not 8 lowercase hex digits")
    return session


def _check_id(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > ID_MASK:
        raise ValueError(name + " " + _show(value) + " is not an int in 0..65535")
    return value


def encode_qos(session, msg_id, base, line):
    """``q|<session>|<id>|<base>|<line>`` as bytes.

    ``line``: str or UTF-8 bytes, checked as by ``lines.check_line``. ``base``
    must be ``msg_id`` or before it (serial arithmetic).
    """
    check_session(session)
    _check_id("id", msg_id)
    _check_id("base", base)
    if (msg_id - base) & ID_MASK >= 0x8000:
        raise ValueError("base " + str(base) + " is after id " + str(msg_id))
    return qos_raw(session.encode(), msg_id, base, _line_bytes(line, True)[0])


def qos_raw(session_b, msg_id, base, data):
    """``encode_qos`` without checks: ``session_b`` and ``data`` are valid bytes."""
    return b"q|%s|%d|%d|" % (session_b, msg_id, base) + data


def encode_unreliable(session, line):
    """``u|<session>|<line>`` as bytes."""
    check_session(session)
    data = _line_bytes(line, True)[0]
    return b"u|" + session.encode() + b"|" + data


def encode_ack(session, msg_id):
    """``a|<session>|<id>`` as bytes."""
    check_session(session)
    _check_id("id", msg_id)
    return b"a|%s|%d" % (session.encode(), msg_id)


def _parse_id(name, field, payload):
    n = len(field)
    ok = 0 < n <= 5
    if ok:
        for c in field:
            if c < 48 or c > 57:
                ok = False
                break
    if ok:
        v = int(field)
        if v <= ID_MASK:
            return v
    raise ValueError("frame " + _show(payload) + ": " + name + " is not a decimal in 0..65535")


def _parse_session(field, payload):
    if not _session_ok(field):
        raise ValueError("frame " + _show(payload) + ": session is not 8 lowercase hex digits")
    return field.decode()


def decode(payload):
    """Parse one end-to-end frame.

    ``payload``: bytes-like (or str). One trailing ``\\n`` is tolerated and
    removed. Returns a ``Frame`` ``(kind, session, msg_id, base, line)``:

    - ``('q', session, id, base, line)``
    - ``('u', session, None, None, line)``
    - ``('a', session, id, None, None)``
    - ``('h', None, None, None, None)``

    ``kind`` and ``session`` and ``line`` are str, ids are int.
    ``ValueError`` for an unknown kind, a bad session or id, a base after the
    id, or a line that breaks ``lines.check_line`` (not UTF-8, too long).
    """
    if isinstance(payload, str):
        data = payload.encode()
    else:
        data = bytes(payload)
    n = len(data)
    if n and data[n - 1] == 10:
        data = data[: n - 1]
        n -= 1
    if n == 0:
        raise ValueError("frame b'' is empty")
    k = data[0]
    if k == 104:  # 'h'
        if n != 1:
            raise ValueError("frame " + _show(data) + ": a heartbeat is just 'h'")
        return Frame(HB, None, None, None, None)
    if n < 2 or data[1] != 124:  # '|'
        raise ValueError("frame " + _show(data) + ": unknown kind or no '|' after it")
    if k == 113:  # 'q'
        parts = data.split(b"|", 4)
        if len(parts) != 5:
            raise ValueError("frame " + _show(data) + ": a q frame has 5 fields")
        session = _parse_session(parts[1], data)
        msg_id = _parse_id("id", parts[2], data)
        base = _parse_id("base", parts[3], data)
        if (msg_id - base) & ID_MASK >= 0x8000:
            raise ValueError("frame " + _show(data) + ": base is after id")
        line = _line_text(parts[4], data)
        return Frame(QOS, session, msg_id, base, line)
    if k == 117:  # 'u'
        parts = data.split(b"|", 2)
        if len(parts) != 3:
            raise ValueError("frame " + _show(data) + ": a u frame has 3 fields")
        session = _parse_session(parts[1], data)
        return Frame(UNRELIABLE, session, None, None, _line_text(parts[2], data))
    if k == 97:  # 'a'
        parts = data.split(b"|")
        if len(parts) != 3:
            raise ValueError("frame " + _show(data) + ": an a frame has 3 fields")
        session = _parse_session(parts[1], data)
        return Frame(ACK, session, _parse_id("id", parts[2], data), None, None)
    raise ValueError("frame " + _show(data) + ": unknown kind")


def _line_text(field, payload):
    msg = None
    try:
        data = _line_bytes(field, False)[0]
    except ValueError as e:
        msg = str(e)
        data = None
    if data is None:
        raise ValueError("frame " + _show(payload) + ": " + msg)
    return data.decode("utf-8")
