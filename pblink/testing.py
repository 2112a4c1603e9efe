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

Every argument is checked at the call: a conn_id that is no str or names no
device of this bench, a timeout or duration <= 0, `devices` outside 1 to
`pblink.common.MAX_DEVICES` (as ``pblink run --devices``), a settings name
link_core/schema.py does not know (a typo would silently change what the test
tests: an application's own names go in `app_settings`) or a bad value raise
TypeError or ValueError with one line naming the argument.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import difflib
import keyword
import math
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pblink import settings as schema
from pblink.apps import CountingServer
from pblink.common import MAX_DEVICES
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
BENCH_SET = ("conn_id", "host", "port")  # each device's own: the bench writes them

ServerApp = Callable[[Any, Sequence[str]], Any]


# -- argument checks (TypeError/ValueError, one line naming the argument) -------------


def _type_name(value: Any) -> str:
    """'an int', 'a str': the type of `value` for a message."""
    name = type(value).__name__
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def check_seconds(value: Any, name: str = "timeout", *, zero: bool = False) -> float:
    """`value` as a float: a finite number of seconds > 0 (>= 0 with `zero`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}={value!r}: a number of seconds, not {_type_name(value)}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ValueError(f"{name}={value!r}: must be a finite number of seconds "
                         f"{'>= 0' if zero else 'above 0'}")
    return float(value)


def check_devices(value: Any) -> int:
    """`devices`: an int from 1 to MAX_DEVICES, the range of ``pblink run --devices``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"devices={value!r}: an int, not {_type_name(value)}")
    if not 1 <= value <= MAX_DEVICES:
        raise ValueError(f"devices={value!r}: must be 1 to {MAX_DEVICES} (conn_ids 1..N, "
                         "as pblink run --devices)")
    return value


def _dict_argument(what: str, value: Any, of: str) -> dict[Any, Any]:
    """`value` (None: empty) if it is a dict, else TypeError naming the argument."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"{what}={value!r}: a dict of {of}, not {_type_name(value)}")
    return value


def check_settings(settings: Any, app_settings: Any = None) -> dict[str, Any]:
    """The pb_settings.py values over TEST_SETTINGS, each checked.

    `settings`: names of link_core/schema.py (pblink.settings), each value checked
    by its row as on the board (`bridge_tuning` keys merge over TEST_SETTINGS's);
    an unknown name is a ValueError (a typo would leave the test running with the
    default). `app_settings`: your application's own names (identifiers no row of
    the schema has), Python literals.
    """
    merged = dict(TEST_SETTINGS)
    for name, value in _dict_argument("settings", settings, "pb_settings names").items():
        if name in BENCH_SET:
            raise ValueError(f"settings: {name} is set by the bench for each device")
        if name not in schema.NAMES:
            close = difflib.get_close_matches(str(name), schema.NAMES, 1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ValueError(f"settings: pb_link reads no setting {name!r} (link_core/"
                             f"schema.py); {hint}an application's own names go in "
                             "app_settings")
        if name == "bridge_tuning" and isinstance(value, dict):
            value = {**TEST_SETTINGS["bridge_tuning"], **value}
        try:
            schema.check_setting(name, value)
        except ValueError as exc:
            raise ValueError(f"settings: {exc}") from None
        merged[name] = value
    try:
        schema.check_login(merged.get("mqtt_user"), merged.get("mqtt_password"))
    except ValueError as exc:
        raise ValueError(f"settings: {exc}") from None
    for name, value in _dict_argument("app_settings", app_settings,
                                      "your application's names").items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(f"app_settings: {name!r} is not a Python name")
        if name in schema.NAMES or name in BENCH_SET:
            raise ValueError(f"app_settings: {name} is a pb_link setting: pass it in settings")
        try:
            ok = ast.literal_eval(repr(value)) == value
        except (ValueError, SyntaxError):
            ok = False
        if not ok:
            raise ValueError(f"app_settings: {name}={value!r} is not a Python literal "
                             "(pb_settings.py holds literals)")
        merged[name] = value
    return merged


def check_arguments(board_app: Any, server_app: Any, devices: Any = 1, settings: Any = None,
                    app_settings: Any = None, timeout: Any = DEFAULT_TIMEOUT,
                    ) -> tuple[list[str], dict[str, Any], float]:
    """AppBench's arguments checked (TypeError/ValueError naming the argument):
    its conn_ids, pb_settings values and timeout."""
    if not isinstance(board_app, str):
        raise TypeError(f"board_app={board_app!r}: FILE.py:CLASS, PKG_DIR:CLASS or "
                        f"PKG_DIR/MOD.py:CLASS (a str), not {_type_name(board_app)}")
    if not isinstance(server_app, str) and not callable(server_app):
        raise TypeError(f"server_app={server_app!r}: MODULE:CALLABLE, FILE.py:CALLABLE or "
                        f"an async callable, not {_type_name(server_app)}")
    conn_ids = [str(i) for i in range(1, check_devices(devices) + 1)]
    return conn_ids, check_settings(settings, app_settings), check_seconds(timeout)


def _regex(pattern: Any) -> re.Pattern[str]:
    if not isinstance(pattern, (str, re.Pattern)):
        raise TypeError(f"pattern={pattern!r}: a regular expression (str), not "
                        f"{_type_name(pattern)}")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"pattern={pattern!r}: not a regular expression: {exc}") from None


class AppBench(Started):
    """Your two apps on the virtual bench (see the module docstring).

    `board_app`: FILE.py:CLASS, PKG_DIR:CLASS or PKG_DIR/MOD.py:CLASS (an
    AppBase subclass). `server_app`: MODULE:CALLABLE, FILE.py:CALLABLE or the
    async callable itself, `app(server, conn_ids)`. Relative paths are taken
    from `base` (default: the current folder). `settings`: pb_link's
    pb_settings values (names of link_core/schema.py, each checked) over
    TEST_SETTINGS; `app_settings`: your app's own names, written to the same
    pb_settings.py (`import pb_settings`). `timeout`: seconds each wait_* waits
    unless told otherwise.
    """

    def __init__(self, board_app: str, server_app: str | ServerApp, *, devices: int = 1,
                 settings: dict[str, Any] | None = None,
                 app_settings: dict[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT,
                 workdir: str | Path | None = None, base: str | Path | None = None) -> None:
        from pblink.apps import BoardApp

        self.conn_ids, self.settings, self.timeout = check_arguments(
            board_app, server_app, devices, settings, app_settings, timeout)
        self.base = Path(base) if base is not None else Path.cwd()
        target, sep, name = board_app.rpartition(":")
        spec = f"{self._path(target)}{sep}{name}" if sep else str(self._path(board_app))
        self.board = BoardApp.locate(spec)
        self.server_app_spec = server_app
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

    def _conn(self, conn_id: Any) -> str:
        """`conn_id` if it names a device of this bench; TypeError/ValueError otherwise."""
        if not isinstance(conn_id, str):
            raise TypeError(f"conn_id={conn_id!r}: conn_ids are str (conn_id={str(conn_id)!r}), "
                            f"not {_type_name(conn_id)}")
        if conn_id not in self.conn_ids:
            raise ValueError(f"conn_id={conn_id!r}: no such device on this bench (its "
                             f"devices: {', '.join(map(repr, self.conn_ids))})")
        return conn_id

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
        conn_id = self._conn(conn_id)
        assert self.lab is not None, "start() first"
        return next(b for b in self.lab.benches if b.conn_id == conn_id)

    async def cut_wifi(self, seconds: float = 3.0, conn_id: str = "1") -> None:
        """A WiFi outage of `seconds` on one device (restored in the background)."""
        seconds = check_seconds(seconds, "seconds")
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
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(f"count={count!r}: an int, not {_type_name(count)}")
        if count < 0:
            raise ValueError(f"count={count!r}: must be 0 or more")
        if isinstance(probability, bool) or not isinstance(probability, (int, float)):
            raise TypeError(f"probability={probability!r}: a number, not "
                            f"{_type_name(probability)}")
        if not 0 <= probability <= 1:
            raise ValueError(f"probability={probability!r}: must be 0 to 1")
        seconds = check_seconds(seconds, "seconds")
        await self.device(conn_id).corrupt_i2c(count, float(probability), seconds)

    async def restart_broker(self, down_s: float = 2.0) -> None:
        """Stop the broker, start it again after `down_s` seconds (returns when it is up)."""
        down_s = check_seconds(down_s, "down_s", zero=True)
        assert self.lab is not None
        await self.lab.drop_broker(down_s, wait=True)

    async def restart_server_app(self, down_s: float = 0.0, *, crash: bool = False) -> None:
        """Stop the server app and its LinkServer and start them again after
        `down_s` seconds. `crash=True`: no clean exit (LinkServer.abort, the
        state file is left as a crash leaves it)."""
        down_s = check_seconds(down_s, "down_s", zero=True)
        if not isinstance(crash, bool):
            raise TypeError(f"crash={crash!r}: a bool, not {_type_name(crash)}")
        await self._stop_server(clean=not crash)
        await asyncio.sleep(down_s)
        await self._start_server()

    # -- what each side received ------------------------------------------------------

    def server_received(self, conn_id: str = "1") -> list[str]:
        return list(self._server_in.get(self._conn(conn_id), []))

    def server_sent(self, conn_id: str = "1") -> list[str]:
        return list(self._server_out.get(self._conn(conn_id), []))

    def board_received(self, conn_id: str = "1") -> list[str]:
        return list(self._board_in[self._conn(conn_id)])

    def board_sent(self, conn_id: str = "1") -> list[str]:
        return list(self._board_out[self._conn(conn_id)])

    def board_output(self, conn_id: str = "1") -> list[str]:
        return self.device(conn_id).output(PYBOARD)

    def link_downs(self, conn_id: str = "1") -> int:
        """How often the Pyboard saw the server app become unreachable."""
        return self.tracker.devices[self._conn(conn_id)].downs

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
        if not callable(condition):
            raise TypeError(f"condition={condition!r}: a callable, not "
                            f"{_type_name(condition)}")
        limit = self.timeout if timeout is None else check_seconds(timeout)
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
        regex = _regex(pattern)
        conn_id = self._conn(conn_id)
        limit = None if timeout is None else check_seconds(timeout)
        return str(await self.wait_for(
            lambda: next((ln for ln in self._server_in.get(conn_id, []) if regex.search(ln)),
                         None),
            f"server app: no line from {conn_id} matching {pattern!r}", limit))

    async def wait_board_received(self, pattern: str, conn_id: str = "1",
                                  timeout: float | None = None) -> str:  # noqa: ASYNC109
        """Wait until a line matching `pattern` crossed the bus to the Pyboard."""
        regex = _regex(pattern)
        conn_id = self._conn(conn_id)
        limit = None if timeout is None else check_seconds(timeout)
        return str(await self.wait_for(
            lambda: next((ln for ln in self._board_in[conn_id] if regex.search(ln)), None),
            f"Pyboard {conn_id}: no line received matching {pattern!r}", limit))

    async def wait_board_output(self, pattern: str, conn_id: str = "1",
                                timeout: float | None = None) -> str:  # noqa: ASYNC109
        """Wait until the Pyboard printed a line matching `pattern`."""
        regex = _regex(pattern)
        conn_id = self._conn(conn_id)
        limit = None if timeout is None else check_seconds(timeout)
        return str(await self.wait_for(
            lambda: next((ln for ln in self.board_output(conn_id) if regex.search(ln)), None),
            f"Pyboard {conn_id}: no output matching {pattern!r}", limit))

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
