"""Typed access to the sans-I/O core in `link_core` for the CLI.

link_core is MicroPython code without annotations; it is loaded through
importlib (as server_apps/_core.py does) so that mypy checks the CLI against the
small typed surface below instead of the untyped core.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, cast

_names: Any = importlib.import_module("link_core.names")
_frames: Any = importlib.import_module("link_core.frames")
_endpoint: Any = importlib.import_module("link_core.endpoint")
_control: Any = importlib.import_module("link_core.control")

# (kind, session, msg_id, base, line), as returned by link_core.frames.decode
Frame = tuple[str, str | None, int | None, int | None, str | None]

QOS: str = str(_frames.QOS)
UNRELIABLE: str = str(_frames.UNRELIABLE)
ACK: str = str(_frames.ACK)


class Sender(Protocol):
    session: str

    @property
    def in_flight(self) -> int: ...
    def idle(self) -> bool: ...
    def send(self, line: str | bytes, now_ms: int) -> bytes: ...
    def unreliable(self, line: str | bytes) -> bytes: ...
    def on_ack(self, session: str | None, msg_id: int | None) -> bool: ...
    def due(self, now_ms: int, peer_up: bool = True) -> list[bytes]: ...
    def resend_all(self, now_ms: int) -> list[bytes]: ...


def check_conn_id(conn_id: str) -> str:
    return str(_names.check_conn_id(conn_id))


def check_root(root: str) -> str:
    return str(_names.check_root(root))


def check_line(line: str | bytes) -> str:
    return str(_names.check_line(line))


def topics(root: str, conn_id: str) -> tuple[str, str, str]:
    """(up, down, status) topics of one device."""
    t = _names.Topics(root, conn_id)
    return str(t.up), str(t.down), str(t.status)


def parse_topic(root: str, topic: str | bytes) -> tuple[str, str] | None:
    """(conn_id, leaf) of ``<root>/<conn_id>/<up|down|status|report>``; None for others."""
    got = _names.parse_topic(root, topic)
    return None if got is None else (str(got[0]), str(got[1]))


def decode_report(payload: bytes) -> list[int]:
    """[connects, report_no, mem_free(, mem_errors)] of an R report body (PROTOCOL.md 2);
    ValueError when malformed."""
    try:
        return [int(v) for v in _control.decode_report(payload)]
    except (TypeError, IndexError) as exc:
        raise ValueError(f"bad report {payload[:40]!r}: {exc}") from None


def decode(payload: bytes) -> Frame:
    """One end-to-end frame; ValueError when malformed."""
    return cast(Frame, _frames.decode(payload))


def new_sender(random4: bytes, window: int, timeout_ms: int) -> Sender:
    session = _frames.new_session(random4)
    return cast(Sender, _endpoint.Sender(session, window, timeout_ms))
