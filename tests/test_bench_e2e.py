"""End to end on the virtual bench: the real pyboard/pb_link and esp_bridge code
in MicroPython processes, a real broker (the embedded amqtt; Mosquitto as well for
the plain run and the broker restart), a LinkServer in this process.

A small Pyboard app (an AppBase subclass, written to a temporary directory on
the Pyboard's path) writes N numbered qos lines and prints what it receives;
the server side echoes every line back. Each test injects one fault mid-stream
and then checks that every qos line arrived exactly once and in order, both
ways, and that the link went down and came back (readline/write paused).

The fault tests run on the fixtures of the project's pytest plugin
(`pblink_start`, pblink/pytest_plugin.py), as a user's tests of their own apps
do (docs/TESTING.md); the tests that need another broker or a bench option
(Mosquitto, no WiFi at boot, a refusing broker, pyb.I2C) build the bench here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_TIMEOUT, require_tool

from pblink.testing import TEST_SETTINGS, AppBench
from server_apps import LinkServer
from virtual_bench.harness import PYBOARD, Bench, ManagedProcess, broker_process, free_port

pytestmark = pytest.mark.slow

TIMEOUT_MS = int(TEST_SETTINGS["timeout_ms"])  # the link's timeout_ms, on both ends
WAIT = max(TEST_TIMEOUT, 30.0)  # one scenario's recovery budget

# The plugin's bench timings (pblink.testing), without its verbose log and report
E2E_SETTINGS: dict[str, Any] = {
    k: v for k, v in TEST_SETTINGS.items() if k not in ("verbose", "report_s")
}

# The Pyboard test app. Knobs come from pb_settings (written by the bench).
PB_APP = """
import asyncio, json
import pb_settings as S
from pb_link.app_base import AppBase


class App(AppBase):
    def start(self):
        print('E2E start')
        asyncio.create_task(self.reader())
        asyncio.create_task(self.writer())

    async def reader(self):
        slow = getattr(S, 'e2e_read_ms', 0)  # a slow reader: the link must hold back
        while True:
            line = await self.readline()
            print('RX', line, end='')
            if slow:
                await asyncio.sleep_ms(slow)

    async def writer(self):
        for extra in getattr(S, 'e2e_extra', []):
            try:
                await self.write(extra)
                print('TXX', len(extra))
            except ValueError as e:
                print('TXERR', len(extra), e)
        n = getattr(S, 'e2e_count', 20)
        period = getattr(S, 'e2e_period_ms', 50)
        qos = getattr(S, 'e2e_qos', True)
        wait = getattr(S, 'e2e_wait', True)
        for i in range(1, n + 1):
            await self.write('line %d' % i, qos, wait)
            print('TX', i)
            await asyncio.sleep_ms(period)
        print('E2E sent all')

    async def server_ok(self, up):
        print('E2E server_ok', up)

    async def report(self, data):
        print('E2E report', json.dumps(data))

    async def bad_wifi(self):
        print('E2E bad_wifi')

    async def bad_server(self):
        print('E2E bad_server', self.broker_reason)

"""
# The same app started as a main.py would (for Bench, which imports a module).
PB_MAIN = """
import asyncio
from pb_link import config as cfg
from pb_e2e_app import App


async def main():
    App(cfg.conn_id, cfg.config, cfg.hardware, True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


class EchoApp:
    """Server side: one LinkServer, echoes every line back as 'echo <line>'."""

    def __init__(self, host: str, port: int, conn_ids: list[str], workdir: Path) -> None:
        self.host = host
        self.port = port
        self.conn_ids = conn_ids
        self.state_path = workdir / "server_state.json"
        self.received: dict[str, list[str]] = {c: [] for c in conn_ids}
        self.server: LinkServer | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.write_errors: list[str] = []
        self.writes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = LinkServer(self.host, self.port, timeout_ms=TIMEOUT_MS,
                                 state_path=self.state_path, client_id="pblink-bench-test",
                                 fsync=False)
        await self.server.start()
        for conn_id in self.conn_ids:
            conn = await self.server.connection(conn_id)
            self.tasks.append(asyncio.create_task(self._echo(conn)))

    async def _echo(self, conn: Any) -> None:
        async for line in conn:
            text = line.rstrip("\n")
            self.received[conn.conn_id].append(text)
            # A line that was read must get its echo even if stop() comes now:
            # the write runs as its own task, which stop() lets finish.
            write = asyncio.create_task(self._write(conn, "echo " + text))
            self.writes.add(write)
            write.add_done_callback(self.writes.discard)
            await asyncio.shield(write)

    async def _write(self, conn: Any, line: str) -> None:
        try:
            await conn.write(line)
        except ValueError as exc:
            self.write_errors.append(str(exc))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks = []
        if self.writes:
            await asyncio.wait(self.writes, timeout=WAIT)
        if self.server is not None:
            await self.server.close()

    async def restart(self) -> None:
        await self.stop()
        await self.start()


class Scenario:
    def __init__(self, broker: ManagedProcess, benches: list[Bench], app: EchoApp) -> None:
        self.broker = broker
        self.benches = benches
        self.app = app
        self.bench = benches[0]

    async def wait_tx(self, n: int, bench: Bench | None = None) -> None:
        await (bench or self.bench).wait_output(rf"^TX {n}$", timeout=WAIT)

    async def wait_all(self, n: int, bench: Bench | None = None) -> None:
        b = bench or self.bench
        await b.wait_output(rf"^RX echo line {n}$", timeout=WAIT)
        await asyncio.sleep(0.5)  # time for a late duplicate to show up

    def check_exactly_once(self, n: int, bench: Bench | None = None) -> None:
        b = bench or self.bench
        assert_exactly_once(n, self.app.received[b.conn_id], b.output(PYBOARD))

    def went_down_and_up(self, since: int, bench: Bench | None = None) -> None:
        went_down_and_up(bench or self.bench, since)

    def tx_gap(self, bench: Bench | None = None) -> float:
        return tx_gap(bench or self.bench)


def assert_exactly_once(n: int, server_read: list[str], board_output: list[str]) -> None:
    """Every qos line 1..n exactly once and in order, both ways."""
    up = [ln for ln in server_read if ln.startswith("line ")]
    assert [int(ln.split()[1]) for ln in up] == list(range(1, n + 1)), up
    down = [ln for ln in board_output if ln.startswith("RX echo line ")]
    assert [int(ln.split()[3]) for ln in down] == list(range(1, n + 1)), down


def went_down_and_up(b: Bench, since: int) -> None:
    later = [ln.text for ln in list(b.lines)[since - (b.line_count - len(b.lines)):]
             if ln.board == PYBOARD]
    downs = [i for i, t in enumerate(later) if t == "E2E server_ok False"]
    assert downs, "the link never went down"
    assert "E2E server_ok True" in later[downs[0]:], "the link never came back"


def tx_gap(b: Bench) -> float:
    """The longest pause between two successive 'TX' lines (write() returning)."""
    times = [ln.t for ln in b.lines if ln.board == PYBOARD and re.match(r"^TX \d+$", ln.text)]
    return max((b2 - a for a, b2 in itertools.pairwise(times)), default=0.0)


# -- on the pytest plugin's fixtures (pblink.pytest_plugin), as users write them ------


async def echo_app(server: Any, conn_ids: list[str]) -> None:
    """The server app of the plugin tests: echoes every line as 'echo <line>'."""
    async def echo(conn_id: str) -> None:
        conn = await server.connection(conn_id)
        async for line in conn:
            await conn.write("echo " + line.rstrip("\n"))

    await asyncio.gather(*(echo(c) for c in conn_ids))


@pytest.fixture
def e2e_board_app(tmp_path: Path) -> str:
    code = tmp_path / "pb_code"
    code.mkdir(exist_ok=True)
    (code / "pb_e2e_app.py").write_text(textwrap.dedent(PB_APP))
    return f"{code / 'pb_e2e_app.py'}:App"


@pytest.fixture
def start_e2e(pblink_start: Any, e2e_board_app: str) -> Any:
    async def start(devices: int = 1, **settings: Any) -> AppBench:
        return await pblink_start(e2e_board_app, echo_app, devices=devices,
                                  app_settings=settings,  # the e2e app's own names
                                  timeout=WAIT)  # type: ignore[no-any-return]
    return start


async def wait_all(bench: AppBench, n: int, conn_id: str = "1") -> None:
    await bench.wait_board_output(rf"^RX echo line {n}$", conn_id)
    await asyncio.sleep(0.5)  # time for a late duplicate to show up
    assert_exactly_once(n, bench.server_received(conn_id), bench.board_output(conn_id))


def mosquitto(tmp_path: Path) -> ManagedProcess:
    binary = require_tool("mosquitto")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    return ManagedProcess("mosquitto", [binary, "-c", str(conf)], port=port,
                          log_path=tmp_path / "broker.log")


@contextlib.asynccontextmanager
async def scenario(tmp_path: Path, devices: int = 1, settings: dict[str, Any] | None = None,
                   broker_kind: str = "amqtt", **bench_kw: Any) -> AsyncIterator[Scenario]:
    code = tmp_path / "pb_code"
    code.mkdir(exist_ok=True)
    (code / "pb_e2e_app.py").write_text(textwrap.dedent(PB_APP))
    (code / "pb_e2e.py").write_text(textwrap.dedent(PB_MAIN))
    broker = (mosquitto(tmp_path) if broker_kind == "mosquitto"
              else broker_process(log_path=tmp_path / "broker.log"))
    await broker.start()
    assert broker.port is not None
    conn_ids = [str(i) for i in range(1, devices + 1)]
    app = EchoApp("127.0.0.1", broker.port, conn_ids, tmp_path)
    merged = dict(E2E_SETTINGS)
    merged.update(settings or {})
    benches = [Bench(("127.0.0.1", broker.port), conn_id=c, settings=merged,
                     pyboard_module="pb_e2e", pyboard_paths=[code],
                     workdir=tmp_path / f"dev{c}", **bench_kw) for c in conn_ids]
    try:
        await app.start()
        await asyncio.gather(*(b.start() for b in benches))
        yield Scenario(broker, benches, app)
    finally:
        await asyncio.gather(*(b.stop() for b in benches), return_exceptions=True)
        await app.stop()
        await broker.stop()


BROKERS = ["amqtt", pytest.param("mosquitto", marks=pytest.mark.mosquitto)]


@pytest.mark.parametrize("broker_kind", BROKERS)
async def test_lines_both_ways_with_qos_and_wait(tmp_path: Path, broker_kind: str) -> None:
    """The plain case: 30 qos lines up, 30 echoes down, in order, once."""
    async with scenario(tmp_path, settings={"e2e_count": 30, "e2e_period_ms": 20},
                        broker_kind=broker_kind) as sc:
        await sc.bench.wait_output(r"^E2E server_ok True$", timeout=WAIT)
        await sc.wait_all(30)
        sc.check_exactly_once(30)
        assert sc.bench.stats["i2c_errors"] == 0
        assert sc.bench.stats["i2c_to_esp_bytes"] > 30 * 8  # the lines crossed the bus


async def test_pyb_i2c_slave_mode(tmp_path: Path) -> None:
    """The older-firmware path: pyb.I2C in SLAVE mode (blocking) instead of I2CTarget."""
    async with scenario(tmp_path, settings={"e2e_count": 10, "i2c_mode": "pyb"}) as sc:
        await sc.wait_all(10)
        sc.check_exactly_once(10)
        assert sc.bench.stats["i2c_mismatch"] == 0


async def test_report_and_server_ok(tmp_path: Path) -> None:
    """report() gets [connect_count, report_no, mem_free, mem_errors] every report_s;
    server_ok(True) when the server app is reachable, server_ok(False) when it goes away."""
    async with scenario(tmp_path, settings={"e2e_count": 3, "report_s": 1}) as sc:
        m1 = await sc.bench.wait_output(r"^E2E report (\[.*\])$", timeout=WAIT)
        mark = sc.bench.line_count
        m2 = await sc.bench.wait_output(r"^E2E report (\[.*\])$", timeout=WAIT, since=mark)
        import json

        first, second = json.loads(m1.group(1)), json.loads(m2.group(1))
        assert first[0] == 1 and second[0] == 1  # one broker connection so far
        assert second[1] == first[1] + 1  # report numbers count up
        assert all(isinstance(v, int) and v > 0 for v in second[:3])
        assert second[3] == 0  # no MemoryError caught on a healthy bridge
        await sc.bench.wait_output(r"^E2E server_ok True$", timeout=WAIT)
        await sc.app.stop()  # the server app goes away (clean exit)
        await sc.bench.wait_output(r"^E2E server_ok False$", timeout=WAIT, since=mark)


@pytest.mark.parametrize("broker_kind", BROKERS)
async def test_broker_restart(tmp_path: Path, broker_kind: str) -> None:
    async with scenario(tmp_path, settings={"e2e_count": 40, "e2e_period_ms": 50},
                        broker_kind=broker_kind) as sc:
        await sc.wait_tx(10)
        mark = sc.bench.line_count
        await sc.broker.stop()
        await asyncio.sleep(2.0)
        await sc.broker.start()
        await sc.wait_all(40)
        sc.check_exactly_once(40)
        sc.went_down_and_up(mark)
        assert sc.tx_gap() > 1.0  # write() paused while the link was down


async def test_bad_wifi_at_boot(tmp_path: Path) -> None:
    """No WiFi at boot: bad_wifi() runs; once WiFi comes, the link works."""
    async with scenario(tmp_path, settings={"e2e_count": 5}, wifi_at_boot=False) as sc:
        await sc.bench.wait_output(r"^E2E bad_wifi$", timeout=WAIT)
        assert "E2E bad_server" not in " ".join(sc.bench.output(PYBOARD))
        await sc.bench.restore_wifi()
        await sc.wait_all(5)
        sc.check_exactly_once(5)


@pytest.mark.parametrize("mode, reason", [("down", r".+"), ("not_authorised", r"refused")])
async def test_bad_server_at_boot(tmp_path: Path, mode: str, reason: str) -> None:
    """The broker refuses the first connection: bad_server() runs with a reason."""
    async with scenario(tmp_path, settings={"e2e_count": 5}, broker_at_boot=mode) as sc:
        m = await sc.bench.wait_output(r"^E2E bad_server (.*)$", timeout=WAIT)
        assert re.search(reason, m.group(1)), m.group(1)
        await sc.bench.allow_broker()
        await sc.wait_all(5)
        sc.check_exactly_once(5)


async def test_long_line_and_oversized_line(tmp_path: Path) -> None:
    """A 600-byte line (five I2C chunks) arrives intact both ways; a 1,025-byte
    line is refused with ValueError on the writing side, on both ends."""
    long_line = "".join(chr(33 + i % 90) for i in range(600))
    oversized = "y" * 1025
    settings = {"e2e_count": 3, "e2e_extra": [long_line, oversized]}
    async with scenario(tmp_path, settings=settings) as sc:
        await sc.wait_all(3)
        sc.check_exactly_once(3)
        assert sc.app.received["1"][0] == long_line
        assert f"RX echo {long_line}" in sc.bench.output(PYBOARD)
        err = [ln for ln in sc.bench.output(PYBOARD) if ln.startswith("TXERR 1025")]
        assert err and "1024" in err[0], sc.bench.output(PYBOARD)[:20]
        assert "TXX 600" in sc.bench.output(PYBOARD)
        conn = await sc.app.server.connection("1")  # type: ignore[union-attr]
        with pytest.raises(ValueError, match="1024"):
            await conn.write(oversized)
        assert conn.in_flight == 0  # nothing was queued for it


async def test_wifi_outage_mid_stream(start_e2e: Any) -> None:
    bench = await start_e2e(e2e_count=40, e2e_period_ms=50)
    await bench.wait_board_output(r"^TX 10$")
    mark = bench.device().line_count
    await bench.cut_wifi(3.0)
    await wait_all(bench, 40)
    went_down_and_up(bench.device(), mark)
    assert tx_gap(bench.device()) > 1.5  # write() paused during the outage


@pytest.mark.parametrize("crash", [False, True])
async def test_server_app_restart(start_e2e: Any, crash: bool) -> None:
    """A clean restart of the server app, and a crash (no clean state file)."""
    bench = await start_e2e(e2e_count=40, e2e_period_ms=50)
    await bench.wait_board_output(r"^TX 10$")
    mark = bench.device().line_count
    await bench.restart_server_app(2.5, crash=crash)  # longer than timeout_ms: D
    await wait_all(bench, 40)
    went_down_and_up(bench.device(), mark)
    assert tx_gap(bench.device()) > 1.0  # write() paused while the link was down


async def test_broker_restart_on_the_plugin(start_e2e: Any) -> None:
    bench = await start_e2e(e2e_count=40, e2e_period_ms=50)
    await bench.wait_board_output(r"^TX 10$")
    mark = bench.device().line_count
    await bench.restart_broker(2.0)
    await wait_all(bench, 40)
    went_down_and_up(bench.device(), mark)


async def test_esp_crash_mid_transfer(start_e2e: Any) -> None:
    """SIGKILL the ESP8266 while lines flow; the Pyboard's reset pulse revives it."""
    bench = await start_e2e(e2e_count=40, e2e_period_ms=30)
    await bench.wait_board_output(r"^TX 10$")
    mark = bench.device().line_count
    pulses = bench.device().stats["reset_pulses"]
    await bench.crash_esp()
    await wait_all(bench, 40)
    went_down_and_up(bench.device(), mark)
    assert tx_gap(bench.device()) > 1.0  # write() paused while the link was down
    assert bench.device().stats["reset_pulses"] > pulses
    assert bench.esp_boots() >= 3


async def test_hung_esp_is_reset(start_e2e: Any) -> None:
    """SIGSTOP the ESP8266: exchanges and keepalives stop, the Pyboard resets it."""
    bench = await start_e2e(e2e_count=40, e2e_period_ms=30)
    await bench.wait_board_output(r"^TX 10$")
    mark = bench.device().line_count
    pulses = bench.device().stats["reset_pulses"]
    await bench.hang_esp()
    await bench.wait_board_output(r"pb_link: (exchanges failing|no keepalive)")
    await wait_all(bench, 40)
    went_down_and_up(bench.device(), mark)
    assert tx_gap(bench.device()) > 1.0  # write() paused while the link was down
    assert bench.device().stats["reset_pulses"] > pulses


async def test_corrupted_i2c_bytes(start_e2e: Any) -> None:
    """Random bit flips on the bus: the CRC catches them, nothing lost or doubled."""
    bench = await start_e2e(e2e_count=40, e2e_period_ms=20)
    await bench.wait_board_output(r"^TX 5$")
    await bench.corrupt_i2c(count=3, probability=0.05, seconds=3.0)
    await wait_all(bench, 40)
    assert bench.device().stats["i2c_corrupted"] >= 3


async def test_two_devices_one_server(start_e2e: Any) -> None:
    bench = await start_e2e(devices=2, e2e_count=20, e2e_period_ms=30)
    await asyncio.gather(*(wait_all(bench, 20, c) for c in ("1", "2")))
    for conn_id in ("1", "2"):
        assert all(ln.startswith("line ") for ln in bench.server_received(conn_id))
        assert len(bench.board_received(conn_id)) == 20  # the echoes crossed the bus once


async def test_a_board_app_that_raises_fails_the_bench(pblink_start: Any, tmp_path: Path) -> None:
    """The plugin's check: a traceback through the user's Pyboard app is a failure."""
    app = tmp_path / "bad_app.py"
    app.write_text(textwrap.dedent(PB_APP).replace("print('E2E start')",
                                                   "print('E2E start'); 1 / 0"))
    bench = await pblink_start(f"{app}:App", echo_app, timeout=WAIT)
    with pytest.raises(AssertionError, match=r"ZeroDivisionError"):
        await bench.wait_board_output(r"^never printed$")
    assert f'"{app}", line' in bench.failures[0].details
    bench.tracker.failures.clear()  # seen: do not fail the test at teardown


BACKLOG = 100  # frames of 900 bytes queued on down during a WiFi cut
READ_MS = 120  # the Pyboard app reads one line per READ_MS: slower than the link


@pytest.mark.parametrize("broker_kind", BROKERS)
async def test_backlog_after_wifi_cut_reaches_a_slow_pyboard_in_order(
        tmp_path: Path, broker_kind: str) -> None:
    """Issue 9 part 3, end to end: real AppBase and bridge, a reader slower than the link.

    While the WiFi is cut, BACKLOG qos frames of 900 bytes of another server
    session are published on the device's down topic (QoS 1: the broker queues
    them for the bridge's persistent session). When the WiFi is back the broker
    sends them as fast as it can, the I2C link drains them at its own pace and
    the Pyboard application reads one every READ_MS: flow control (the bridge
    stops reading the socket, the Pyboard holds the ESP8266 back) delivers
    every line once and in order, and the bridge never takes the busy broker
    for a dead one (no D after the U that follows the cut).
    """
    import paho.mqtt.client as paho

    settings = {"e2e_count": 0, "e2e_read_ms": READ_MS, "rx_queue": 2}
    async with scenario(tmp_path, settings=settings, broker_kind=broker_kind) as sc:
        await sc.bench.wait_output(r"^E2E server_ok True$", timeout=WAIT)
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="backlog-publisher")
        pub.connect("127.0.0.1", sc.broker.port)
        pub.loop_start()
        try:
            await sc.bench.cut_wifi()
            await sc.bench.wait_output(r"^E2E server_ok False$", timeout=WAIT)
            await asyncio.sleep(1.0)  # the broker has seen the connection go
            infos = []
            for i in range(1, BACKLOG + 1):
                head = f"q|0badcafe|{i}|{i}|bl {i} "
                infos.append(pub.publish("pblink/1/down", head + "x" * (900 - len(head)), 1))
            for info in infos:
                await asyncio.to_thread(info.wait_for_publish, WAIT)
            mark = sc.bench.line_count
            t0 = asyncio.get_running_loop().time()
            await sc.bench.restore_wifi()
            await sc.bench.wait_output(rf"^RX bl {BACKLOG} ", timeout=3 * WAIT, since=mark)
            drain_s = asyncio.get_running_loop().time() - t0
        finally:
            pub.loop_stop()
            pub.disconnect()
        await asyncio.sleep(0.5)
        got = [int(ln.split()[2]) for ln in sc.bench.output(PYBOARD) if ln.startswith("RX bl ")]
        assert got == list(range(1, BACKLOG + 1)), got
        later = [ln.text for ln in list(sc.bench.lines) if ln.board == PYBOARD]
        ups = [i for i, t in enumerate(later) if t == "E2E server_ok True"]
        assert "E2E server_ok False" not in later[ups[-1]:], "D while the backlog drained"
    print(f"\n[backlog e2e] {broker_kind}: {BACKLOG} x 900 B to a Pyboard reading one line "
          f"per {READ_MS} ms in {drain_s:.1f} s")


async def test_device_under_another_root_gets_server_ok_false_and_the_reason(
        tmp_path: Path) -> None:
    """Issue 9 part 4, end to end: nothing answers the device (the server app uses another
    topic root); within about 2 x timeout_ms of the broker connection the real AppBase
    runs server_ok(False) and prints the bridge's reason naming the likely causes."""
    settings = {"e2e_count": 0, "topic_root": "site7"}
    async with scenario(tmp_path, settings=settings) as sc:
        m = await sc.bench.wait_output(r"^pb_link: server unreachable: (.*)$", timeout=WAIT)
        reason = m.group(1)
        assert reason.startswith("no server application answers conn_id 1 under site7/"), reason
        for cause in ("pblink server --ids", "topic root", "ACL"):
            assert cause in reason, reason
        await sc.bench.wait_output(r"^E2E server_ok False$", timeout=WAIT)
        assert "E2E server_ok True" not in sc.bench.output(PYBOARD)
