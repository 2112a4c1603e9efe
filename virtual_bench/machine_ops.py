"""Part of `Bench`: `machine.reset`, `reset_cause`, `unique_id` and the watchdogs."""

from __future__ import annotations

import asyncio
import time

from virtual_bench.board_link import BoardConn
from virtual_bench.parts import BenchParts
from virtual_bench.wiring import PYBOARD, SOFT_RESET, WDT_RESET


class Machine(BenchParts):
    """Requests `reset`, `reset_cause`, `uid`, `wdt`, `wdt_feed`; the watchdog task."""

    def _op_reset(self, conn: BoardConn) -> None:
        self._spawn(self.restart_board(conn.name, SOFT_RESET))

    def _op_reset_cause(self, conn: BoardConn) -> int:
        return self.reset_cause[conn.name]

    def _op_uid(self, conn: BoardConn) -> str:
        import hashlib

        digest = hashlib.sha256(f"{self.name}/{conn.name}".encode()).digest()
        return digest[: 12 if conn.name == PYBOARD else 4].hex()

    def _op_wdt(self, conn: BoardConn, timeout_ms: int) -> None:
        conn.wdt_ms = int(timeout_ms)
        conn.wdt_fed = time.monotonic()

    def _op_wdt_feed(self, conn: BoardConn) -> None:
        conn.wdt_fed = time.monotonic()

    async def _watchdogs(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            for board, conn in list(self.conns.items()):
                if conn is None or conn.wdt_ms is None:
                    continue
                if self.procs[board].stopped:
                    continue  # a stopped CPU's watchdog would fire too, but hang_esp models
                    # a hang the board's own watchdog does not catch
                if now - conn.wdt_fed > conn.wdt_ms / 1000:
                    self.stats["watchdog_resets"] += 1
                    self._event("reset", f"{board} watchdog")
                    self._spawn(self.restart_board(board, WDT_RESET))
                    conn.wdt_ms = None
