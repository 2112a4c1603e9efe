"""Typed access to the device settings table, ``link_core/schema.py``, for the host side.

The table is MicroPython data (one flat tuple, the help in ``#:`` comments so
that the boards do not hold it); here each row is a ``Setting``. The
checks are link_core's own (``link_core.control.check_setting``), so a bad
value gets the same one-line error in ``pblink install``, on the boards and in
``LinkServer``. ``python -m pblink.settings`` prints the settings table of
docs/PYBOARD.md (a test holds the doc to it).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any, NamedTuple

from link_core import control as _control
from link_core import schema as _schema


class Setting(NamedTuple):
    """One row of link_core/schema.py (its docstring defines the fields)."""

    name: str
    type: str  # int, str, bool, dict, host, id, root, choice
    default: Any  # a dict row's None stands for {}
    low: Any  # int: lowest value; str, host, id, root: fewest UTF-8 bytes; choice: the values;
    # dict: the use of the rows that are its keys ("bridge"), None for free keys
    high: Any  # int: highest value; str, host, id, root: most UTF-8 bytes
    use: str  # link (a C message entry), tuning (config[10]), bridge (a bridge_tuning key), board
    help: str  # the row's "#:" comment lines in link_core/schema.py, joined


def _help_comments(columns: int) -> list[str]:
    """The help of each row: the `#:` comment lines right above the row's first value."""
    path = Path(_schema.__file__)
    lines = path.read_text(encoding="utf-8").splitlines()
    tree = ast.parse("\n".join(lines))
    table = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "SETTINGS" for t in node.targets))
    assert isinstance(table, ast.Tuple)
    helps = []
    for first in table.elts[::columns]:
        above: list[str] = []
        number = first.lineno - 2  # the line above, 0-based
        while number >= 0 and lines[number].strip().startswith("#:"):
            above.insert(0, lines[number].strip()[2:].strip())
            number -= 1
        helps.append(" ".join(above))
    return helps


def _rows() -> tuple[Setting, ...]:
    flat = _schema.SETTINGS
    columns = int(_schema.COLUMNS)
    helps = _help_comments(columns)
    rows = []
    for k in range(0, len(flat), columns):
        name, kind, default, low, high, use = flat[k:k + columns]
        help_text = helps[k // columns]
        rows.append(Setting(str(name), str(kind), default, low, high, str(use), help_text))
    return tuple(rows)


SETTINGS: tuple[Setting, ...] = _rows()
# The names of pb_settings.py (config.py reads them), in the table's order: not the "bridge"
# rows, which are keys of bridge_tuning
NAMES: tuple[str, ...] = tuple(s.name for s in SETTINGS if s.use != "bridge")
BRIDGE_KEYS: tuple[str, ...] = tuple(s.name for s in SETTINGS if s.use == "bridge")
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}  # every row, bridge keys too
CONFIG_ENTRIES: int = int(_schema.CONFIG_ENTRIES)  # SETTINGS[:CONFIG_ENTRIES]: the C message


def check_setting(name: str, value: Any) -> Any:
    """`value` if it is valid for setting `name`; ValueError with the one-line error otherwise."""
    return _control.check_setting(name, value)


def check_login(user: Any, password: Any) -> None:
    """ValueError for an MQTT password without a user name (MQTT-3.1.2-22)."""
    _control.check_login(user, password)


def int_range(name: str) -> tuple[int, int]:
    """(lowest, highest) of the int setting `name`, e.g. for an argparse type."""
    row = BY_NAME[name]
    if row.type != "int":
        raise ValueError(f"setting {name} is a {row.type}, not an int")
    return int(row.low), int(row.high)


def shown_default(s: Setting) -> str:
    return "`{}`" if s.type == "dict" and s.default is None else f"`{s.default!r}`"


def shown_range(s: Setting) -> str:
    if s.type == "int":
        return f"{s.low:,} to {s.high:,}"
    if s.type == "choice":
        return ", ".join(f"`{v!r}`" for v in s.low)
    if s.type == "bool":
        return "`True`, `False`"
    if s.type == "dict":
        return f"the `{s.low}` rows as keys" if s.low else "str keys"
    return f"{s.low} to {s.high} bytes"


_READ_BY = {"link": "`C` entry {index}", "tuning": "`config[10]`",
            "bridge": "`bridge_tuning` key", "board": "`config.py`"}


def markdown_table() -> str:
    """The settings table of docs/PYBOARD.md, one line a row of link_core/schema.py
    (use "bridge": a key of bridge_tuning, `bridge` in the "carried in" column)."""
    lines = ["| name | type | default | range | carried in | meaning |",
             "|---|---|---|---|---|---|"]
    for index, s in enumerate(SETTINGS):
        where = _READ_BY[s.use].format(index=index)
        meaning = s.help.replace("|", "\\|")
        lines.append(f"| `{s.name}` | {s.type} | {shown_default(s)} | {shown_range(s)} | "
                     f"{where} | {meaning} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    sys.stdout.write(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
