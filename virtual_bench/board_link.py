"""The board RPC: the harness's side of each board's TCP line (protocol:
docs/BENCH.md and hw/_vbench.py). The state the harness keeps per live board
(`BoardConn` with its pins, I2C targets and slaves, WLAN and watchdog), the
error a request turns into (`BenchOSError`), a captured output line
(`OutputLine`), and `BoardLink`, the part of `Bench` that reads the
requests and dispatches each to its `_op_<name>` handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from virtual_bench.parts import BenchParts
from virtual_bench.ports import free_udp_port
from virtual_bench.wiring import ESP, IN, PULL_NONE

log = logging.getLogger("virtual_bench.harness")  # one logger for the whole bench


class BenchOSError(Exception):
    """A request the board's fake module turns into OSError(errno)."""

    def __init__(self, errno: int, text: str = "") -> None:
        super().__init__(errno, text)
        self.errno = errno
        self.text = text


@dataclass
class OutputLine:
    t: float  # monotonic seconds
    board: str
    boot: int  # which start of that board's process printed it (1, 2, ...)
    stream: str  # "out" or "err"
    text: str


@dataclass
class PinState:
    mode: int = IN
    pull: int = PULL_NONE
    out: int = 0


@dataclass
class Target:
    """A Pyboard I2CTarget in memory mode, as the bus sees it."""

    bus: str
    mem: bytearray
    trigger: int = 0
    ptr: int = 0


@dataclass
class SlaveOp:
    kind: str  # "recv" or "send"
    n: int
    data: bytes
    done: asyncio.Future[bytes]


@dataclass
class Slave:
    """A Pyboard pyb.I2C in SLAVE mode: recv()/send() calls waiting for the controller."""

    bus: str
    ops: deque[SlaveOp] = field(default_factory=deque)
    posted: asyncio.Event = field(default_factory=asyncio.Event)


class BoardConn:
    """The harness's view of one live board process."""

    def __init__(self, name: str, writer: asyncio.StreamWriter, boot: int) -> None:
        self.name = name
        self.writer = writer
        self.boot = boot
        self.alive = True
        self.pins: dict[str, PinState] = {}
        self.irqs: dict[str, int] = {}
        self.targets: dict[int, Target] = {}
        self.slaves: dict[int, Slave] = {}
        self.controller: tuple[str, str, int, int] | None = None  # scl, sda, freq, timeout_us
        self.sta_active = False
        self.connect_at: float | None = None
        self.wdt_ms: int | None = None
        self.wdt_fed = 0.0

    def send(self, msg: list[Any]) -> None:
        if self.alive and not self.writer.is_closing():
            self.writer.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")



class BoardLink(BenchParts):
    """Part of `Bench`: accept board connections, dispatch their requests."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn: BoardConn | None = None
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    break
                msg = json.loads(raw)
                op = msg[0]
                if op == "hello":
                    conn = self._attach(msg[1], writer)
                    conn.send(["r", free_udp_port()])
                    continue
                if conn is None or not conn.alive:
                    continue  # a process the bench has already declared dead
                if op == "mw":
                    self._cpu_mem_write(conn, msg[1], msg[2], bytes.fromhex(msg[3]))
                    continue
                try:
                    handler = getattr(self, "_op_" + op)
                    result = handler(conn, *msg[1:])
                    if asyncio.iscoroutine(result):
                        result = await result
                except BenchOSError as exc:
                    conn.send(["x", exc.errno, exc.text])
                else:
                    conn.send(["r", result])
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("%s: board link failed", self.name)
        finally:
            if conn is not None and conn.alive:
                self._detach(conn)
            writer.close()

    def _attach(self, board: str, writer: asyncio.StreamWriter) -> BoardConn:
        old = self.conns.get(board)
        if old is not None:
            self._detach(old)
        proc = self.procs.get(board)
        conn = BoardConn(board, writer, proc.boot if proc else 0)
        self.conns[board] = conn
        if board == ESP:
            conn.sta_active = self.wlan_sta_stored
            conn.connect_at = time.monotonic() if self.wlan_stored else None
        return conn

    def _detach(self, conn: BoardConn) -> None:
        conn.alive = False
        if self.conns.get(conn.name) is conn:
            self.conns[conn.name] = None
        for slave in conn.slaves.values():
            for op in slave.ops:
                if not op.done.done():
                    op.done.cancel()
        with contextlib.suppress(Exception):
            conn.writer.close()
        self._settle()

    # ------------------------------------------------------------------ pins
