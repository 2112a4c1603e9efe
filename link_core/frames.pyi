# Types of link_core/frames.py for mypy; the .py stays MicroPython code without annotations.
from typing import Final, NamedTuple

_Line = str | bytes | bytearray | memoryview

QOS: Final[str]
UNRELIABLE: Final[str]
ACK: Final[str]
HB: Final[str]
HEARTBEAT: Final[bytes]
ID_MOD: Final[int]
ID_MASK: Final[int]
SESSION_LEN: Final[int]

class Frame(NamedTuple):
    """A decoded end-to-end frame; fields a kind does not have are None."""

    kind: str
    session: str | None
    msg_id: int | None
    base: int | None
    line: str | None

def new_session(random4: bytes | bytearray) -> str: ...
def check_session(session: object) -> str: ...
def encode_qos(session: str, msg_id: int, base: int, line: _Line) -> bytes: ...
def qos_raw(session_b: bytes, msg_id: int, base: int, data: bytes) -> bytes: ...
def encode_unreliable(session: str, line: _Line) -> bytes: ...
def encode_ack(session: str, msg_id: int) -> bytes: ...
def decode(payload: bytes | bytearray | memoryview | str) -> Frame: ...
