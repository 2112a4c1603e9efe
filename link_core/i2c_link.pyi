# Types of link_core/i2c_link.py for mypy; the .py stays MicroPython code without annotations.
from typing import Final, overload

_Buf = bytes | bytearray | memoryview

MORE: Final[int]
HOLD: Final[int]
SYNC: Final[int]
FRESH: Final[int]
VERSION: Final[int]
HEADER: Final[int]
CHUNK_MAX: Final[int]
BLOCK_MAX: Final[int]
I2C_ADDR: Final[int]
MEM_INITIATOR: Final[int]
MEM_RESPONDER: Final[int]
INITIATOR: Final[str]
RESPONDER: Final[str]

def check_block(buf: _Buf) -> int: ...
class LinkEndpoint:
    role: str
    sync_message: bytes | None
    synced: bool
    peer_fresh: bool
    peer_hold: bool
    frames_out: int
    frames_ok: int
    frames_bad: int
    bytes_out: int
    bytes_in: int
    messages_out: int
    messages_in: int
    too_long: int
    dropped: int
    syncs: int
    peer_reboots: int
    resets: int
    def __init__(self, role: str, tx_queue: int = ..., rx_queue: int = ...) -> None: ...
    def reset(self) -> None: ...
    def can_queue(self) -> bool: ...
    @property
    def tx_pending(self) -> int: ...
    @property
    def rx_pending(self) -> int: ...
    @property
    def busy(self) -> bool: ...
    def counters(self) -> dict[str, int]: ...
    def queue_message(self, msg: _Buf, first: bool = False) -> bool: ...
    def pop_message(self) -> bytes | None: ...
    @overload
    def build_block(self, buf: None = None) -> bytes: ...
    @overload
    def build_block(self, buf: bytearray | memoryview) -> int: ...
    def on_block(self, data: _Buf) -> bool: ...
