"""Liveness rules (docs/PROTOCOL.md 4.4): heartbeats, reachability, MQTT QoS.

Sans-I/O: callers pass times (``now_ms``, tick values) and events in and act
on the decisions returned. One module for the rules that the bridge
(``esp_bridge``), the Pyboard (``AppBase``), the server library
(``server_apps``) and the device double (``virtual_bench``) all follow::

    mqtt_level(frame) -> 0 | 1             # MQTT QoS of an end-to-end frame (4.1)
    classify_down(payload) -> IS_HEARTBEAT | IS_DATA | IS_BAD   # strict, allocation free

    w = ServerWatch(timeout_ms)            # on the device end: is the server app there?
    w.connected(now) / w.disconnected()    # the broker connection came up / went down
    w.published(now)                       # a frame went out on up
    w.heard(now)                           # a good frame (heartbeat or data) came on down
    w.heartbeat_due(now) -> bool           # publish 'h' now (then call w.heartbeat_sent)
    w.heartbeat_sent(now)
    w.reachable(now) -> bool               # the bridge's U (True) / D (False)
    w.unanswered(now) -> bool              # True once per connection: no answer in 2 x timeout

The server's view of a device (``DeviceWatch``) is ``link_core.device_watch``
and write admission (``may_write``, 3.1) is ``link_core.endpoint``: the
ESP8266 bridge imports this module, and every class and function here costs
its RAM (function objects, class dicts), so the rules it does not apply are
not loaded there.
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


from link_core.clock import ticks_add, ticks_diff

# The heartbeat frame (PROTOCOL.md 3), equal to frames.HEARTBEAT (checked by the tests);
# not imported from there so that the bridge, which never decodes frames, does not load the codec.
HEARTBEAT = b"h"

# classify_down results
IS_BAD = const(0)
IS_HEARTBEAT = const(1)
IS_DATA = const(2)

# MQTT QoS (PROTOCOL.md 4.1)
_LEVEL_Q = const(1)  # MQTT QoS level of 'q' frames
_LEVEL_OTHER = const(0)  # of 'u', 'a', 'h'
QOS_STATUS = const(1)  # the retained status and the will

_Q = const(0x71)  # 'q'
_U = const(0x75)  # 'u'
_A = const(0x61)  # 'a'
_H = const(0x68)  # 'h'
_BAR = const(0x7C)  # '|'
_NL = const(0x0A)
_SESSION_END = const(10)  # index of the '|' after kind, '|' and 8 hex digits


def mqtt_level(frame):
    """MQTT QoS level (0 or 1) to publish the end-to-end ``frame`` (bytes-like) at.

    "level" is the MQTT word; ``qos`` elsewhere (``write(line, qos)``) means a
    ``q`` line, acknowledged end to end.

    ``q`` frames go at QoS 1, everything else (``u``, ``a``, ``h``) at QoS 0
    (PROTOCOL.md 4.1): a lost ``u`` is allowed, a lost ``a`` or ``h`` is
    replaced by the next one.
    """
    return _LEVEL_Q if len(frame) and frame[0] == _Q else _LEVEL_OTHER


def classify_down(payload):
    """What a payload that arrived on ``down`` (or ``up``) is, without allocating.

    ``IS_HEARTBEAT``: exactly ``h`` (one trailing ``\\n`` tolerated, PROTOCOL.md
    3). ``IS_DATA``: starts with ``q|``, ``u|`` or ``a|`` and a well-formed
    session (8 lowercase hex digits and ``|``); the end application parses the
    rest (``frames.decode``). ``IS_BAD``: anything else, e.g. ``hello`` or
    ``h|x``. A IS_BAD payload is not traffic: it proves nothing about the peer
    and gets the ``E`` diagnostic on the bridge (PROTOCOL.md 2).
    """
    n = len(payload)
    if n and payload[n - 1] == _NL:
        n -= 1
    if n == 0:
        return IS_BAD
    k = payload[0]
    if k == _H:
        return IS_HEARTBEAT if n == 1 else IS_BAD
    if (k != _Q and k != _U and k != _A) or n <= _SESSION_END or payload[1] != _BAR:
        return IS_BAD
    for i in range(2, _SESSION_END):
        c = payload[i]
        if not (48 <= c <= 57 or 97 <= c <= 102):  # 0-9 a-f
            return IS_BAD
    return IS_DATA if payload[_SESSION_END] == _BAR else IS_BAD


class ServerWatch:
    """The device end's view of its server application (PROTOCOL.md 4.4).

    ``ServerWatch(timeout_ms)``, ``timeout_ms`` the link timeout from the
    config (may be changed later by assigning ``timeout_ms``). Rules:

    - heartbeat: due when nothing was published on ``up`` for ``timeout_ms/2``,
      or nothing was heard on ``down`` for ``timeout_ms/2`` and no ``h`` went
      out in the last ``timeout_ms/2`` (so a bridge whose server is gone sends
      one ``h`` per half timeout, not a flood).
    - reachable (``U``): connected and a good frame came on ``down`` within the
      last ``timeout_ms``; otherwise ``D``.
    - unanswered: connected for ``2 x timeout_ms`` and nothing heard on ``down``
      since the connection came up: no server application serves this
      conn_id under this root on this broker, or the broker drops the device's
      publishes (ACL). True once per connection, for the diagnostic.
    """

    def __init__(self, timeout_ms):
        self.timeout_ms = timeout_ms
        self.is_connected = False
        self.last_pub = 0
        self.last_heard = 0
        self.last_h = 0
        self.since = 0  # when the broker connection came up
        self.answered = False  # a good frame on down since then
        self._told = False  # unanswered() reported for this connection

    def connected(self, now_ms):
        """The broker connection is up: the server is unknown, a heartbeat is due at once."""
        past = ticks_add(now_ms, -self.timeout_ms)
        self.last_heard = past
        self.last_pub = past
        self.last_h = past
        self.since = now_ms
        self.answered = False
        self._told = False
        self.is_connected = True

    def disconnected(self):
        """WiFi or the broker connection is lost: ``D``."""
        self.is_connected = False

    def published(self, now_ms):
        """A frame (any kind) went out on ``up``."""
        self.last_pub = now_ms

    def heard(self, now_ms):
        """An ``IS_HEARTBEAT`` or ``IS_DATA`` payload (``classify_down``) came on ``down``."""
        self.last_heard = now_ms
        self.answered = True

    def heartbeat_due(self, now_ms):
        """True when an ``h`` should be published on ``up`` now."""
        if not self.is_connected:
            return False
        half = self.timeout_ms // 2
        if ticks_diff(now_ms, self.last_pub) >= half:
            return True
        quiet = ticks_diff(now_ms, self.last_heard) >= half
        return quiet and ticks_diff(now_ms, self.last_h) >= half

    def heartbeat_sent(self, now_ms):
        """The ``h`` asked for by ``heartbeat_due`` went out."""
        self.last_h = now_ms
        self.last_pub = now_ms

    def reachable(self, now_ms):
        """The server application is reachable: ``U`` (True) or ``D`` (False)."""
        return self.is_connected and ticks_diff(now_ms, self.last_heard) < self.timeout_ms

    def unanswered(self, now_ms):
        """True once per connection when ``2 x timeout_ms`` passed with nothing on ``down``."""
        if self._told or self.answered or not self.is_connected:
            return False
        if ticks_diff(now_ms, self.since) < 2 * self.timeout_ms:
            return False
        self._told = True
        return True
