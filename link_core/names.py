"""Names: conn_id and topic-root rules, UTF-8 check, a device's MQTT topics.

See docs/PROTOCOL.md sections 0, 3 and 4.1. Everything here raises
``ValueError`` with a message that names the offending value and the rule.

The ESP8266 bridge imports this module, and every function and class here
costs it RAM even frozen (docs/FIRMWARE.md "Memory budget"): line validation
lives in ``link_core.lines`` (the end applications), topic filters and
parsing in ``link_core.topics`` (the server side).
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


# Every public name (and every non-const global) costs the ESP8266 bridge a
# slot of this module's dict: the limits the rules name are private, the rule
# texts are locals of their checks, LEAVES is link_core.topics'.
MAX_LINE = const(1024)  # longest line, UTF-8 encoded, without its newline
MAX_MESSAGE = const(1152)  # longest I2C link message (kind byte + body)
_CONN_ID_MAX = const(64)  # longest conn_id, in characters
_ROOT_MAX = const(128)  # longest topic root, in characters

UP = "up"
DOWN = "down"
STATUS = "status"
REPORT = "report"  # retained: the body of the bridge's last R report (PROTOCOL.md 2)
ONLINE = "online"  # retained payload of <root>/<conn_id>/status
OFFLINE = "offline"

_ALLOWED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


def _show(value, limit=40):
    """Short repr of a value for an error message."""
    r = repr(value)
    if len(r) > limit + 5:
        r = r[:limit] + "...'"
    return r


def check_conn_id(conn_id):
    """Return ``conn_id`` if it is 1 to 64 characters from ``A-Z a-z 0-9 _ -``.

    Anything else (not a str, empty, ``/``, ``+``, ``#``, NUL, ``.``, space,
    non-ASCII, longer than 64) raises ``ValueError`` naming the conn_id and
    the rule.
    """
    rule = (
        "a conn_id is 1 to 64 characters from A-Z a-z 0-9 _ - "
        "so that it is one portable MQTT topic level"
    )
    if not isinstance(conn_id, str):
        raise ValueError("conn_id " + _show(conn_id) + " is not a str: " + rule)
    n = len(conn_id)
    if n == 0:
        raise ValueError("conn_id '' is empty: " + rule)
    if n > _CONN_ID_MAX:
        raise ValueError(
            "conn_id " + _show(conn_id, 80) + " is " + str(n) + " characters long: " + rule
        )
    i = 0
    for c in conn_id:
        if c not in _ALLOWED:
            raise ValueError(
                "conn_id "
                + _show(conn_id, 80)
                + " has the character "
                + repr(c)
                + " at position "
                + str(i)
                + ": "
                + rule
            )
        i += 1
    return conn_id


def check_root(root):
    """Return ``root`` if it is a valid topic root (e.g. ``pblink``, ``site/pblink``).

    Levels of ``A-Z a-z 0-9 _ -`` separated by single ``/``; 1 to 128
    characters. Otherwise ``ValueError`` naming the root and the rule.
    """
    rule = (
        "a topic root is 1 to 128 characters: levels of A-Z a-z 0-9 _ - "
        "separated by single '/', no leading or trailing '/'"
    )
    if not isinstance(root, str):
        raise ValueError("topic root " + _show(root) + " is not a str: " + rule)
    if not root or len(root) > _ROOT_MAX:
        raise ValueError("topic root " + _show(root, 140) + " has a bad length: " + rule)
    prev = "/"
    i = 0
    for c in root:
        if c == "/":
            if prev == "/":
                raise ValueError(
                    "topic root " + _show(root, 140) + " has an empty level: " + rule
                )
        elif c not in _ALLOWED:
            raise ValueError(
                "topic root "
                + _show(root, 140)
                + " has the character "
                + repr(c)
                + " at position "
                + str(i)
                + ": "
                + rule
            )
        prev = c
        i += 1
    if prev == "/":
        raise ValueError("topic root " + _show(root, 140) + " ends with '/': " + rule)
    return root


def utf8_valid(data):
    """True if ``data`` (bytes-like) is well-formed UTF-8.

    Strict (RFC 3629): rejects overlong forms, surrogates and code points
    above U+10FFFF, which some MicroPython builds' ``bytes.decode()`` accept.
    """
    n = len(data)
    i = 0
    while i < n:
        c = data[i]
        if c < 0x80:
            i += 1
            continue
        lo = 0x80
        hi = 0xBF
        if 0xC2 <= c <= 0xDF:
            need = 1
        elif c == 0xE0:
            need = 2
            lo = 0xA0
        elif c == 0xED:
            need = 2
            hi = 0x9F
        elif 0xE1 <= c <= 0xEF:
            need = 2
        elif c == 0xF0:
            need = 3
            lo = 0x90
        elif 0xF1 <= c <= 0xF3:
            need = 3
        elif c == 0xF4:
            need = 3
            hi = 0x8F
        else:
            return False
        if i + need >= n:
            return False
        c = data[i + 1]
        if c < lo or c > hi:
            return False
        j = i + 2
        i += need + 1
        while j < i:
            c = data[j]
            if c < 0x80 or c > 0xBF:
                return False
            j += 1
    return True


def client_id(conn_id):
    """MQTT client id of the bridge for ``conn_id``: ``pblink-<conn_id>``."""
    return "pblink-" + check_conn_id(conn_id)


class Topics:
    """The topics of one device: ``.up``, ``.down``, ``.status``, ``.report``.

    ``Topics(root, conn_id)`` validates both (``ValueError``). ``.base`` is
    ``<root>/<conn_id>``.
    """

    def __init__(self, root, conn_id):
        self.root = check_root(root)
        self.conn_id = check_conn_id(conn_id)
        self.base = root + "/" + conn_id
        self.up = self.base + "/" + UP
        self.down = self.base + "/" + DOWN
        self.status = self.base + "/" + STATUS
        self.report = self.base + "/" + REPORT

    def __repr__(self):
        return "Topics(" + repr(self.root) + ", " + repr(self.conn_id) + ")"
