"""`Bench`: one Pyboard + ESP8266 pair with its WiFi proxy, put together from its parts.

The parts (one job each): board_link.py (the board RPC), pins.py (wires, reset
line), i2c_bus.py, wlan.py, machine_ops.py (reset, watchdogs), injectors.py
(faults); procs.py runs the processes, proxy.py the WiFi route, sniffer.py
watches the bus. This module keeps the lifecycle and the captured output.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from virtual_bench.board_link import BoardConn, BoardLink, OutputLine
from virtual_bench.i2c_bus import I2CBus
from virtual_bench.injectors import FaultInjectors
from virtual_bench.lifecycle import Started, scratch_dir
from virtual_bench.machine_ops import Machine
from virtual_bench.pins import Wires
from virtual_bench.procs import BoardProcess, micropython_binary
from virtual_bench.proxy import TcpProxy
from virtual_bench.sniffer import BusSniffer
from virtual_bench.wiring import (
    ESP,
    ESP_DIR,
    HARD_RESET,
    HW_DIR,
    PWRON_RESET,
    PYBOARD,
    PYBOARD_DIR,
    ROOT,
    WIRE_IDLE,
)
from virtual_bench.wlan import Wlan

log = logging.getLogger("virtual_bench.harness")  # one logger for the whole bench


def _settings_source(settings: dict[str, Any]) -> str:
    lines = ["# Written by virtual_bench.harness for this bench run.\n"]
    for key, value in settings.items():
        lines.append(f"{key} = {value!r}\n")
    return "".join(lines)


# Short timings so the bench recovers in seconds, not minutes (pb_settings names).
BENCH_SETTINGS: dict[str, Any] = {
    "timeout_ms": 1500,
    "report_s": 0,
    "ssid": "bench-ap",
    "wifi_password": "bench-pw",
    "boot_wait_ms": 300,
    "exchange_timeout_ms": 500,
    "keepalive_timeout_ms": 2500,
    "sync_timeout_ms": 4000,
}



class Bench(BoardLink, Wires, I2CBus, Wlan, Machine, FaultInjectors, Started):
    """One virtual Pyboard + ESP8266 pair wired together, with its WiFi proxy.

    `broker` is the (host, port) the proxy forwards to. `settings` are written to
    the Pyboard's pb_settings.py over BENCH_SETTINGS; `conn_id`, `host` and `port`
    (the proxy's) are filled in by the bench.
    """

    def __init__(
        self,
        broker: tuple[str, int],
        *,
        conn_id: str = "1",
        name: str | None = None,
        settings: dict[str, Any] | None = None,
        pyboard_module: str = "pb_link.pb_client",
        pyboard_paths: Sequence[str | Path] = (),
        i2c_clock_hz: int | None = 400_000,
        wifi_at_boot: bool = True,
        broker_at_boot: str = "up",
        wifi_join_s: float = 0.05,
        workdir: str | Path | None = None,
        micropython: str | None = None,
        esp_heapsize: str | None = None,
        esp_main: str | Path | None = None,
        start_esp: bool = True,
        start_pyboard: bool = True,
        proxy_port: int = 0,
        keep_lines: int = 20000,
        on_line: Callable[[Bench, OutputLine], None] | None = None,
        on_bus: Callable[[Bench, str, bytes], None] | None = None,
    ) -> None:
        self.broker = broker
        self.conn_id = str(conn_id)
        self.name = name or f"bench{self.conn_id}"
        self.settings = dict(BENCH_SETTINGS)
        self.settings.update(settings or {})
        self.pyboard_module = pyboard_module
        self.pyboard_paths = [str(p) for p in pyboard_paths]
        self.i2c_clock_hz = i2c_clock_hz
        self.wifi_up = wifi_at_boot
        self.broker_mode = broker_at_boot
        self.wifi_join_s = wifi_join_s
        self.workdir = Path(workdir) if workdir else None
        self.micropython = micropython or micropython_binary()
        self.esp_heapsize = esp_heapsize
        self.esp_main = Path(esp_main) if esp_main else ESP_DIR / "main.py"
        self.start_esp = start_esp
        self.start_pyboard = start_pyboard
        self.proxy_port = proxy_port
        self.on_line = on_line
        self.on_bus = on_bus
        self.sniffer = BusSniffer(self._bus_message)
        self.lines: deque[OutputLine] = deque(maxlen=keep_lines)
        self.line_count = 0
        self.events: list[tuple[float, str, str]] = []  # (time, kind, detail)
        self.stats: dict[str, int] = dict.fromkeys((
            "i2c_to_pyboard_transactions", "i2c_to_pyboard_bytes",
            "i2c_to_esp_transactions", "i2c_to_esp_bytes", "i2c_bus_bytes",
            "i2c_errors", "i2c_corrupted", "i2c_mismatch",
            "syn_edges", "ack_edges", "reset_pulses", "esp_boots", "pyboard_boots",
            "wifi_cuts", "esp_crashes", "esp_hangs", "watchdog_resets"), 0)
        self.conns: dict[str, BoardConn | None] = {PYBOARD: None, ESP: None}
        self.levels = dict(WIRE_IDLE)
        self.procs: dict[str, BoardProcess] = {}
        self.proxy: TcpProxy | None = None
        self.port = 0
        self.bus_free_at = 0.0
        self.wifi_since = time.monotonic()
        self.wlan_stored: tuple[str, str] | None = None  # the ESP8266's flash-stored credentials
        self.wlan_sta_stored = False
        self.reset_cause = {PYBOARD: PWRON_RESET, ESP: PWRON_RESET}
        self._esp_held = False
        self._corrupt_count = 0
        self._corrupt_p = 0.0
        self._corrupt_until: float | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._new_line = asyncio.Event()
        self._settling = False
        self._resettle = False
        self._closing = False
        self._tmp: Any = None
        self._rng = random.Random()

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self.workdir, self._tmp = scratch_dir(self.workdir, f"pblink-{self.name}-")
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self.proxy = TcpProxy(*self.broker, port=self.proxy_port)
        await self.proxy.start(self._proxy_mode())
        settings_dir = self.workdir / "pyboard_fs"
        settings_dir.mkdir(exist_ok=True)
        pb_settings = dict(self.settings)
        pb_settings.update(conn_id=self.conn_id, host="127.0.0.1", port=self.proxy.port)
        (settings_dir / "pb_settings.py").write_text(_settings_source(pb_settings))
        env_base = {k: v for k, v in os.environ.items() if not k.startswith("MICROPY")}
        env_base["PBLINK_BENCH"] = f"127.0.0.1:{self.port}"
        pyb_path = [str(HW_DIR), str(settings_dir), *self.pyboard_paths, str(PYBOARD_DIR),
                    str(ROOT), ".frozen"]
        self.procs[PYBOARD] = BoardProcess(
            self, PYBOARD, [self.micropython, "-c", f"import {self.pyboard_module}"],
            dict(env_base, PBLINK_BOARD=PYBOARD, MICROPYPATH=os.pathsep.join(pyb_path)),
            settings_dir)
        esp_argv = [self.micropython]
        if self.esp_heapsize:
            esp_argv += ["-X", f"heapsize={self.esp_heapsize}"]
        esp_argv.append(str(self.esp_main))
        esp_path = [str(HW_DIR), str(self.esp_main.parent), str(ROOT), ".frozen"]
        self.procs[ESP] = BoardProcess(
            self, ESP, esp_argv,
            dict(env_base, PBLINK_BOARD=ESP, MICROPYPATH=os.pathsep.join(esp_path)),
            self.esp_main.parent)
        self._spawn(self._watchdogs())
        if self.start_esp:
            await self._start_board(ESP)
        if self.start_pyboard:
            await self._start_board(PYBOARD)

    async def stop(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        for proc in self.procs.values():
            await proc.stop()
        for conn in self.conns.values():
            if conn is not None:
                conn.alive = False
                conn.writer.close()
        if self.proxy is not None:
            await self.proxy.stop()
        if self._server is not None:
            self._server.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: background task failed", self.name, exc_info=task.exception())

    def _event(self, kind: str, detail: str = "") -> None:
        self.events.append((time.monotonic(), kind, detail))
        log.info("%s: %s %s", self.name, kind, detail)

    async def _start_board(self, board: str) -> None:
        if self._closing:
            return
        proc = self.procs[board]
        if proc.alive:
            return
        self.stats["esp_boots" if board == ESP else "pyboard_boots"] += 1
        await proc.start()
        self._event("boot", f"{board} #{proc.boot}")

    def _kill_board(self, board: str, cause: int) -> None:
        """The board's process is gone at once: outputs float, its bus drops out."""
        self.reset_cause[board] = cause
        proc = self.procs.get(board)
        if proc is not None:
            proc.kill()
        conn = self.conns.get(board)
        if conn is not None:
            self._detach(conn)

    async def restart_board(self, board: str, cause: int = HARD_RESET) -> None:
        self._kill_board(board, cause)
        await asyncio.sleep(0)
        await self._start_board(board)

    # ------------------------------------------------------------------- output

    def _output(self, board: str, boot: int, stream: str, text: str) -> None:
        line = OutputLine(time.monotonic(), board, boot, stream, text)
        self.lines.append(line)
        self.line_count += 1
        if self.workdir is not None:
            with open(self.workdir / f"{board}.log", "a") as fh:
                fh.write(f"{line.t:.3f} #{boot} {stream}: {text}\n")
        if self.on_line is not None:
            try:
                self.on_line(self, line)
            except Exception:
                log.exception("on_line callback failed")
        self._new_line.set()
        self._new_line = asyncio.Event()

    def output(self, board: str | None = None) -> list[str]:
        """Every captured line (of one board), oldest first."""
        return [ln.text for ln in self.lines if board is None or ln.board == board]

    async def wait_output(self, pattern: str, board: str | None = PYBOARD,
                          timeout: float = 15.0,  # noqa: ASYNC109 - a plain API for tests
                          since: int = 0) -> re.Match[str]:
        """Wait until a line (the `since`-th captured line or later) matches `pattern`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = since
        while True:
            lines = list(self.lines)
            first = self.line_count - len(lines)
            for ln in lines[max(0, seen - first):]:
                if board is None or ln.board == board:
                    m = regex.search(ln.text)
                    if m:
                        return m
            seen = self.line_count
            left = deadline - time.monotonic()
            if left <= 0:
                tail = "\n".join(f"  {ln.board}: {ln.text}" for ln in list(self.lines)[-40:])
                raise TimeoutError(f"{self.name}: no output matching {pattern!r} within "
                                   f"{timeout} s; last lines:\n{tail}")
            event = self._new_line
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), left)

    def _bus_message(self, direction: str, msg: bytes) -> None:
        if self.on_bus is not None:
            self.on_bus(self, direction, msg)

    # ------------------------------------------------------------------ faults
