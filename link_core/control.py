"""Link messages between the boards (docs/PROTOCOL.md section 2).

A link message is one kind byte and a body. Kinds ``q``, ``u``, ``a`` carry
an end-to-end frame (the kind byte is the frame's own first character); the
others are control messages. Kinds are ints (byte values), so
``msg[0] == KEEPALIVE`` works on bytes under CPython and MicroPython.

JSON bodies are written by a small encoder here (compact, non-ASCII as
UTF-8) so that both interpreters produce identical bytes; they are read with
``json.loads``.

The ESP8266 bridge imports this module, and every function and public name
here costs it RAM even frozen (docs/FIRMWARE.md "Memory budget"): what only
the Pyboard and the tools use (the kinds ``KEEPALIVE``, ``SERVER_UP``,
``REPORT``, ``BAD_WIFI``, ``FRAME_KINDS``; ``is_frame``, ``encode_config``,
``decode_report``, ``decode_text``) is in ``link_core.messages``.
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


# modules, not names: each imported name would cost the bridge a slot of this
# module's dict
from link_core import names, schema

# The kinds the bridge compares or encodes; the others, which only the
# Pyboard reads (K, U, R, W), are link_core.messages'. Each public name here
# costs the bridge a slot of this module's dict.
# Pyboard -> ESP8266
CONFIG = const(0x43)  # 'C' JSON config list, first message after every sync
# Both ways: end-to-end frames
QOS = const(0x71)  # 'q'
UNRELIABLE = const(0x75)  # 'u'
ACK = const(0x61)  # 'a'
# ESP8266 -> Pyboard
SERVER_DOWN = const(0x44)  # 'D' server, broker or WiFi unreachable; optional UTF-8 reason
BAD_BROKER = const(0x42)  # 'B' UTF-8 reason, first broker connection failed
ERROR = const(0x45)  # 'E' UTF-8 diagnostic text

# The empty messages the bridge sends
MSG_KEEPALIVE = b"K"
MSG_SERVER_UP = b"U"
MSG_SERVER_DOWN = b"D"
MSG_BAD_WIFI = b"W"

# C message indices control.py needs (link_core/schema.py: the rows in the message's order)
_REPORT_S = const(4)
_MQTT_USER = const(7)
_MQTT_PASSWORD = const(8)
_REQUIRED = const(4)  # conn_id, port, host, timeout_ms: a C message has at least these
_COL_TYPE = const(1)  # columns of a row of link_core/schema.py (the name is column 0)
_COL_DEFAULT = const(2)
_COL_LOW = const(3)
_COL_HIGH = const(4)
_COL_USE = const(5)


# -- JSON ---------------------------------------------------------------------


def _json_scalar(v):
    # one function for str, int and bool: each function costs the bridge RAM
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if not isinstance(v, str):
        raise ValueError("cannot encode " + names._show(v)
                         + ": only str, int, bool and a flat dict")
    out = ['"']
    for c in v:
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c < " ":
            o = ord(c)
            if c == "\n":
                out.append("\\n")
            elif c == "\r":
                out.append("\\r")
            elif c == "\t":
                out.append("\\t")
            elif c == "\b":
                out.append("\\b")
            elif c == "\f":
                out.append("\\f")
            else:
                out.append("\\u00" + "0123456789abcdef"[o >> 4] + "0123456789abcdef"[o & 15])
        else:
            out.append(c)
    out.append('"')
    return "".join(out)




def dump_list(items):
    """Compact JSON for a list of str, int, bool and flat dicts, as UTF-8 bytes.

    Dict keys are str, sorted; dict values str, int or bool. Same bytes as
    CPython's ``json.dumps(items, separators=(',', ':'), ensure_ascii=False,
    sort_keys=True).encode()``, on both interpreters.
    """
    parts = []
    for v in items:
        if isinstance(v, dict):
            keys = []
            for k in v:
                if not isinstance(k, str):
                    raise ValueError("cannot encode dict key " + names._show(k) + ": not a str")
                keys.append(k)
            keys.sort()
            parts.append(
                "{" + ",".join([_json_scalar(k) + ":" + _json_scalar(v[k]) for k in keys]) + "}"
            )
        else:
            parts.append(_json_scalar(v))
    return ("[" + ",".join(parts) + "]").encode("utf-8")


def _load_body(msg, kind, name):
    """JSON list from a message with or without its kind byte."""
    data = bytes(msg)
    if data and data[0] == kind:
        data = data[1:]
    if not names.utf8_valid(data):
        raise ValueError(name + " message " + names._show(data) + " is not valid UTF-8")
    import json  # here, not at the top: a module global costs the bridge a dict slot

    obj = None
    try:
        obj = json.loads(data.decode("utf-8"))
    except ValueError:
        pass
    if not isinstance(obj, list):
        raise ValueError(name + " message " + names._show(data) + " is not a JSON list")
    return obj


# -- config -------------------------------------------------------------------


def _check(k, v):
    """``v`` if it obeys the row at ``SETTINGS[k]`` (link_core.schema), else its ValueError."""
    name = schema.SETTINGS[k]
    kind = schema.SETTINGS[k + _COL_TYPE]
    lo = schema.SETTINGS[k + _COL_LOW]
    hi = schema.SETTINGS[k + _COL_HIGH]
    if kind == "int":
        if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi:
            return v
        raise ValueError(name + " " + names._show(v) + " is not an int from " + str(lo) + " to "
                         + str(hi))
    if kind == "id":
        return names.check_conn_id(v)
    if kind == "root":
        return names.check_root(v)
    if kind == "bool":
        if isinstance(v, bool):
            return v
        raise ValueError(name + " " + names._show(v) + " is not a bool (True or False)")
    if kind == "choice":
        if isinstance(v, str) and v in lo:
            return v
        raise ValueError(name + " " + names._show(v) + " is not one of " + ", ".join(lo))
    if kind == "dict":
        if not isinstance(v, dict):
            raise ValueError(name + " " + names._show(v) + " is not a dict (a JSON object)")
        for key in v:
            if not isinstance(key, str):
                raise ValueError(name + " key " + names._show(key) + " is not a str")
            if lo is not None:  # the keys are the rows whose use is lo
                r = _row(key)
                if r < 0 or schema.SETTINGS[r + _COL_USE] != lo:
                    rows = schema.SETTINGS
                    ok = [rows[j] for j in range(0, len(rows), schema.COLUMNS)
                          if rows[j + _COL_USE] == lo]
                    raise ValueError(name + " key " + names._show(key) + " is not one of "
                                     + ", ".join(ok))
                _check(r, v[key])
        if lo is not None:
            _ordered(v)
        return v
    if not isinstance(v, str):  # "str" and "host"
        raise ValueError(name + " " + names._show(v) + " is not a str")
    n = len(v.encode("utf-8"))
    if n < lo or n > hi:
        raise ValueError(name + " " + names._show(v) + " must be " + str(lo) + " to " + str(hi)
                         + " bytes")
    if kind == "host":
        # no space, '/' or ':' (a scheme, path or port), but in an IPv6 address (hex, 2+ ':',
        # and '.' in one that ends in an IPv4 address, e.g. ::ffff:127.0.0.1)
        ok = True
        colons = 0
        hex_only = True
        for c in v:
            if c == ":":
                colons += 1
            elif c == "/" or c.isspace():
                ok = False
            elif c not in "0123456789abcdefABCDEF.":
                hex_only = False
        if not ok or (colons and not (hex_only and colons >= 2)):
            raise ValueError(name + " " + names._show(v) + " is not a host name or IP address (no "
                             "scheme, port or path: the port is a setting of its own)")
    return v


def _row(name):
    """The index of setting ``name``'s row in ``SETTINGS`` (its first cell), -1 if none."""
    for k in range(0, len(schema.SETTINGS), schema.COLUMNS):
        if schema.SETTINGS[k] == name:
            return k
    return -1


def _ordered(values):
    """The rules across rows (link_core.schema.ORDERED) over the dict ``values``; a row
    it lacks counts with its default."""
    for j in range(0, len(schema.ORDERED), 2):
        a = schema.ORDERED[j]
        b = schema.ORDERED[j + 1]
        if a in values or b in values:
            va = values.get(a, schema.SETTINGS[_row(a) + _COL_DEFAULT])
            vb = values.get(b, schema.SETTINGS[_row(b) + _COL_DEFAULT])
            if vb < va:
                show = names._show
                raise ValueError(b + " " + show(vb) + " is below " + a + " " + show(va))


def group(use, given, out=None):
    """Every setting whose row's ``use`` is ``use`` (``"tuning"``, ``"bridge"``): a dict of
    ``given[name]`` (checked, ``check_setting``) or the row's default.

    With ``out`` (a list), the values are appended to it in the rows' order and
    ``out`` is returned instead: the ESP8266 bridge keeps them in a tuple it
    indexes with ``const()`` names, smaller than the dict. Other keys of
    ``given`` are not looked at. ``ValueError`` with the row's one-line text for
    a bad value, or for a rule across rows (``link_core.schema.ORDERED``)."""
    t = {}
    for k in range(0, len(schema.SETTINGS), schema.COLUMNS):
        if schema.SETTINGS[k + _COL_USE] == use:
            name = schema.SETTINGS[k]
            v = t[name] = _check(k, given.get(name, schema.SETTINGS[k + _COL_DEFAULT]))
            if out is not None:
                out.append(v)
    _ordered(t)
    return t if out is None else out


def check_setting(name, value):
    """``value`` if it is a valid value of setting ``name`` (a row of link_core/schema.py).

    ``ValueError`` otherwise, with the one-line text every part shows for it
    (the boards, ``pblink install``, ``LinkServer``), e.g. ``timeout_ms 10 is
    not an int from 200 to 3600000``; also for a ``name`` the table lacks.
    Rules per type: see ``link_core.schema``; a ``"dict"`` setting's keys
    are checked by their own rows (``bridge_tuning``: ``keepalive_ms 5 is not an
    int from 100 to 60000``, an unknown key, ``ORDERED``).
    """
    k = _row(name)
    if k >= 0:
        return _check(k, value)
    raise ValueError("no setting " + names._show(name) + " (link_core/schema.py)")


def check_login(user, password):
    """MQTT-3.1.2-22: ``ValueError`` for a ``password`` without a ``user`` (brokers close such a
    connection)."""
    if password and not user:
        raise ValueError("mqtt_password is set but mqtt_user is empty: MQTT 3.1.1 sends a "
                         "password only with a user name")


def check_config(cfg):
    """Validate and complete a config list; return it with every entry.

    ``cfg``: list or tuple of the first 4 to all 12 entries of the ``C``
    message, the first ``CONFIG_ENTRIES`` rows of ``link_core.schema.SETTINGS``
    in order: ``[conn_id, port, host, timeout_ms, report_s, ssid,
    wifi_password, mqtt_user, mqtt_password, topic_root, tls, bridge_tuning]``.
    Missing entries up to ``tls`` get the table's defaults, but ``report_s``
    0 (PROTOCOL.md 2: an Initiator that omits it asks for no reports): the
    result has 11 entries, or 12 when ``bridge_tuning`` was given (a dict
    whose keys are the schema's "bridge" rows, each optional). Each entry
    obeys its row (``check_setting``) and ``check_login(mqtt_user,
    mqtt_password)``. ``ValueError`` naming the field otherwise.
    """
    if not isinstance(cfg, (list, tuple)) or not _REQUIRED <= len(cfg) <= schema.CONFIG_ENTRIES:
        raise ValueError("config " + names._show(cfg) + " is not a list of 4 to 12 entries: "
                         + ", ".join([schema.SETTINGS[k] for k in range(
                             0, schema.CONFIG_ENTRIES * schema.COLUMNS, schema.COLUMNS)]))
    c = list(cfg)
    while len(c) < schema.CONFIG_ENTRIES - 1:
        c.append(0 if len(c) == _REPORT_S
                 else schema.SETTINGS[len(c) * schema.COLUMNS + _COL_DEFAULT])
    for i in range(len(c)):
        _check(i * schema.COLUMNS, c[i])
    check_login(c[_MQTT_USER], c[_MQTT_PASSWORD])
    return c


def decode_config(msg):
    """The completed config list (``check_config``) from a ``C`` message.

    The kind byte is optional. ``ValueError`` if the body is not a JSON list
    or breaks ``check_config``.
    """
    return check_config(_load_body(msg, CONFIG, "config"))


# -- report -------------------------------------------------------------------


def _check_report(rep):
    if not isinstance(rep, (list, tuple)) or not 3 <= len(rep) <= 4:
        raise ValueError(
            "report " + names._show(rep) + " is not [connects, report_no, mem_free(, mem_errors)]"
        )
    for v in rep:
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError("report " + names._show(rep) + " entries must be ints >= 0")
    return list(rep)


def encode_report(rep):
    """The ``R`` link message for ``[connects, report_no, mem_free, mem_errors]`` (ints >= 0).

    ``mem_errors``: MemoryErrors the bridge caught since boot (PROTOCOL.md 2);
    a 3-entry report (a bridge older than that entry) is accepted too.
    """
    return b"R" + dump_list(_check_report(rep))


# -- text ---------------------------------------------------------------------


def encode_text(kind, text):
    """A ``B``, ``E`` or reasoned ``D`` message: kind byte + UTF-8 text, cut to fit MAX_MESSAGE.

    The cut never splits a character.
    """
    if kind != BAD_BROKER and kind != ERROR and kind != SERVER_DOWN:
        raise ValueError("kind " + names._show(kind) + " is not BAD_BROKER ('B'), ERROR ('E') or "
                         "SERVER_DOWN ('D')")
    if not isinstance(text, str):
        raise ValueError("text " + names._show(text) + " is not a str")
    data = text.encode("utf-8")
    n = names.MAX_MESSAGE - 1
    if len(data) > n:
        while n > 0 and data[n] & 0xC0 == 0x80:
            n -= 1
        data = data[:n]
    return bytes((kind,)) + data
