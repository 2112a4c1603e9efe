"""`AppBench`: your Pyboard app and your server app on the virtual bench, for tests.

The pytest plugin (`pblink.pytest_plugin`, fixtures `pblink_bench` and
`pblink_start`) is built on it; it also works on its own::

    async with AppBench("sensor_app.py:Sensor", "sensor_server.py:app") as bench:
        await bench.wait_server_received(r"^alarm 1$")
        await bench.crash_esp()
        ...

What runs: the embedded amqtt broker (a child process), per device (conn_ids
1..N) a virtual Pyboard running your AppBase subclass under MicroPython wired
to a virtual ESP8266 running the real bridge, and your server application in
this process on a `server_apps.LinkServer` (state file in the work folder), so
a test can look at what it did. Every fault of the bench's fault API can be
injected (docs/BENCH.md), and what each side received can be read:

- `server_received(conn_id)` / `server_sent(conn_id)`: the lines your server
  app read / wrote on that conn_id, in order, without their newline;
- `board_received(conn_id)` / `board_sent(conn_id)`: the data lines that
  crossed the I2C bus to / from the Pyboard (a qos line once, however often it
  was retransmitted);
- `board_output(conn_id)`: every line the Pyboard printed.

A traceback through your Pyboard app's files, or your server app raising,
is recorded in `failures`; `check()` raises AssertionError with them (the
plugin calls it when the test ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pblink.apps import CountingServer
from server_apps import LinkClosedError, LinkServer
from virtual_bench.demo import Failure, Tracker
from virtual_bench.harness import ESP, PYBOARD, Bench, Lab
from virtual_bench.lifecycle import Started, scratch_dir

# Bench timings for tests: quick recovery, room for a loaded machine
# (pb_settings names, pyboard/pb_link/config.py).
TEST_SETTINGS: dict[str, Any] = {
    "verbose": True,  # pb_link's messages: link up/down, reset pulses
    "timeout_ms": 1000,
    "report_s": 0,
    "boot_wait_ms": 300,
    "exchange_timeout_ms": 400,
    "keepalive_timeout_ms": 2000,
    "sync_timeout_ms": 3000,
    "bridge_tuning": {
        "keepalive_ms": 300,
        "wifi_connect_ms": 1000,
        "wifi_stable_ms": 100,
        "reconnect_min_ms": 200,
        "reconnect_max_ms": 1000,
        "mqtt_response_ms": 2000,
    },
}
DEFAULT_TIMEOUT = 30.0  # as the plugin's pblink_timeout default

ServerApp = Callable[[Any, Sequence[str]], Any]


class AppBench(Started):
    """Your two apps on the virtual bench (see the module docstring).

    `board_app`: FILE.py:CLASS, PKG_DIR:CLASS or PKG_DIR/MOD.py:CLASS (an
    AppBase subclass). `server_app`: MODULE:CALLABLE, FILE.py:CALLABLE or the
    async callable itself, `app(server, conn_ids)`. Relative paths are taken
    from `base` (default: the current folder). `settings`: pb_settings values
    over TEST_SETTINGS (your app can read its own there too: `import
    pb_settings`). `timeout`: seconds each wait_* waits unless told otherwise.
    """

    def __init__(self, board_app: str, server_app: str | ServerApp, *, devices: int = 1,
                 settings: dict[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT,
                 workdir: str | Path | None = None, base: str | Path | None = None) -> None:
        from pblink.apps import BoardApp

        self.base = Path(base) if base is not None else Path.cwd()
        target, sep, name = board_app.rpartition(":")
        spec = f"{self._path(target)}{sep}{name}" if sep else str(self._path(board_app))
        self.board = BoardApp.locate(spec)
        self.server_app_spec = server_app
        self.conn_ids = [str(i) for i in range(1, devices + 1)]
        self.settings = dict(TEST_SETTINGS)
        self.settings.update(settings or {})
        self.timeout = timeout
        self._workdir = Path(workdir) if workdir is not None else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        base_dir = self.board.path / Path(*self.board.module.split("."))
        files = sorted(base_dir.rglob("*.py")) if base_dir.is_dir() else [
            base_dir.with_suffix(".py")]
        self.tracker = Tracker(self.conn_ids, app_files=tuple(map(str, files)))
        self.lab: Lab | None = None
        self.server: LinkServer | None = None
        self._app: ServerApp | None = None
        self._app_task: asyncio.Task[Any] | None = None
        self._server_in: dict[str, list[str]] = {}
        self._server_out: dict[str, list[str]] = {}
        self._board_in: dict[str, list[str]] = {c: [] for c in self.conn_ids}
        self._board_out: dict[str, list[str]] = {c: [] for c in self.conn_ids}
        self._seen: set[tuple[str, str, str, int]] = set()
        self._changed = asyncio.Event()
        self._reported = 0  # failures check() raised already

    def _path(self, target: str) -> Path:
        path = Path(target)
        return path if path.is_absolute() else self.base / path

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Start the broker, the server app, then the devices."""
        from pblink.apps import load_server_app

        self._workdir, self._tmp = scratch_dir(self._workdir, "pblink-appbench-")
        spec = self.server_app_spec
        if isinstance(spec, str):
            target, sep, name = spec.rpartition(":")
            if (target.endswith(".py") or "/" in target) and sep:
                spec = f"{self._path(target)}:{name}"
            self._app = load_server_app(spec)
        else:
            self._app = spec
        launcher_dir = self._workdir / "launcher"
        launcher_dir.mkdir(exist_ok=True)
        (launcher_dir / "pblink_test_main.py").write_text(self.board.launcher())
        tracker = self.tracker
        self.lab = Lab(conn_ids=self.conn_ids, server_app=False, workdir=self._workdir,
                       settings=self.settings, on_line=self._on_line, on_bus=self._on_bus,
                       pyboard_module="pblink_test_main",
                       pyboard_paths=[launcher_dir, self.board.path])
        tracker.on_fail = self._changed.set
        await self.lab.start()  # the broker, then the benches: they wait for the server
        await self._start_server()

    async def stop(self) -> None:
        await self._stop_server(clean=True)
        if self.lab is not None:
            await self.lab.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    async def _start_server(self) -> None:
        assert self.lab is not None and self._workdir is not None and self._app is not None
        host, port = self.lab.broker_address
        self.server = LinkServer(host, port, root=self.settings.get("topic_root", "pblink"),
                                 client_id="pblink.test-server",
                                 timeout_ms=int(self.settings["timeout_ms"]),
                                 state_path=self._workdir / "server_state.json", fsync=False)
        await self.server.start()
        app = self._app(CountingServer(self.server, self._server_line), list(self.conn_ids))
        self._app_task = asyncio.ensure_future(app)
        self._app_task.add_done_callback(self._app_done)

    def _app_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        import traceback

        exc = task.exception()
        assert exc is not None
        if isinstance(exc, LinkClosedError):
            return
        self.tracker.fail(f"server app raised {type(exc).__name__}: {exc}",
                          "".join(traceback.format_exception(exc)))

    async def _stop_server(self, clean: bool) -> None:
        task, self._app_task = self._app_task, None
        if task is not None:
            task.remove_done_callback(self._app_done)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, LinkClosedError, Exception):
                await task
        if self.server is not None:
            await (self.server.close() if clean else self.server.abort())
            self.server = None

    # -- faults (docs/BENCH.md, fault API) -------------------------------------------

    def device(self, conn_id: str = "1") -> Bench:
        """The bench of one device (its whole fault API: cut_wifi, crash_esp, ...)."""
        assert self.lab is not None, "start() first"
        return next(b for b in self.lab.benches if b.conn_id == conn_id)

    async def cut_wifi(self, seconds: float = 3.0, conn_id: str = "1") -> None:
        """A WiFi outage of `seconds` on one device (restored in the background)."""
        await self.device(conn_id).cut_wifi(seconds)

    async def crash_esp(self, conn_id: str = "1") -> None:
        """SIGKILL the ESP8266; the Pyboard's reset pulse brings it back."""
        await self.device(conn_id).crash_esp()

    async def hang_esp(self, conn_id: str = "1") -> None:
        """SIGSTOP the ESP8266; the Pyboard's watchdog logic resets it."""
        await self.device(conn_id).hang_esp()

    async def corrupt_i2c(self, count: int = 3, probability: float = 0.05,
                          seconds: float = 3.0, conn_id: str = "1") -> None:
        """Flip bits on the I2C bus: the next `count` transactions, then each
        with `probability` for `seconds`."""
        await self.device(conn_id).corrupt_i2c(count, probability, seconds)

    async def restart_broker(self, down_s: float = 2.0) -> None:
        """Stop the broker, start it again after `down_s` seconds (returns when it is up)."""
        assert self.lab is not None
        await self.lab.drop_broker(down_s, wait=True)

    async def restart_server_app(self, down_s: float = 0.0, *, crash: bool = False) -> None:
        """Stop the server app and its LinkServer and start them again after
        `down_s` seconds. `crash=True`: no clean exit (LinkServer.abort, the
        state file is left as a crash leaves it)."""
        await self._stop_server(clean=not crash)
        await asyncio.sleep(down_s)
        await self._start_server()

    # -- what each side received ------------------------------------------------------

    def server_received(self, conn_id: str = "1") -> list[str]:
        return list(self._server_in.get(conn_id, []))

    def server_sent(self, conn_id: str = "1") -> list[str]:
        return list(self._server_out.get(conn_id, []))

    def board_received(self, conn_id: str = "1") -> list[str]:
        return list(self._board_in[conn_id])

    def board_sent(self, conn_id: str = "1") -> list[str]:
        return list(self._board_out[conn_id])

    def board_output(self, conn_id: str = "1") -> list[str]:
        return self.device(conn_id).output(PYBOARD)

    def link_downs(self, conn_id: str = "1") -> int:
        """How often the Pyboard saw the server app become unreachable."""
        return self.tracker.devices[conn_id].downs

    def esp_boots(self, conn_id: str = "1") -> int:
        return self.device(conn_id).procs[ESP].boot

    @property
    def failures(self) -> list[Failure]:
        return list(self.tracker.failures)

    def check(self, new_only: bool = False) -> None:
        """AssertionError if an app raised (with its traceback). `new_only`: only
        for failures no earlier check raised (the plugin's teardown: a failure the
        test already reported is not reported twice)."""
        failures = self.tracker.failures[self._reported if new_only else 0:]
        if failures:
            self._reported = len(self.tracker.failures)
            raise AssertionError("\n".join(f"{f.text}\n{f.details}" for f in failures))

    # -- waiting ------------------------------------------------------------------------

    async def wait_for(self, condition: Callable[[], Any], what: str = "the condition",
                       timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """Wait until `condition()` is truthy and return it; TimeoutError after
        `timeout` (default: the bench's); AssertionError at once if an app raised."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            self.check()
            value = condition()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{what} within {limit:g} s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(0.2, deadline -
                                                                  time.monotonic()))

    async def wait_server_received(self, pattern: str, conn_id: str = "1",
                                   timeout: float | None = None) -> str:  # noqa: ASYNC109
        """Wait until the server app has read a line matching `pattern` (re.search)."""
        regex = re.compile(pattern)
        return str(await self.wait_for(
            lambda: next((ln for ln in self._server_in.get(conn_id, []) if regex.search(ln)),
                         None),
            f"server app: no line from {conn_id} matching {pattern!r}", timeout))

    async def wait_board_received(self, pattern: str, conn_id: str = "1",
                                  timeout: float | None = None) -> str:  # noqa: ASYNC109
        """Wait until a line matching `pattern` crossed the bus to the Pyboard."""
        regex = re.compile(pattern)
        return str(await self.wait_for(
            lambda: next((ln for ln in self._board_in[conn_id] if regex.search(ln)), None),
            f"Pyboard {conn_id}: no line received matching {pattern!r}", timeout))

    async def wait_board_output(self, pattern: str, conn_id: str = "1",
                                timeout: float | None = None) -> str:  # noqa: ASYNC109
        """Wait until the Pyboard printed a line matching `pattern`."""
        regex = re.compile(pattern)
        return str(await self.wait_for(
            lambda: next((ln for ln in self.board_output(conn_id) if regex.search(ln)), None),
            f"Pyboard {conn_id}: no output matching {pattern!r}", timeout))

    # -- sources ------------------------------------------------------------------------

    def _server_line(self, conn_id: str, direction: str, line: str) -> None:
        """What the server app read or wrote (CountingServer)."""
        lines = self._server_in if direction == "read" else self._server_out
        lines.setdefault(conn_id, []).append(line)
        self._changed.set()

    def _on_line(self, bench: Bench, ln: Any) -> None:
        self.tracker.on_pyboard(bench, ln)
        self._changed.set()

    def _on_bus(self, bench: Bench, direction: str, msg: bytes) -> None:
        self.tracker.on_bus(bench, direction, msg)
        if msg[:1] not in (b"q", b"u"):
            return
        from link_core import frames

        try:
            kind, session, msg_id, _base, line = frames.decode(msg)
        except ValueError:
            return
        if kind == "q":
            assert msg_id is not None  # a q frame has an id (frames.decode)
            key = (bench.conn_id, direction, str(session), msg_id)
            if key in self._seen:
                return  # a retransmission
            self._seen.add(key)
        lines = self._board_in if direction == "down" else self._board_out
        lines[bench.conn_id].append(str(line))
        self._changed.set()
