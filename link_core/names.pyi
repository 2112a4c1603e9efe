# Types of link_core/names.py for mypy; the .py stays MicroPython code without annotations.
from typing import Final

MAX_LINE: Final[int]
MAX_MESSAGE: Final[int]
UP: Final[str]
DOWN: Final[str]
STATUS: Final[str]
REPORT: Final[str]
ONLINE: Final[str]
OFFLINE: Final[str]

def check_conn_id(conn_id: object) -> str: ...
def check_root(root: object) -> str: ...
def utf8_valid(data: bytes | bytearray | memoryview) -> bool: ...
def client_id(conn_id: str) -> str: ...

class Topics:
    root: str
    conn_id: str
    base: str
    up: str
    down: str
    status: str
    report: str
    def __init__(self, root: str, conn_id: str) -> None: ...
