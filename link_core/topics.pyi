# Types of link_core/topics.py for mypy; the .py stays MicroPython code without annotations.
from typing import Final

LEAVES: Final[tuple[str, str, str, str]]

def wildcard(root: str, leaf: str) -> str: ...
def parse_topic(root: str, topic: str | bytes | bytearray) -> tuple[str, str] | None: ...
