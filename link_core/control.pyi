# Types of link_core/control.py for mypy; the .py stays MicroPython code without annotations.
from typing import Final, overload

_Buf = bytes | bytearray | memoryview
# One config entry or a report entry as JSON gives them: str, int, bool, or the tuning dict.
_Value = str | int | bool | dict[str, str | int | bool]

CONFIG: Final[int]
QOS: Final[int]
UNRELIABLE: Final[int]
ACK: Final[int]
SERVER_DOWN: Final[int]
BAD_BROKER: Final[int]
ERROR: Final[int]
MSG_KEEPALIVE: Final[bytes]
MSG_SERVER_UP: Final[bytes]
MSG_SERVER_DOWN: Final[bytes]
MSG_BAD_WIFI: Final[bytes]

def dump_list(items: list[_Value] | tuple[_Value, ...]) -> bytes: ...
def check_setting(name: str, value: object) -> _Value: ...
@overload
def group(use: str, given: dict[str, _Value], out: None = None) -> dict[str, _Value]: ...
@overload
def group(use: str, given: dict[str, _Value], out: list[_Value]) -> list[_Value]: ...
def check_login(user: object, password: object) -> None: ...
def check_config(cfg: object) -> list[_Value]: ...
def decode_config(msg: _Buf) -> list[_Value]: ...
def encode_report(rep: list[int] | tuple[int, ...]) -> bytes: ...
def encode_text(kind: int, text: str) -> bytes: ...
