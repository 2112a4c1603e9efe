"""pb_link (pyboard/pb_link) under the MicroPython unix port, against a scripted ESP8266.

Each test copies the in-process fake ``machine`` and ``pyb`` modules
(virtual_bench/fakes, via ``bridge_rig.make_hw_dir``) and writes a harness
(``pbt``: an I2C Responder built on link_core's LinkEndpoint, with a scripted
server application behind it made of link_core's Sender and Receiver) and a
``pb_settings.py`` into a temporary folder first on MICROPYPATH, then runs a
short MicroPython script that prints one ``RESULT {json}`` line.

The fake ``machine.Pin`` calls ``machine.hooks[id]`` when the Pyboard drives syn or rst; the
Responder answers from an asyncio task (as the virtual bench delivers IRQs):
it reads ``mem[0:]``, writes its block at ``mem[0x80:]`` and raises ack via the
Pin's IRQ handler. The fake ``pyb.I2C`` slave serves the four transactions of
PROTOCOL.md 1.2 in-process. Timings are short (pb_settings), so each run takes
a second or two.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from virtual_bench.bridge_rig import make_hw_dir

ROOT = Path(__file__).resolve().parent.parent
TEST_TIMEOUT = float(os.environ.get("PBLINK_TEST_TIMEOUT", "15"))

PYBOARD_SETTINGS: dict[str, Any] = {
    "conn_id": "dev-1",
    "host": "10.0.0.2",
    "timeout_ms": 200,
    "report_s": 5,
    "ssid": "lab",
    "wifi_password": "pw",
    "mqtt_user": "u",
    "mqtt_password": "p",
    "topic_root": "site/pblink",
    "boot_wait_ms": 10,
    "idle_poll_ms": 2,
    "exchange_timeout_ms": 80,
    "keepalive_timeout_ms": 300,
    "sync_timeout_ms": 400,
    "demo_period_ms": 50,
}

MODES = ["target", "pyb"]

HARNESS = r'''# Test harness for pb_link under the MicroPython unix port: a scripted
# ESP8266 (I2C Responder built on link_core's LinkEndpoint) with a scripted
# server application behind it (link_core Sender/Receiver).
import asyncio
import json
import sys
import time

import machine
import pyb
from link_core import control, frames, messages
from link_core.endpoint import Receiver, Sender
from link_core.i2c_link import RESPONDER, LinkEndpoint
from link_core.i2c_tools import counters
from pb_link.app_base import AppBase


class TApp(AppBase):
    # Records the calls of the overridable methods.
    def __init__(self, *a):
        super().__init__(*a)
        self.calls = []

    def start(self):
        self.calls.append(["start"])

    async def server_ok(self, up):
        self.calls.append(["server_ok", up])

    async def report(self, data):
        self.calls.append(["report", data])

    async def bad_wifi(self):
        self.calls.append(["bad_wifi"])

    async def bad_server(self):
        self.calls.append(["bad_server", self.broker_reason])


def setup(cls=TApp, verbose=False, **kw):
    from pb_link import config

    hw = rst_fast(config.hardware)
    app = cls(config.conn_id, config.config, hw, verbose)
    return app, Esp(hw, **kw)


class Esp:
    def __init__(self, hardware, ka_ms=40, server_up=True):
        i2c = hardware[0]
        self.mode = "target" if isinstance(i2c, tuple) else "pyb"
        self.syn = hardware[1]
        self.ack = hardware[2]
        self.rst = hardware[3][0]
        self.ka_ms = ka_ms
        self.server_up = server_up
        self.ep = LinkEndpoint(RESPONDER)
        self.outbox = []
        self.alive = True  # answers the handshake
        self.keepalive = True  # main loop sends K
        self.corrupt_out = 0  # corrupt the next N replies
        self.corrupt_in = 0  # corrupt the next N Initiator blocks
        self.corrupt_every = 0  # corrupt every Nth block each way (0: never)
        self.wrong_addr = 0  # pyb mode: the next N exchanges start out of step
        self.drop_up = 0  # lose the next N q frames on the way to the server
        self.drop_acks = 0  # lose the next N acks from the server
        self.on_config = []  # control messages sent after each config
        self.configs = []
        self.up = []  # lines the server application received, in order
        self.up_frames = []
        self.pulses = 0
        self.boots = 1
        self.exchanges = 0
        self.errors = 0
        self.max_block_in = 0
        self.max_block_out = 0
        self.holds = 0  # exchanges in which the Pyboard set HOLD
        self.lost_down = 0  # frames that reached the bridge while the server was down
        self.srv_rx = Receiver(16)
        self.srv_tx = Sender(frames.new_session(b"\x12\x34\x56\x78"), 16, 400)
        self._step = 0
        self._vin = bytearray(128)
        self._vout = bytearray(128)
        if self.mode == "target":
            self.mem = i2c[1]
        else:
            pyb.I2C.controller = self
        machine.hooks[self.syn.id] = self._on_syn
        machine.hooks[self.rst.id] = self._on_rst
        self._tasks = [asyncio.create_task(self._keepalive()), asyncio.create_task(self._server())]

    def stop(self):
        for t in self._tasks:
            t.cancel()

    # -- the ESP8266 ------------------------------------------------------

    def reboot_self(self):
        # The ESP8266 restarts on its own (no reset pulse): FRESH until SYNC.
        self.ep = LinkEndpoint(RESPONDER)
        self.outbox = []
        self.boots += 1
        self.keepalive = True

    def _on_rst(self, pin, v):
        if v == 0:
            self.alive = False
            self.pulses += 1
            self.ack.drive(0)
        else:
            self.reboot_self()
            self.alive = True

    def _on_syn(self, pin, v):
        if self.mode == "target":
            asyncio.create_task(self._respond(v))
        else:
            self._step = 0
            if not v:
                asyncio.create_task(self._lower())

    async def _lower(self):
        await asyncio.sleep_ms(0)
        if self.alive:
            self.ack.drive(0)

    async def _respond(self, v):
        # The bench delivers IRQs from a task: so do we.
        await asyncio.sleep_ms(0)
        if not self.alive:
            return
        if v:
            mv = memoryview(self.mem)
            self._process(mv[0:128], mv[128:256])
            self.ack.drive(1)
        else:
            self.ack.drive(0)

    def _process(self, fin, fout):
        self.exchanges += 1
        data = fin
        if self.corrupt_every and self.exchanges % self.corrupt_every == 0:
            self.corrupt_in += 1
        if self.corrupt_every and self.exchanges % self.corrupt_every == 2:
            self.corrupt_out += 1
        if self.corrupt_in:
            self.corrupt_in -= 1
            data = bytearray(fin)
            data[1] ^= 0x01  # a flipped bit: CRC mismatch
        if self.ep.on_block(data):
            if data[3] > self.max_block_in:
                self.max_block_in = data[3]
            if data[0] & 0x02:
                self.holds += 1
        self._drain()
        while self.outbox and self.ep.can_queue():
            self.ep.queue_message(self.outbox.pop(0))
        n = self.ep.build_block(fout)
        if fout[3] > self.max_block_out:
            self.max_block_out = fout[3]
        if self.corrupt_out:
            self.corrupt_out -= 1
            fout[n - 1] ^= 0x10

    def _drain(self):
        while True:
            m = self.ep.pop_message()
            if m is None:
                return
            k = m[0]
            if k == control.CONFIG:
                self.configs.append(json.loads(m[1:]))
                self.outbox.extend(self.on_config)
                if self.server_up:
                    self.outbox.append(b"U")
            elif messages.is_frame(m):
                self._relay_up(m)
            else:
                self.errors += 1

    def _relay_up(self, m):
        # What the bridge publishes and the server library does with it.
        fr = frames.decode(m)
        if fr[0] == frames.ACK:
            if self.server_up:
                self.srv_tx.on_ack(fr[1], fr[2])
            return
        if not self.server_up:
            self.lost_down += 1
            return
        if fr[0] == frames.QOS and self.drop_up:
            self.drop_up -= 1
            return
        self.up_frames.append(bytes(m))
        ack, lines = self.srv_rx.on_frame(fr)
        self.up.extend(lines)
        if ack is not None:
            if self.drop_acks:
                self.drop_acks -= 1
            else:
                self.outbox.append(ack)

    async def _keepalive(self):
        while True:
            await asyncio.sleep_ms(self.ka_ms)
            if self.keepalive and self.ep.synced and b"K" not in self.outbox:
                self.outbox.insert(0, b"K")

    # -- the server application -------------------------------------------

    def server_write(self, line):
        self.outbox.append(self.srv_tx.send(line, time.ticks_ms()))

    async def server_send(self, line):
        while not self.srv_tx.can_send():
            await asyncio.sleep_ms(2)
        self.server_write(line)

    def set_server(self, up):
        self.server_up = up
        self.outbox.append(b"U" if up else b"D")
        if up:
            self.outbox.extend(self.srv_tx.resend_all(time.ticks_ms()))

    async def _server(self):
        while True:
            await asyncio.sleep_ms(20)
            if self.server_up:
                for f in self.srv_tx.due(time.ticks_ms()):
                    if f not in self.outbox:
                        self.outbox.append(f)

    # -- pyb.I2C slave mode: the Responder's four transactions --------------

    def slave_recv(self, buf, timeout):
        if isinstance(buf, int):
            buf = bytearray(buf)
        if not self.alive or not self.syn.value():
            raise OSError(110)
        n = len(buf)
        s = self._step
        if s == 0 and n == 1:
            buf[0] = 0x00
            if self.wrong_addr:  # out of step: an address the slave must refuse
                self.wrong_addr -= 1
                buf[0] = 0x84
            self._step = 1
        elif s == 2 and n == 1:
            buf[0] = 0x04
            self._step = 3
        elif s == 4 and n == 5:
            self._process(self._vin, memoryview(self._vout))
            buf[0] = 0x80
            buf[1:5] = self._vout[0:4]
            self._step = 5
        elif s == 5 and n == self._vout[3] + 3:
            buf[0] = 0x84
            buf[1:n] = self._vout[4 : n + 3]
            self._step = 0
            self.ack.drive(1)
        else:
            self.errors += 1
            raise OSError(5)
        return buf

    def slave_send(self, buf, timeout):
        if not self.alive or not self.syn.value():
            raise OSError(110)
        n = len(buf)
        s = self._step
        if s == 1 and n == 4:
            self._vin[0:4] = buf
            self._step = 2
        elif s == 3 and n == self._vin[3] + 2:
            self._vin[4 : 4 + n] = buf
            self._step = 4
        else:
            self.errors += 1
            raise OSError(5)


async def until(cond, ms=3000, what="condition"):
    t0 = time.ticks_ms()
    while not cond():
        if time.ticks_diff(time.ticks_ms(), t0) > ms:
            raise AssertionError("timed out waiting for " + what)
        await asyncio.sleep_ms(5)


def rst_fast(hardware, ms=5):
    # The real reset pulse is 200 ms; tests use a short one.
    hardware[3] = (hardware[3][0], hardware[3][1], ms)
    return hardware


def result(d):
    print("RESULT " + json.dumps(d))


def run(coro):
    try:
        asyncio.run(coro)
    except Exception as e:
        sys.print_exception(e)
        print("FAILED", repr(e))
'''


def _settings_source(settings: dict[str, Any] | None) -> str:
    if settings is None:
        return ""
    return "".join(f"{k} = {v!r}\n" for k, v in settings.items())


def run_board(
    tmp_path: Path,
    micropython: str,
    script: str,
    *,
    mode: str = "target",
    settings: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], str]:
    """Run ``script`` as the Pyboard; return its RESULT dict and its stdout.

    ``settings`` replaces PYBOARD_SETTINGS (None: default ones; {} would still
    write an empty pb_settings); ``extra`` is merged over them; ``mode`` "pyb"
    selects the pyb.I2C slave port.
    """
    hw = make_hw_dir(tmp_path)
    board = tmp_path / "board"
    board.mkdir(exist_ok=True)
    (hw / "pbt.py").write_text(HARNESS)
    values = dict(PYBOARD_SETTINGS if settings is None else settings)
    values.update(extra or {})
    if mode == "pyb":
        values["i2c_mode"] = "pyb"
    if values:
        (board / "pb_settings.py").write_text(_settings_source(values))
    (board / "main_test.py").write_text(script)
    path = [".frozen", str(hw), str(board), str(ROOT / "pyboard"), str(ROOT)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROPY")}
    env["MICROPYPATH"] = os.pathsep.join(path)
    env["PBLINK_FAKE_PIN_LOG"] = "1"  # rst and syn logs (Pin.log)
    proc = subprocess.run(
        [micropython, "main_test.py"], cwd=board, env=env, capture_output=True,
        text=True, timeout=TEST_TIMEOUT * 2,
    )
    out = proc.stdout
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:]), out
    raise AssertionError(
        f"no RESULT (exit {proc.returncode})\nstdout:\n{out}\nstderr:\n{proc.stderr}")


@pytest.fixture
def board(tmp_path: Path, micropython_bin: str):
    def run(script: str, **kw: Any) -> tuple[dict[str, Any], str]:
        return run_board(tmp_path, micropython_bin, script, **kw)

    return run


def _lines(n: int, prefix: str, width: int) -> list[str]:
    return [f"{prefix}{i} " + "é" * (i * width % 400) for i in range(n)]


# ---------------------------------------------------------------------------


SYNC_AND_TRAFFIC = r"""
import asyncio, json
import machine, pbt

async def main():
    app, esp = pbt.setup()
    await pbt.until(app.status, 3000, "server up")
    long_up = "x" * 1024
    long_down = "\u00e9" * 512  # 1024 bytes of UTF-8: 9 chunks
    await app.write("hello")
    await app.write("hi there\n")  # one trailing newline is optional
    await app.write(b"bytes|with|bars")
    await app.write(long_up)
    await esp.server_send("down 1")
    await esp.server_send(long_down)
    got = [await app.readline(), await app.readline()]
    await pbt.until(lambda: len(esp.up) == 4 and app._tx.idle() and esp.srv_tx.idle(),
                    3000, "acks both ways")
    rst = machine.pins["X12"].log
    app.close()
    pbt.result({"configs": esp.configs, "up": esp.up, "got": got, "calls": app.calls,
                "pulses": esp.pulses, "rst_log": rst, "syn": machine.pins["X11"].value(),
                "first_frame": esp.up_frames[0].decode(), "session": app._tx.session,
                "max_in": esp.max_block_in, "max_out": esp.max_block_out,
                "long_down_ok": got[1] == long_down + "\n", "long_up_ok": esp.up[3] == long_up,
                "srv_idle": esp.srv_tx.idle()})
    esp.stop()

pbt.run(main())
"""


@pytest.mark.parametrize("mode", MODES)
def test_sync_config_and_lines_both_ways(board, mode: str) -> None:
    res, _ = board(SYNC_AND_TRAFFIC, mode=mode,
                   extra={"bridge_tuning": {"keepalive_ms": 100}})
    s = PYBOARD_SETTINGS
    # Config message: conn_id first, the seed's six, the MQTT extras, the bridge tuning.
    assert res["configs"] == [[
        "dev-1", 1883, s["host"], s["timeout_ms"], s["report_s"], s["ssid"],
        s["wifi_password"], s["mqtt_user"], s["mqtt_password"], s["topic_root"], False,
        {"keepalive_ms": 100},
    ]]
    assert res["pulses"] == 1  # one reset pulse at start: rst low then high
    assert res["rst_log"][-2:] == [0, 1]
    assert res["syn"] == 0  # syn rests low (after close)
    assert res["calls"] == [["start"], ["server_ok", True]]
    assert res["up"][:3] == ["hello", "hi there", "bytes|with|bars"] and res["long_up_ok"]
    assert res["got"][0] == "down 1\n" and res["long_down_ok"]
    session = res["session"]
    assert len(session) == 8 and int(session, 16) >= 0
    assert res["first_frame"] == f"q|{session}|1|1|hello"
    assert res["max_in"] == 120 and res["max_out"] == 120  # long lines travel in chunks
    assert res["srv_idle"]  # the Pyboard acknowledged the server's lines


ORDERING = r"""
import asyncio, time
import pbt

async def main():
    app, esp = pbt.setup()
    await pbt.until(app.status, 3000, "server up")
    now = time.ticks_ms()
    # 1..5 in order, then every one of them again (duplicates), then 6..10
    # reversed, then a non-qos line.
    frames = [esp.srv_tx.send("s%d" % i, now) for i in range(1, 11)]
    esp.outbox.extend(frames[:5])
    esp.outbox.extend(frames[:5])
    esp.outbox.extend(reversed(frames[5:]))
    esp.outbox.append(esp.srv_tx.unreliable("plain"))
    got = []
    while len(got) < 11:
        got.append(await app.readline())
    await pbt.until(esp.srv_tx.idle, 3000, "acks")
    await asyncio.sleep_ms(300)  # anything more would be a duplicate
    pbt.result({"got": got, "extra": len(app._lines), "srv_idle": esp.srv_tx.idle(),
                "dups": app._rx.duplicates})
    app.close(); esp.stop()

pbt.run(main())
"""


def test_lines_in_order_duplicates_suppressed(board) -> None:
    res, _ = board(ORDERING)
    assert res["got"] == [f"s{i}\n" for i in range(1, 11)] + ["plain\n"]
    assert res["extra"] == 0
    assert res["dups"] >= 5
    assert res["srv_idle"]  # every qos line acknowledged, duplicates included


VALIDATION = r"""
import asyncio
import pbt

async def main():
    app, esp = pbt.setup()
    esp.alive = False  # the link is down: validation must not wait for it
    errors = []
    for bad in ["a\nb", "x" * 1025, "\u00e9" * 513, b"\xff\xfe", b"ok\x80", "two\n\n"]:
        try:
            await asyncio.wait_for_ms(app.write(bad), 200)
            errors.append("accepted")
        except ValueError as e:
            errors.append("ValueError")
        except asyncio.TimeoutError:
            errors.append("waited")
    queued = app._ep.tx_pending
    esp.alive = True
    await pbt.until(app.status, 3000, "server up")
    await app.write("x" * 1024)  # the limit itself is fine
    await pbt.until(lambda: len(esp.up) == 1, 2000, "line")
    first_id = esp.up_frames[0].split(b"|")[2].decode()
    pbt.result({"errors": errors, "queued_before": queued, "first_id": first_id})
    app.close(); esp.stop()

pbt.run(main())
"""


def test_bad_writes_rejected_before_anything_is_queued(board) -> None:
    res, _ = board(VALIDATION)
    assert res["errors"] == ["ValueError"] * 6
    assert res["queued_before"] == 0
    assert res["first_id"] == "1"  # no id was used up by the rejected lines


FRESH = r"""
import asyncio
import pbt

async def main():
    app, esp = pbt.setup()
    await pbt.until(app.status, 3000, "server up")
    esp.drop_acks = 3  # the server's acks for L0..L2 are lost
    for i in range(3):
        await app.write("L%d" % i, wait=False)
    await app.write("plain", qos=False)
    await pbt.until(lambda: len(esp.up) == 4, 2000, "4 up")
    esp.reboot_self()  # the ESP8266 restarts on its own: FRESH
    await pbt.until(lambda: len(esp.configs) == 2, 2000, "resync")
    await pbt.until(lambda: app._tx.idle(), 3000, "acked after resend")
    await app.write("after")
    await pbt.until(lambda: len(esp.up) == 5, 2000, "5 up")
    await asyncio.sleep_ms(200)
    kinds = [f[:1].decode() for f in esp.up_frames]
    ids = [int(f.split(b"|")[2]) for f in esp.up_frames if f[:1] == b"q"]
    pbt.result({"up": esp.up, "calls": app.calls, "pulses": esp.pulses, "ids": ids,
                "u_frames": kinds.count("u"), "peer_reboots": pbt.counters(app._ep)["peer_reboots"],
                "configs": len(esp.configs)})
    app.close(); esp.stop()

pbt.run(main())
"""


@pytest.mark.parametrize("mode", MODES)
def test_esp_reboot_fresh_resync_and_retransmit(board, mode: str) -> None:
    res, _ = board(FRESH, mode=mode)
    assert res["pulses"] == 1  # FRESH: resync without a reset pulse
    assert res["peer_reboots"] == 1
    assert res["configs"] == 2  # the config goes first after every sync
    # The unacknowledged lines were sent again after 'U'; the server got each once.
    assert res["up"] == ["L0", "L1", "L2", "plain", "after"]
    assert res["ids"][:3] == [1, 2, 3] and sorted(set(res["ids"])) == [1, 2, 3, 4]
    assert res["ids"].count(1) >= 2
    assert res["u_frames"] == 1  # qos=False: sent once, never again
    assert res["calls"] == [["start"], ["server_ok", True], ["server_ok", False],
                            ["server_ok", True]]


UNANSWERED = r"""
import asyncio
import pbt
from link_core import control

async def main():
    app, esp = pbt.setup(server_up=False)
    await pbt.until(lambda: len(esp.configs) == 1, 3000, "config")
    await asyncio.sleep_ms(100)
    why = "no server application answers conn_id dev-1 under pblink/ ..."
    esp.outbox.append(b"D")  # at config time: nothing known yet, no call
    await asyncio.sleep_ms(150)
    before = list(app.calls)
    esp.outbox.append(control.encode_text(control.SERVER_DOWN, why))
    await pbt.until(lambda: ["server_ok", False] in app.calls, 2000, "server_ok(False)")
    esp.outbox.append(control.encode_text(control.SERVER_DOWN, why))  # next connection
    await asyncio.sleep_ms(150)
    esp.set_server(True)
    await pbt.until(app.status, 2000, "up")
    esp.set_server(False)
    await pbt.until(lambda: not app.status(), 2000, "down")
    esp.outbox.append(control.encode_text(control.SERVER_DOWN, why))
    await asyncio.sleep_ms(200)
    pbt.result({"before": before, "calls": app.calls, "reason": app.server_reason})
    app.close(); esp.stop()

pbt.run(main())
"""


@pytest.mark.parametrize("mode", MODES)
def test_reasoned_d_runs_server_ok_false_once_per_outage(board, mode: str) -> None:
    """PROTOCOL.md 4.4: the bridge's 'D' with a reason reaches the application at once."""
    res, out = board(UNANSWERED, mode=mode)
    assert res["before"] == []  # a plain 'D' while down is no news
    assert res["calls"] == [["server_ok", False], ["start"], ["server_ok", True],
                            ["server_ok", False]]
    assert res["reason"].startswith("no server application answers conn_id dev-1")
    assert out.count("pb_link: server unreachable: no server application") == 3


KEEPALIVE = r"""
import asyncio, time
import machine, pbt

async def main():
    app, esp = pbt.setup()
    await pbt.until(app.status, 3000, "server up")
    t0 = time.ticks_ms()
    esp.keepalive = False  # hung main loop: the Responder still answers
    await pbt.until(lambda: esp.pulses == 2, 3000, "keepalive reset")
    t_ka = time.ticks_diff(time.ticks_ms(), t0)
    await pbt.until(lambda: len(esp.configs) == 2 and app.status(), 3000, "resync")
    esp.alive = False  # dead: exchanges time out
    t0 = time.ticks_ms()
    await pbt.until(lambda: esp.pulses == 3, 3000, "dead reset")
    t_dead = time.ticks_diff(time.ticks_ms(), t0)
    await pbt.until(lambda: len(esp.configs) == 3 and app.status(), 3000, "resync 2")
    await app.write("still here")
    await pbt.until(lambda: esp.up == ["still here"], 2000, "line")
    pbt.result({"t_ka": t_ka, "t_dead": t_dead, "calls": app.calls,
                "failures": app._port.failures, "rst": machine.pins["X12"].log})
    app.close(); esp.stop()

pbt.run(main())
"""


@pytest.mark.parametrize("mode", MODES)
def test_keepalive_loss_and_dead_esp_reset(board, mode: str) -> None:
    res, _ = board(KEEPALIVE, mode=mode)
    ka = PYBOARD_SETTINGS["keepalive_timeout_ms"]
    # Measured from the last keepalive that came (sent every 40 ms) to the pulse.
    assert ka - 60 <= res["t_ka"] < ka + 1500
    assert res["t_dead"] < 2000  # two failed exchanges of 80 ms, then the pulse
    assert res["failures"] >= 2
    assert res["rst"][-6:] == [0, 1, 0, 1, 0, 1]
    assert res["calls"].count(["start"]) == 1  # never again after a resync
    assert res["calls"][-1] == ["server_ok", True]


CORRUPT = r"""
import asyncio
import pbt

N = 16

async def main():
    app, esp = pbt.setup()
    await pbt.until(app.status, 3000, "server up")
    esp.corrupt_every = 4  # one frame in four each way has a flipped bit
    async def sender():
        for i in range(N):
            await esp.server_send("d%d %s" % (i, "z" * (i * 13)))
    asyncio.create_task(sender())
    got = []
    async def reader():
        while len(got) < N:
            got.append((await app.readline()).split(" ")[0])
    asyncio.create_task(reader())
    for i in range(N):
        await app.write("u%d %s" % (i, "\u00e9" * (i * 9)), wait=(i % 4 == 0))
    await pbt.until(lambda: len(got) == N and len(esp.up) == N, 12000, "traffic")
    esp.corrupt_every = 0
    pbt.result({"got": got, "up": [l.split(" ")[0] for l in esp.up],
                "bad": pbt.counters(app._ep)["blocks_bad"],
                "esp_bad": pbt.counters(esp.ep)["blocks_bad"],
                "pulses": esp.pulses, "errors": esp.errors})
    app.close(); esp.stop()

pbt.run(main())
"""


@pytest.mark.parametrize("mode", MODES)
def test_corrupt_frames_lose_nothing(board, mode: str) -> None:
    res, _ = board(CORRUPT, mode=mode, extra={"keepalive_timeout_ms": 2000})
    assert res["got"] == [f"d{i}" for i in range(16)]
    assert res["up"] == [f"u{i}" for i in range(16)]
    assert res["bad"] > 0 and res["esp_bad"] > 0  # corruption was seen both ways
    assert res["errors"] == 0


OUT_OF_STEP = r"""
import asyncio
import pbt

async def main():
    app, esp = pbt.setup()
    await pbt.until(app.status, 3000, "server up")
    before = app._port.failures
    esp.wrong_addr = 1
    await app.write("after a bad exchange")
    await pbt.until(lambda: len(esp.up) == 1, 2000, "line")
    pbt.result({"failures": app._port.failures - before, "pulses": esp.pulses,
                "up": esp.up})
    app.close(); esp.stop()

pbt.run(main())
"""


def test_pyb_slave_out_of_step_is_one_failed_exchange(board) -> None:
    res, _ = board(OUT_OF_STEP, mode="pyb")
    assert res["failures"] == 1
    assert res["pulses"] == 1  # one failure alone does not reset the ESP8266
    assert res["up"] == ["after a bad exchange"]


CONTROL = r"""
import asyncio
from link_core import control
import pbt

async def main():
    app, esp = pbt.setup(verbose=True)
    esp.on_config = [b"W", control.encode_text(control.BAD_BROKER, "refused: not authorised"),
                     control.encode_report([1, 2, 30000]),
                     control.encode_text(control.ERROR, "diagnostic text")]
    await pbt.until(app.status, 3000, "server up")
    await pbt.until(lambda: ["report", [1, 2, 30000]] in app.calls, 2000, "report")
    esp.set_server(False)
    await pbt.until(lambda: not app.status(), 2000, "down")
    esp.set_server(True)
    await pbt.until(app.status, 2000, "up again")
    await app.reboot()  # a new boot of the ESP8266 sends W and B again: not run again
    await pbt.until(lambda: len(esp.configs) == 2 and app.status(), 3000, "resync")
    await pbt.until(lambda: app.calls.count(["report", [1, 2, 30000]]) == 2, 2000, "report 2")
    await asyncio.sleep_ms(100)
    pbt.result({"calls": app.calls, "pulses": esp.pulses})
    app.close(); esp.stop()

pbt.run(main())
"""


def test_control_messages_reach_the_handlers(board) -> None:
    res, out = board(CONTROL)
    calls = res["calls"]
    assert calls[:3] == [["bad_wifi"], ["bad_server", "refused: not authorised"],
                         ["report", [1, 2, 30000]]]
    assert calls.count(["bad_wifi"]) == 1 and calls.count(["bad_server",
                                                           "refused: not authorised"]) == 1
    assert calls.count(["start"]) == 1
    ups = [c for c in calls if c[0] == "server_ok"]
    assert ups == [["server_ok", True], ["server_ok", False], ["server_ok", True],
                   ["server_ok", False], ["server_ok", True]]
    assert res["pulses"] == 2
    assert "ESP8266: diagnostic text" in out  # 'E' is printed when verbose


DEFAULTS = r"""
import asyncio
from link_core import control
from pb_link.app_base import AppBase
import pbt

async def main():
    app, esp = pbt.setup(AppBase)
    esp.on_config = [control.encode_report([3, 4, 5000])]
    await pbt.until(app.status, 3000, "server up")
    await asyncio.sleep_ms(50)
    esp.outbox.append(b"W")  # after start(): not initialisation any more, ignored
    await asyncio.sleep_ms(100)
    ok_after = app.status()
    pbt.result({"ok_after_late_w": ok_after})
    app.close(); esp.stop()

pbt.run(main())
"""

BAD_WIFI_DEFAULT = r"""
import asyncio
from pb_link.app_base import AppBase
import pbt

async def main():
    app, esp = pbt.setup(AppBase, server_up=False)
    esp.on_config = [b"W"]
    err = None
    try:
        await asyncio.wait_for_ms(app.readline(), 3000)
    except OSError as e:
        err = str(e)
    try:
        await app.write("x")
        werr = None
    except OSError as e:
        werr = str(e)
    pbt.result({"readline": err, "write": werr, "syn": app._syn.value(),
                "deinit": __import__("machine").targets[-1].deinited})
    esp.stop()

pbt.run(main())
"""


def test_default_handlers_print_and_bad_wifi_raises(board) -> None:
    res, out = board(DEFAULTS)
    assert "Server is up" in out
    assert "Connects 3 Count 4 Mem free 5000" in out
    assert res["ok_after_late_w"] is True  # bad_wifi runs only on initialisation
    assert "No initial WiFi connection." not in out
    res, out = board(BAD_WIFI_DEFAULT)
    assert "No initial WiFi connection." in out
    assert res["readline"] == res["write"] == "No initial WiFi connection."
    assert res["syn"] == 0 and res["deinit"] is True  # the default closed the link


OUTAGE = r"""
import asyncio
import pbt

async def main():
    app, esp = pbt.setup()
    await pbt.until(app.status, 3000, "server up")
    esp.drop_acks = 2
    await app.write("a1", wait=False)
    await app.write("a2", wait=False)
    await pbt.until(lambda: len(esp.up) == 2, 2000, "2 up")
    esp.set_server(False)
    await pbt.until(lambda: not app.status(), 2000, "down")
    blocked = False
    try:
        await asyncio.wait_for_ms(app.write("during", qos=False), 300)
    except asyncio.TimeoutError:
        blocked = True
    await asyncio.sleep_ms(700)  # > 3 x timeout_ms: no retransmission while down
    lost = esp.lost_down
    esp.set_server(True)
    await app.write("a3")  # wait=True: after a1, a2 are acknowledged
    await pbt.until(lambda: len(esp.up) == 3 and app._tx.idle(), 3000, "resend")
    pbt.result({"blocked": blocked, "lost_down": lost, "up": esp.up, "calls": app.calls})
    app.close(); esp.stop()

pbt.run(main())
"""


def test_server_outage_pauses_writes_and_retransmissions(board) -> None:
    res, _ = board(OUTAGE)
    assert res["blocked"] is True  # write() pauses while the server is unreachable
    assert res["lost_down"] == 0  # nothing retransmitted into the outage
    assert res["up"] == ["a1", "a2", "a3"]  # resent after 'U', delivered once
    assert res["calls"][-2:] == [["server_ok", False], ["server_ok", True]]


WINDOW = r"""
import asyncio
import pbt

async def main():
    app, esp = pbt.setup()
    await pbt.until(app.status, 3000, "server up")
    esp.drop_acks = 1000  # the server's acks never arrive
    for i in range(8):
        await asyncio.wait_for_ms(app.write("w%d" % i, wait=False), 3000)
    full = False
    try:
        await asyncio.wait_for_ms(app.write("w8", wait=False), 300)
    except asyncio.TimeoutError:
        full = True
    await asyncio.wait_for_ms(app.write("plain", qos=False), 3000)  # not window-bound
    esp.drop_acks = 0  # retransmissions now get acknowledged
    await asyncio.wait_for_ms(app.write("w8", wait=False), 5000)
    await pbt.until(lambda: app._tx.idle(), 5000, "all acknowledged")
    esp.drop_acks = 1000
    await app.write("w9", wait=False)
    waited = False
    try:
        await asyncio.wait_for_ms(app.write("w10"), 300)  # wait=True: w9 unacked
    except asyncio.TimeoutError:
        waited = True
    esp.drop_acks = 0
    await asyncio.wait_for_ms(app.write("w10"), 5000)
    await pbt.until(lambda: app._tx.idle(), 5000, "idle")
    pbt.result({"full": full, "waited": waited, "up": esp.up,
                "in_flight_max": app._tx.window})
    app.close(); esp.stop()

pbt.run(main())
"""


def test_window_and_wait_back_pressure(board) -> None:
    res, _ = board(WINDOW)
    assert res["full"] is True  # the 9th unacknowledged qos line waits
    assert res["waited"] is True  # wait=True waits for every earlier ack
    assert res["in_flight_max"] == 8
    assert res["up"] == [f"w{i}" for i in range(8)] + ["plain", "w8", "w9", "w10"]


HOLD = r"""
import asyncio
import pbt

N = 30

async def main():
    app, esp = pbt.setup()
    await pbt.until(app.status, 3000, "server up")
    async def sender():
        for i in range(N):
            await esp.server_send("s%d" % i)
    asyncio.create_task(sender())
    await asyncio.sleep_ms(1500)  # nobody reads: > keepalive_timeout_ms
    queued = len(app._lines)
    got = []
    while len(got) < N:
        got.append(await app.readline())
    pbt.result({"queued": queued, "got": got, "holds": esp.holds, "pulses": esp.pulses,
                "rx_max": app._rx_max})
    app.close(); esp.stop()

pbt.run(main())
"""


def test_full_line_queue_holds_the_esp_without_reset(board) -> None:
    res, _ = board(HOLD, extra={"rx_queue": 4})
    assert res["rx_max"] == 4
    assert res["queued"] <= 4 + 16  # bounded: rx_queue plus one reorder burst
    assert res["holds"] > 0  # HOLD reached the ESP8266
    assert res["pulses"] == 1  # our own HOLD is not a dead ESP8266
    assert res["got"] == [f"s{i}\n" for i in range(30)]


CLOSE = r"""
import asyncio
import machine, pbt

async def main():
    app, esp = pbt.setup()
    await pbt.until(app.status, 3000, "server up")
    await app.reboot()
    after_reboot = esp.pulses
    await pbt.until(lambda: len(esp.configs) == 2 and app.status(), 3000, "resync")
    app.close()
    app.close()  # idempotent
    await asyncio.sleep_ms(50)
    errs = []
    try:
        await app.readline()
    except OSError as e:
        errs.append("readline")
    try:
        await app.write("x")
    except OSError as e:
        errs.append("write")
    try:
        await app.reboot()
    except OSError as e:
        errs.append("reboot")
    ex = esp.exchanges
    await asyncio.sleep_ms(100)
    pbt.result({"pulses": after_reboot, "calls": app.calls, "errs": errs,
                "status": app.status(), "deinit": machine.targets[-1].deinited,
                "syn": machine.pins["X11"].value(), "quiet": esp.exchanges == ex,
                "task_done": app._task.done()})
    esp.stop()

pbt.run(main())
"""


@pytest.mark.parametrize("mode", MODES)
def test_reboot_then_close(board, mode: str) -> None:
    res, _ = board(CLOSE.replace("machine.targets[-1].deinited",
                                 "__import__('pyb').instances[-1].deinited"
                                 if mode == "pyb" else "machine.targets[-1].deinited"),
                   mode=mode)
    assert res["pulses"] == 2
    assert res["calls"].count(["start"]) == 1
    assert res["errs"] == ["readline", "write", "reboot"]
    assert res["status"] is False
    assert res["deinit"] is True and res["syn"] == 0
    assert res["quiet"] is True and res["task_done"] is True


ARGS = r"""
import pbt
from pb_link import config
from pb_link.app_base import AppBase
from pb_link.ports import SlavePort, TargetPort

def err(f):
    try:
        f()
    except ValueError as e:
        return "ValueError"
    return "ok"

hw = config.hardware
res = {
    "slash": err(lambda: AppBase("a/b", config.config, hw)),
    "empty": err(lambda: AppBase("", config.config, hw)),
    "space": err(lambda: AppBase("a b", config.config, hw)),
    "short_config": err(lambda: AppBase("ok", config.config[:2], hw)),
    "bad_bridge_tuning": err(
        lambda: AppBase("ok", config.config[:10] + [{"bridge_tuning": 3}], hw)),
    "bad_port": err(lambda: AppBase("ok", ["1883"] + config.config[1:], hw)),
    "bad_tuning": err(lambda: AppBase("ok", config.config[:10] + [{"idle_poll_ms": "x"}], hw)),
}
a = AppBase("dev-7\n", config.config[:6], hw)  # the seed's six entries are enough
res["seed_six"] = a._cfg_msg.decode()
res["trailing_newline"] = a.conn_id
res["port"] = type(a._port).__name__
a.close()
pbt.result(res)
"""


@pytest.mark.parametrize("mode", MODES)
def test_constructor_validates(board, mode: str) -> None:
    res, _ = board(ARGS, mode=mode)
    assert res["slash"] == res["empty"] == res["space"] == "ValueError"
    assert res["short_config"] == res["bad_port"] == res["bad_tuning"] == "ValueError"
    assert res["bad_bridge_tuning"] == "ValueError"
    assert res["trailing_newline"] == "dev-7"
    assert json.loads(res["seed_six"][1:]) == [
        "dev-7", 1883, "10.0.0.2", 200, 5, "lab", "pw", "", "", "pblink", False, {}]
    assert res["port"] == ("SlavePort" if mode == "pyb" else "TargetPort")


CONFIG = r"""
import machine, pyb, pbt
from pb_link import config
i2c, syn, ack, rst = config.hardware
res = {"config": config.config, "conn_id": config.conn_id}
if isinstance(i2c, tuple):
    t, mem = i2c
    res["i2c"] = ["target", t.id, t.addr, len(mem), t.mem is mem, t.mem_addrsize]
else:
    res["i2c"] = ["pyb", i2c.bus, i2c.mode, i2c.addr]
res["pins"] = [[p.id, p.mode, p.value()] for p in (syn, ack, rst[0])]
res["rst"] = rst[1:]
pbt.result(res)
"""


def test_config_defaults_and_settings(board) -> None:
    res, _ = board(CONFIG, settings={})
    assert res["conn_id"] == "1"
    assert res["config"] == [1883, "192.168.0.10", 1500, 10, "", "", "", "", "pblink",
                             False, {}]
    assert res["i2c"] == ["target", 1, 0x12, 256, True, 8]
    assert res["pins"] == [["X11", 1, 0], ["Y8", 0, 0], ["X12", 1, 1]]
    assert res["rst"] == [0, 200]
    res, _ = board(CONFIG, mode="pyb", extra={"bridge_tuning": {"keepalive_ms": 500}})
    assert res["i2c"] == ["pyb", 1, 1, 0x12]
    assert res["conn_id"] == "dev-1"
    tuning = res["config"][10]
    assert tuning["bridge_tuning"] == {"keepalive_ms": 500}
    assert tuning["exchange_timeout_ms"] == 80 and "conn_id" not in tuning
    assert res["config"][:10] == [1883, "10.0.0.2", 200, 5, "lab", "pw", "u", "p",
                                  "site/pblink", False]


NO_TARGET = r"""
import machine
del machine.I2CTarget  # older firmware
import pbt
from pb_link import config
pbt.result({"kind": type(config.hardware[0]).__name__})
"""


def test_config_falls_back_to_pyb_slave(board) -> None:
    res, _ = board(NO_TARGET)
    assert res["kind"] == "I2C"


DEMO = r"""
import asyncio, json, sys
import pbt
from pb_link import config
config.hardware[3] = (config.hardware[3][0], 0, 5)
esp = pbt.Esp(config.hardware)

async def check():
    await pbt.until(lambda: len(esp.configs) == 1 and esp.ep.synced, 3000, "sync")
    await asyncio.sleep_ms(100)
    esp.server_write("hello from the server")
    await pbt.until(lambda: len(esp.up) >= 4, 3000, "demo lines")
    pbt.result({"up": [json.loads(l) for l in esp.up]})
    sys.exit(0)

asyncio.create_task(check())
import pb_link.pb_client  # runs the demo, as in the original
"""


def test_demo_runs_on_import(board) -> None:
    res, out = board(DEMO)
    up = res["up"]
    assert [u[:2] for u in up[:4]] == [["dev-1", 1], ["dev-1", 2], ["dev-1", 3], ["dev-1", 4]]
    assert up[-1][2] == 1  # rx_count counts the line received
    assert "Got hello from the server" in out
    assert "Server is up" in out


IMPORT_DEMO = r"""
import pbt
from pb_link.demo import App  # no hardware built, nothing runs
import sys
pbt.result({"config_loaded": "pb_link.config" in sys.modules, "name": App.__name__})
"""


def test_demo_class_imports_without_running(board) -> None:
    res, _ = board(IMPORT_DEMO)
    assert res == {"config_loaded": False, "name": "App"}
