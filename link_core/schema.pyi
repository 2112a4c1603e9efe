# Types of link_core/schema.py for mypy; the .py stays MicroPython data.
from typing import Any, Final

COLUMNS: Final[int]
CONFIG_ENTRIES: Final[int]
ORDERED: Final[tuple[str, ...]]
# name, type, default, low, high, use: COLUMNS cells a row, one flat tuple; a
# cell's type depends on its column (and the row's type), read by index on the
# boards, so Any here; pblink.settings.Setting is the typed view of a row.
SETTINGS: Final[tuple[Any, ...]]

def const(x: int) -> int: ...
