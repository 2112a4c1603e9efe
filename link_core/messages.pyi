# Types of link_core/messages.py for mypy; the .py stays MicroPython code without annotations.
from typing import Final

_Buf = bytes | bytearray | memoryview

KEEPALIVE: Final[int]
SERVER_UP: Final[int]
REPORT: Final[int]
BAD_WIFI: Final[int]
FRAME_KINDS: Final[bytes]


def is_frame(msg: _Buf) -> bool: ...
def encode_config(cfg: object) -> bytes: ...
def decode_report(msg: _Buf) -> list[int]: ...
def decode_text(msg: _Buf) -> str: ...
