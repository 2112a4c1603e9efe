"""What `pblink monitor` knows about the devices under one topic root (sans-I/O).

:class:`Fleet` is fed the MQTT messages any client subscribed to
``<root>/+/up``, ``down``, ``status`` and ``report`` receives
(docs/PROTOCOL.md 4.1), with the time, and keeps one :class:`DeviceRow` per
conn_id. It judges as the server library does (PROTOCOL.md 4.4), from the
outside:

- online: the retained status became ``online`` or a valid frame arrived on
  ``up``; offline on status ``offline`` or after ``2 x timeout_ms`` without a
  frame on ``up`` (the bridge sends an ``h`` at least every ``timeout_ms / 2``
  while it is connected, and the embedded amqtt never fires a will);
- server app reachable: a frame arrived on ``down`` within ``timeout_ms`` (the
  bridge's own rule for ``U``: a server app answers every ``h``); unknown
  (None) while the device is offline: the server app answers the device's
  frames, so with none coming nothing can be told about it;
- the last line each way (``q`` and ``u`` frames; a retransmitted ``q`` frame,
  same session and id, counts once, as a retransmission), lines per second
  over the last ``RATE_WINDOW_S`` seconds, retransmissions seen, and the lines
  acknowledged: an up line's ack travels on ``down`` (from the server app), a
  down line's on ``up`` (from the device), so ``up.acked`` counts the acks seen
  on ``down`` and ``down.acked`` those on ``up`` (PROTOCOL.md 2);
- the bridge's last ``R`` report ``[connects, report_no, mem_free, mem_errors]`` from
  ``<root>/+/report`` (retained, PROTOCOL.md 4.1; only when the device's
  ``report_s`` > 0).

It publishes nothing and acknowledges nothing: it is a reader only. Times are
seconds on a clock the caller chooses (``time.time()`` in the command).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from link_core import frames, messages, names, topics

RATE_WINDOW_S = 10.0
MEMORY = 256  # (session, id) pairs remembered per direction to spot retransmissions


@dataclass
class Direction:
    """One direction's traffic as seen on its topic."""

    last_line: str | None = None
    last_line_t: float | None = None
    lines: int = 0
    acked: int = 0  # this direction's lines acknowledged (acks seen on the other topic)
    repeats: int = 0
    _times: collections.deque[float] = field(default_factory=collections.deque)
    _seen: collections.OrderedDict[tuple[str, int], None] = field(
        default_factory=collections.OrderedDict)

    def line(self, text: str, now: float, key: tuple[str, int] | None) -> bool:
        """A data line; False (and counted as a repeat) when ``key`` was seen before."""
        if key is not None:
            if key in self._seen:
                self.repeats += 1
                return False
            self._seen[key] = None
            if len(self._seen) > MEMORY:
                self._seen.popitem(last=False)
        self.lines += 1
        self.last_line, self.last_line_t = text, now
        self._times.append(now)
        return True

    def rate(self, now: float) -> float:
        """Lines per second over the last RATE_WINDOW_S seconds."""
        while self._times and self._times[0] <= now - RATE_WINDOW_S:
            self._times.popleft()
        return len(self._times) / RATE_WINDOW_S


@dataclass
class DeviceRow:
    conn_id: str
    first_seen: float
    online: bool = False
    since: float = 0.0  # when `online` last changed (or first_seen)
    why: str = "no status yet"  # what made the last online/offline judgement
    judged: bool = False
    status: str | None = None  # the last payload on <root>/<conn_id>/status
    last_up: float | None = None  # last valid frame on up
    last_down: float | None = None  # last valid frame on down
    malformed: int = 0
    report: list[int] | None = None  # [connects, report_no, mem_free(, mem_errors)]
    report_t: float | None = None  # when it arrived (a retained one: when we subscribed)
    up: Direction = field(default_factory=Direction)
    down: Direction = field(default_factory=Direction)

    def to_json(self, now: float, timeout_s: float) -> dict[str, Any]:
        # None: unknown while the device is offline (nothing reaches the server app to answer)
        reachable = (None if not self.online else
                     self.last_down is not None and now - self.last_down <= timeout_s)
        return {
            "conn_id": self.conn_id, "online": self.online, "since": self.since,
            "why": self.why, "status": self.status, "server_reachable": reachable,
            "last_down_frame": self.last_down, "malformed": self.malformed,
            **{f"{name}_{k}": v for name, d in (("up", self.up), ("down", self.down))
               for k, v in (("last_line", d.last_line), ("last_line_t", d.last_line_t),
                            ("lines", d.lines), ("rate", round(d.rate(now), 2)),
                            ("acked", d.acked), ("repeats", d.repeats))},
            "report": self.report, "report_t": self.report_t,
        }


class Fleet:
    """The devices under one root. ``timeout_ms``: the devices' link timeout
    (PROTOCOL.md 2, config entry 4; default 1,500 as in pb_settings)."""

    def __init__(self, root: str = "pblink", timeout_ms: int = 1500) -> None:
        self.root = names.check_root(root)
        self.timeout_s = timeout_ms / 1000
        self.devices: dict[str, DeviceRow] = {}

    def subscriptions(self) -> list[str]:
        """The topic filters to subscribe to (read-only; any client may)."""
        return [f"{self.root}/+/{leaf}" for leaf in ("up", "down", "status", "report")]

    def _row(self, conn_id: str, now: float) -> DeviceRow:
        row = self.devices.get(conn_id)
        if row is None:
            row = self.devices[conn_id] = DeviceRow(conn_id, now, since=now)
        return row

    def _judge(self, row: DeviceRow, online: bool, now: float, why: str) -> None:
        row.why = why
        if row.online != online or not row.judged:
            row.online, row.since, row.judged = online, now, True

    def on_message(self, topic: str, payload: bytes, now: float) -> str | None:
        """One MQTT message; the conn_id whose row it changed, or None."""
        parsed = topics.parse_topic(self.root, topic)
        if parsed is None:
            return None
        conn_id, leaf = parsed
        row = self._row(conn_id, now)
        if leaf == "status":
            text = payload.decode("utf-8", "replace")
            row.status = text
            if text in ("online", "offline"):
                self._judge(row, text == "online", now, f"status {text}")
            return conn_id
        if leaf == "report":
            try:
                row.report = messages.decode_report(payload)
                row.report_t = now
            except ValueError:
                row.malformed += 1
            return conn_id
        try:
            kind, session, msg_id, _base, line = frames.decode(payload)
        except ValueError:
            row.malformed += 1
            return conn_id
        d = row.up if leaf == "up" else row.down
        if leaf == "up":
            row.last_up = now
            self._judge(row, True, now, "traffic on up")
        else:
            row.last_down = now
        if kind == frames.QOS:
            assert session is not None and msg_id is not None
            d.line(line or "", now, (session, msg_id))
        elif kind == frames.UNRELIABLE:
            d.line(line or "", now, None)
        elif kind == frames.ACK:  # acknowledges a line that went the other way
            (row.down if leaf == "up" else row.up).acked += 1
        return conn_id

    def tick(self, now: float) -> list[str]:
        """Silence judgements; the conn_ids whose row changed."""
        changed = []
        limit = 2 * self.timeout_s
        for conn_id, row in self.devices.items():
            if row.online and now - max(row.since, row.last_up or 0.0) > limit:
                self._judge(row, False, now, f"silent for over {limit:g} s")
                changed.append(conn_id)
        return changed

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """Every row as JSON-ready dicts, sorted by conn_id (numbers numerically)."""
        def key(c: str) -> tuple[int, int, str]:
            return (0, int(c), "") if c.isdigit() else (1, 0, c)

        return [self.devices[c].to_json(now, self.timeout_s) for c in sorted(self.devices,
                                                                              key=key)]
