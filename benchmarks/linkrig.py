"""One device pair on the virtual bench with a LinkServer in this process.

The rig behind the latency, throughput and recovery families: a broker child
process (Mosquitto when installed, else the embedded amqtt), a
:class:`server_apps.LinkServer` in the benchmark's own process (the process
that is also the bench harness, so the bus, the boards' output and the server
app are all timed on one clock, ``time.monotonic()``), and one
:class:`virtual_bench.harness.Bench` whose Pyboard runs
``benchmarks/device/pb_bench_agent.py`` (an AppBase subclass) and whose
ESP8266 runs the real bridge.

The server side answers the agent: ``x i`` is echoed as ``e i`` (with the
current ``echo_qos``), ``b ...`` and ``s i`` lines are counted and timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import Broker, Context
from server_apps import LinkServer
from virtual_bench.harness import PYBOARD, Bench, OutputLine

AGENT_DIR = Path(__file__).resolve().parent / "device"
TIMEOUT_MS = 1500  # the link's timeout_ms on both ends (the default)


@dataclass
class ServerSide:
    """What the server application saw, on the harness clock."""

    echo_qos: bool = True
    rx_x: dict[int, float] = field(default_factory=dict)  # echo probe i -> received
    tx_e: dict[int, float] = field(default_factory=dict)  # echo reply i -> write() called
    rx_s: dict[int, float] = field(default_factory=dict)  # stream line i -> received
    b_count: int = 0
    b_bytes: int = 0
    b_first: float = 0.0
    b_last: float = 0.0
    other: int = 0

    def reset_burst(self) -> None:
        self.b_count = self.b_bytes = 0
        self.b_first = self.b_last = 0.0


class LinkRig:
    def __init__(self, ctx: Context, name: str, *, broker: Broker | None = None,
                 settings: dict[str, Any] | None = None, i2c_clock_hz: int = 400_000,
                 state_file: bool = True, esp_heapsize: int | None = None,
                 **bench_kw: Any) -> None:
        self.ctx = ctx
        self.workdir = ctx.subdir(f"{name}-{secrets.token_hex(2)}")
        self.own_broker = broker is None
        self.broker = broker or Broker("mosquitto" if ctx.mosquitto else "amqtt",
                                       self.workdir, ctx.mosquitto)
        self.settings = dict(settings or {})
        self.i2c_clock_hz = i2c_clock_hz
        self.state_file = state_file
        self.esp_heapsize = esp_heapsize
        self.bench_kw = bench_kw  # more Bench options (e.g. esp_main for experiments)
        self.server: LinkServer | None = None
        self.conn: Any = None
        self.bench: Bench | None = None
        self.side = ServerSide()
        self.lines: list[OutputLine] = []
        self._new = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def broker_kind(self) -> str:
        return self.broker.kind

    def on_line(self, _bench: Bench, ln: OutputLine) -> None:
        if ln.board == PYBOARD:
            self.lines.append(ln)
            self._new.set()

    async def start(self) -> None:
        if self.own_broker:
            await self.broker.start()
        await self.start_server()
        settings = {"timeout_ms": TIMEOUT_MS, **self.settings}
        self.bench = Bench(self.broker.address, conn_id="1", settings=settings,
                           pyboard_module="pb_bench_agent", pyboard_paths=[AGENT_DIR],
                           i2c_clock_hz=self.i2c_clock_hz, workdir=self.workdir / "bench",
                           on_line=self.on_line, keep_lines=2000,
                           esp_heapsize=str(self.esp_heapsize) if self.esp_heapsize else None,
                           **self.bench_kw)
        await self.bench.start()
        await self.wait_line(r"^AGENT up$", timeout=60)

    async def start_server(self) -> None:
        state = self.workdir / "server_state.json" if self.state_file else None
        self.server = LinkServer(*self.broker.address, timeout_ms=TIMEOUT_MS,
                                 state_path=state, client_id=f"pblink-bench-{secrets.token_hex(3)}")
        await self.server.start()
        self.conn = await self.server.connection("1")
        self._task = asyncio.create_task(self._serve())

    async def stop_server(self) -> None:
        if self.server is not None:
            await self.server.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self.server = None

    async def stop(self) -> None:
        if self.bench is not None:
            await self.bench.stop()
        await self.stop_server()
        if self.own_broker:
            await self.broker.stop()

    async def _serve(self) -> None:
        side = self.side
        conn = self.conn
        async for line in conn:
            now = time.monotonic()
            c = line[:1]
            if c == "b":
                if side.b_count == 0:
                    side.b_first = now
                side.b_last = now
                side.b_count += 1
                side.b_bytes += len(line) - 1
            elif c == "x":
                i = int(line.split()[1])
                side.rx_x.setdefault(i, now)
                side.tx_e.setdefault(i, time.monotonic())
                await conn.write(f"e {i}", qos=side.echo_qos, wait=True)
            elif c == "s":
                side.rx_s.setdefault(int(line.split()[1]), now)
            else:
                side.other += 1

    # -- the agent's output -------------------------------------------------------------

    async def wait_line(self, pattern: str, timeout: float = 60.0,  # noqa: ASYNC109
                        since: int = 0) -> tuple[int, OutputLine, re.Match[str]]:
        """The first Pyboard line at index >= since matching pattern."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = since
        while True:
            while i < len(self.lines):
                m = regex.search(self.lines[i].text)
                if m:
                    return i, self.lines[i], m
                i += 1
            left = deadline - time.monotonic()
            if left <= 0:
                tail = "\n".join(f"  {ln.text}" for ln in self.lines[-20:])
                raise TimeoutError(f"no Pyboard line {pattern!r} within {timeout} s:\n{tail}")
            self._new.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), left)

    def mark(self) -> int:
        return len(self.lines)

    def times(self, prefix: str, since: int = 0) -> dict[int, float]:
        """{i: harness time} of the Pyboard lines "PREFIX i" from index since."""
        out: dict[int, float] = {}
        for ln in self.lines[since:]:
            parts = ln.text.split()
            if len(parts) == 2 and parts[0] == prefix and parts[1].isdigit():
                out.setdefault(int(parts[1]), ln.t)
        return out

    async def command(self, text: str) -> None:
        await self.conn.write(text, qos=True, wait=True)


@contextlib.asynccontextmanager
async def link_rig(ctx: Context, name: str, **kw: Any) -> AsyncIterator[LinkRig]:
    rig = LinkRig(ctx, name, **kw)
    try:
        await rig.start()
        yield rig
    finally:
        await rig.stop()
