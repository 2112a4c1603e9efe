"""Typed facade over the sans-I/O core in ``link_core``.

``link_core`` is MicroPython code without annotations. Importing it directly
would make ``mypy --strict`` type-check (and reject) it and every call into it,
so it is loaded through :mod:`importlib` here and described with Protocols:
the rest of ``server_apps`` (and ``virtual_bench.device_double``) is fully
typed against this module only.
"""

from __future__ import annotations

import importlib
from typing import Any, Final, Protocol, cast

_clock: Any = importlib.import_module("link_core.clock")
_names: Any = importlib.import_module("link_core.names")
_frames: Any = importlib.import_module("link_core.frames")
_endpoint: Any = importlib.import_module("link_core.endpoint")
_liveness: Any = importlib.import_module("link_core.liveness")
_device_watch: Any = importlib.import_module("link_core.device_watch")
_control: Any = importlib.import_module("link_core.control")

# (kind, session, msg_id, base, line) as returned by frames.decode
Frame = tuple[str, str | None, int | None, int | None, str | None]

TICKS_MAX: Final[int] = int(_clock.TICKS_MAX)
MAX_LINE: Final[int] = int(_names.MAX_LINE)
KIND_QOS: Final[str] = str(_frames.QOS)
KIND_UNRELIABLE: Final[str] = str(_frames.UNRELIABLE)
KIND_ACK: Final[str] = str(_frames.ACK)
KIND_HEARTBEAT: Final[str] = str(_frames.HB)
HEARTBEAT: Final[bytes] = bytes(_frames.HEARTBEAT)
ONLINE: Final[str] = str(_names.ONLINE)
OFFLINE: Final[str] = str(_names.OFFLINE)
RX_WINDOW: Final[int] = int(_endpoint.RX_WINDOW)
MAX_SESSIONS: Final[int] = int(_endpoint.MAX_SESSIONS)  # peer sessions a Receiver keeps
TX_WINDOW_PYBOARD: Final[int] = int(_endpoint.TX_WINDOW_PYBOARD)
TX_WINDOW_SERVER: Final[int] = int(_endpoint.TX_WINDOW_SERVER)


class Sender(Protocol):
    """link_core.endpoint.Sender (PROTOCOL.md 3.1)."""

    session: str
    window: int
    timeout_ms: int
    next_id: int

    @property
    def in_flight(self) -> int: ...
    def can_send(self) -> bool: ...
    def idle(self) -> bool: ...
    def send(self, line: str | bytes, now_ms: int) -> bytes: ...
    def unreliable(self, line: str | bytes) -> bytes: ...
    def on_ack(self, session: str | None, msg_id: int | None) -> bool: ...
    def due(self, now_ms: int, peer_up: bool = True) -> list[bytes]: ...
    def resend_all(self, now_ms: int) -> list[bytes]: ...
    def next_deadline(self) -> int | None: ...
    def snapshot(self) -> dict[str, Any]: ...


class Receiver(Protocol):
    """link_core.endpoint.Receiver (PROTOCOL.md 3.2)."""

    session: str | None
    expected: int

    def on_frame(self, frame: Frame) -> tuple[bytes | None, list[str]]: ...
    def snapshot(self) -> dict[str, Any]: ...
    def restore(self, snap: dict[str, Any]) -> None: ...


class ServerWatch(Protocol):
    """link_core.liveness.ServerWatch: the device end's view of the server (PROTOCOL.md 4.4)."""

    timeout_ms: int

    def connected(self, now_ms: int) -> None: ...
    def disconnected(self) -> None: ...
    def published(self, now_ms: int) -> None: ...
    def heard(self, now_ms: int) -> None: ...
    def heartbeat_due(self, now_ms: int) -> bool: ...
    def heartbeat_sent(self, now_ms: int) -> None: ...
    def reachable(self, now_ms: int) -> bool: ...
    def unanswered(self, now_ms: int) -> bool: ...


class DeviceWatch(Protocol):
    """link_core.device_watch.DeviceWatch: the server's view of one device (PROTOCOL.md 4.4)."""

    timeout_ms: int
    online: bool
    last_heard: int

    def heard(self, now_ms: int) -> bool: ...
    def status(self, online: bool, now_ms: int) -> bool: ...
    def silent(self, now_ms: int) -> bool: ...
    def lost(self) -> bool: ...
    def answer_due(self, now_ms: int) -> bool: ...
    def resend_due(self, now_ms: int) -> bool: ...


def server_watch(timeout_ms: int) -> ServerWatch:
    return cast(ServerWatch, _liveness.ServerWatch(timeout_ms))


def device_watch(timeout_ms: int) -> DeviceWatch:
    return cast(DeviceWatch, _device_watch.DeviceWatch(timeout_ms))


def qos_of(frame: bytes) -> int:
    """MQTT QoS of an end-to-end frame: 1 for ``q``, 0 otherwise (PROTOCOL.md 4.1)."""
    return int(_liveness.qos_of(frame))


def may_write(reachable: bool, sender: Sender, qos: bool, wait: bool) -> bool:
    """Write admission (PROTOCOL.md 3.1): reachable, window room, and with ``wait`` idle."""
    return bool(_liveness.may_write(reachable, sender, qos, wait))


QOS_STATUS: Final[int] = int(_liveness.QOS_STATUS)


class Topics(Protocol):
    root: str
    conn_id: str
    up: str
    down: str
    status: str


def make_sender(session: str, window: int, timeout_ms: int) -> Sender:
    return cast(Sender, _endpoint.Sender(session, window, timeout_ms))


def restore_sender(snap: dict[str, Any], now_ms: int | None = None) -> Sender:
    """``ValueError`` on a malformed snapshot."""
    return cast(Sender, _endpoint.Sender.restore(snap, now_ms))


def make_receiver(window: int = RX_WINDOW) -> Receiver:
    return cast(Receiver, _endpoint.Receiver(window))


def new_session(random4: bytes) -> str:
    return str(_frames.new_session(random4))


def decode(payload: bytes | bytearray | memoryview) -> Frame:
    """Parse one end-to-end frame; ``ValueError`` on anything malformed."""
    return cast(Frame, _frames.decode(payload))


def check_conn_id(conn_id: str) -> str:
    return str(_names.check_conn_id(conn_id))


def check_root(root: str) -> str:
    return str(_names.check_root(root))


def check_setting(name: str, value: Any) -> Any:
    """``value`` if it is valid for the device setting ``name`` (link_core/schema.py);
    ``ValueError`` with the one-line error the boards give otherwise."""
    return _control.check_setting(name, value)


def check_line(line: str | bytes) -> str:
    """The line as str without its one optional trailing newline; ``ValueError`` otherwise."""
    return str(_names.check_line(line))


def client_id(conn_id: str) -> str:
    return str(_names.client_id(conn_id))


def wildcard(root: str, leaf: str) -> str:
    return str(_names.wildcard(root, leaf))


def topics(root: str, conn_id: str) -> Topics:
    return cast(Topics, _names.Topics(root, conn_id))


def parse_topic(root: str, topic: str | bytes) -> tuple[str, str] | None:
    return cast("tuple[str, str] | None", _names.parse_topic(root, topic))


def ticks_diff(a: int, b: int) -> int:
    return int(_clock.ticks_diff(a, b))


def ticks_add(a: int, d: int) -> int:
    return int(_clock.ticks_add(a, d))
