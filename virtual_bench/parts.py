"""What the parts of `Bench` share, declared once.

`Bench` (virtual_bench/bench.py) is put together from parts, one module each
(board_link, pins, i2c_bus, wlan, machine_ops, injectors). Each part is a class
whose methods read the bench's state and call into the other parts; it derives
from `BenchParts`, which declares that state (set by ``Bench.__init__``) and
those methods (defined in the part named beside each), so a part type-checks
on its own. `BenchParts` adds nothing at run time.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from virtual_bench.board_link import BoardConn
    from virtual_bench.procs import BoardProcess
    from virtual_bench.proxy import TcpProxy
    from virtual_bench.sniffer import BusSniffer


class BenchParts:
    """The state and the cross-part methods of a `Bench` (see the module docstring)."""

    name: str
    conn_id: str
    settings: dict[str, Any]
    i2c_clock_hz: int | None
    wifi_up: bool
    broker_mode: str
    wifi_join_s: float
    sniffer: BusSniffer
    stats: dict[str, int]
    conns: dict[str, BoardConn | None]
    levels: dict[str, int]
    procs: dict[str, BoardProcess]
    proxy: TcpProxy | None
    bus_free_at: float
    wifi_since: float
    wlan_stored: tuple[str, str] | None  # the ESP8266's flash-stored credentials
    wlan_sta_stored: bool
    reset_cause: dict[str, int]
    slave_stretch_s: float
    _esp_held: bool
    _corrupt_count: int
    _corrupt_p: float
    _corrupt_until: float | None
    _settling: bool
    _resettle: bool
    _closing: bool
    _rng: random.Random

    if TYPE_CHECKING:
        # bench.py
        def _spawn(self, coro: Any) -> asyncio.Task[Any]: ...
        def _event(self, kind: str, detail: str = "") -> None: ...
        async def _start_board(self, board: str) -> None: ...
        def _kill_board(self, board: str, cause: int) -> None: ...
        async def restart_board(self, board: str, cause: int = ...) -> None: ...
        # board_link.py
        def _detach(self, conn: BoardConn) -> None: ...
        # pins.py
        def _settle(self) -> None: ...
        # i2c_bus.py
        def _cpu_mem_write(self, conn: BoardConn, addr: int, off: int, data: bytes) -> None: ...
