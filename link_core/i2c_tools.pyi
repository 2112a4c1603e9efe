# Types of link_core/i2c_tools.py for mypy; the .py stays MicroPython code without annotations.
from typing import Final, overload

from link_core.i2c_link import LinkEndpoint

MORE: Final[int]
HOLD: Final[int]
SYNC: Final[int]
FRESH: Final[int]
VERSION: Final[int]
MEM_SIZE: Final[int]
ACTIVE_POLL_MS: Final[int]
IDLE_POLL_MS: Final[int]
IDLE_AFTER_MS: Final[int]
EXCHANGE_TIMEOUT_MS: Final[int]
KEEPALIVE_TIMEOUT_MS: Final[int]
RESET_PULSE_MS: Final[int]
BOOT_WAIT_MS: Final[int]
SYNC_RETRY_MS: Final[int]
SYNC_TIMEOUT_MS: Final[int]

_Buf = bytes | bytearray | memoryview

def counters(ep: LinkEndpoint) -> dict[str, int]: ...
def crc16(data: _Buf, crc: int = 0xFFFF) -> int: ...
@overload
def encode_block(flags: int, seq: int, ack: int, payload: _Buf = b"",
                 buf: None = None) -> bytes: ...
@overload
def encode_block(flags: int, seq: int, ack: int, payload: _Buf,
                 buf: bytearray | memoryview) -> int: ...

class Block:
    flags: int
    seq: int
    ack: int
    payload: bytes
    def __init__(self, flags: int, seq: int, ack: int, payload: bytes) -> None: ...
    @property
    def more(self) -> bool: ...
    @property
    def hold(self) -> bool: ...
    @property
    def sync(self) -> bool: ...
    @property
    def fresh(self) -> bool: ...

def decode_block(buf: _Buf) -> Block | None: ...


class PollPolicy:
    active_poll_ms: int
    idle_poll_ms: int
    idle_after_ms: int
    def __init__(self, active_poll_ms: int = ..., idle_poll_ms: int = ...,
                 idle_after_ms: int = ...) -> None: ...
    def kick(self, now_ms: int) -> None: ...
    def delay_ms(self, now_ms: int, moved: bool) -> int: ...
