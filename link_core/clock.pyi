# Types of link_core/clock.py for mypy; the .py stays MicroPython code without annotations.
from typing import Final

TICKS_PERIOD: Final[int]
TICKS_MAX: Final[int]

def ticks_diff(a: int, b: int) -> int: ...
def ticks_add(a: int, d: int) -> int: ...
