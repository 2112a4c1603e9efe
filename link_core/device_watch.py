"""The server's view of one device (docs/PROTOCOL.md 4.4): online, silent, answers.

Sans-I/O: callers pass times (``now_ms``, tick values) in. The server library
(``server_apps``) uses it; the device-end rules (``ServerWatch``, ``mqtt_level``,
``classify_down``) are ``link_core.liveness`` (``may_write`` is
``link_core.endpoint``), kept apart so
that the ESP8266 bridge does not load this class into its RAM::

    d = DeviceWatch(timeout_ms)            # on the server: is the device there?
    d.heard(now) -> bool                   # a good frame on up; True if it came online
    d.status(online, now) -> bool          # retained status; True if online changed
    d.silent(now) -> bool                  # True (and offline) after 2 x timeout of silence
    d.lost() -> bool                       # the server's broker connection was lost
    d.answer_due(now) -> bool              # answer this 'h' (at most one per timeout/4)
    d.resend_due(now) -> bool              # resend all now it is back (at most one per timeout/4)
    d.online, d.last_heard
"""

from link_core.clock import ticks_diff


class DeviceWatch:
    """The server's view of one device (PROTOCOL.md 4.4).

    ``DeviceWatch(timeout_ms)``. Online when a good frame came on its ``up``
    within the last ``2 x timeout_ms`` or its retained status became
    ``online``; offline on status ``offline``, after ``2 x timeout_ms`` of
    silence, or when the server's own broker connection is lost. A frame
    that does not parse is not traffic: do not call ``heard`` for it.

    Backlogs: a broker may deliver, all at once, what queued up for the server
    while it was away (amqtt even queues QoS 0 heartbeats): dozens of stale
    ``h`` per device, or status flips. ``answer_due`` and ``resend_due``
    allow one answer, one resend-all, per ``timeout_ms / 4``: a live bridge
    sends ``h`` at most every ``timeout_ms / 2``, so it still gets an answer to
    each, and the first seconds back stay bounded.
    """

    def __init__(self, timeout_ms):
        self.timeout_ms = timeout_ms
        self.online = False
        self.last_heard = 0
        self._answered = None  # when the last 'h' was answered
        self._resent = None  # when the last resend-all went out

    def _spaced(self, last, now_ms):
        return last is None or ticks_diff(now_ms, last) >= self.timeout_ms // 4

    def answer_due(self, now_ms):
        """True (and recorded) when an ``h`` that came now should be answered."""
        if not self._spaced(self._answered, now_ms):
            return False
        self._answered = now_ms
        return True

    def resend_due(self, now_ms):
        """True (and recorded) when the device came back and every unacked frame may go again."""
        if not self._spaced(self._resent, now_ms):
            return False
        self._resent = now_ms
        return True

    def _set(self, online):
        if online == self.online:
            return False
        self.online = online
        return True

    def heard(self, now_ms):
        """A good frame came on ``up``. True if the device just came online."""
        self.last_heard = now_ms
        return self._set(True)

    def status(self, online, now_ms):
        """The retained status became ``online`` (True) or ``offline``. True if changed."""
        self.last_heard = now_ms
        return self._set(online)

    def silent(self, now_ms):
        """True (and now offline) when online and silent for more than ``2 x timeout_ms``."""
        if self.online and ticks_diff(now_ms, self.last_heard) > 2 * self.timeout_ms:
            self.online = False
            return True
        return False

    def lost(self):
        """The server's broker connection is gone. True if the device was online."""
        return self._set(False)
