"""The simulated hardware itself: tiny MicroPython scripts on the virtual bench.

Each test runs real `micropython` processes with the fake machine/pyb/network
modules, wired by virtual_bench.harness.Bench: pin edges and IRQs, an
I2CTarget read/written by SoftI2C, pyb.I2C slave pairing, the reset line
restarting the ESP8266 process, faults (crash, hang, corruption) and the WiFi
proxy cut. No broker is involved.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest
from conftest import TEST_TIMEOUT, free_port

from virtual_bench.harness import ESP, PYBOARD, Bench

pytestmark = pytest.mark.slow

# The Pyboard side of a tiny exchange protocol over the real wiring: frame at
# mem[0:], syn up, wait for ack (IRQ), read the reply at mem[0x80:], syn down.
PB_ECHO = """
import asyncio, time
from machine import Pin, I2CTarget
mem = bytearray(256)
tgt = I2CTarget(1, 0x12, mem=mem, mem_addrsize=8)
syn = Pin('X11', Pin.OUT, value=0)
ack = Pin('Y8', Pin.IN)
rst = Pin('X12', Pin.OUT, value=1)
flag = asyncio.ThreadSafeFlag()
edges = []
def on_ack(p):
    edges.append(p.value())
    flag.set()
ack.irq(on_ack, Pin.IRQ_RISING | Pin.IRQ_FALLING)

async def wait_ack(level):
    t0 = time.ticks_ms()
    while ack() != level:
        if time.ticks_diff(time.ticks_ms(), t0) > 2000:
            raise OSError('ack timeout')
        try:
            await asyncio.wait_for_ms(flag.wait(), 100)
        except asyncio.TimeoutError:
            pass

async def main():
    while ack() or not {ready}:
        await asyncio.sleep_ms(20)
    mem[0xF0] = 0x5A            # our byte in the ESP8266's half: must survive its writes
    for i in range({count}):
        msg = b'hello %d' % i
        mem[0] = len(msg)
        mem[1:1 + len(msg)] = msg
        syn(1)
        await wait_ack(1)
        n = mem[0x80]
        print('reply', bytes(mem[0x81:0x81 + n]).decode())
        syn(0)
        await wait_ack(0)
    print('edges', len(edges), 'F0', hex(mem[0xF0]))
    print('done')
asyncio.run(main())
"""

# The ESP8266 side: woken by syn edges, reads the frame over SoftI2C,
# writes the upper-cased reply at 0x80, raises ack; lowers it when syn falls.
ESP_ECHO = """
import asyncio
from machine import Pin, SoftI2C, reset_cause
i2c = SoftI2C(scl=Pin(0), sda=Pin(2), freq=400000)
syn = Pin(5, Pin.IN)
ack = Pin(4, Pin.OUT, value=0)
flag = asyncio.ThreadSafeFlag()
syn.irq(lambda p: flag.set(), Pin.IRQ_RISING | Pin.IRQ_FALLING)
print('esp boot cause', reset_cause())
async def main():
    flag.set()
    while True:
        await flag.wait()
        if syn() and not ack():
            n = i2c.readfrom_mem(0x12, 0, 1)[0]
            data = i2c.readfrom_mem(0x12, 1, n)
            out = data.upper()
            i2c.writeto_mem(0x12, 0x80, bytes([len(out)]) + out)
            ack(1)
        elif not syn() and ack():
            ack(0)
asyncio.run(main())
"""


def write(dir_: Path, name: str, source: str) -> Path:
    path = dir_ / name
    path.write_text(textwrap.dedent(source))
    return path


def bench_for(tmp_path: Path, pb: str | None, esp: str | None, **kw: object) -> Bench:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    if pb is not None:
        write(code, "pb_test.py", pb)
    esp_main = write(code, "esp_test.py", esp or "print('idle esp')\n")
    return Bench(("127.0.0.1", 9), pyboard_module="pb_test", pyboard_paths=[code],
                 esp_main=esp_main, start_pyboard=pb is not None, workdir=tmp_path / "bench",
                 **kw)  # type: ignore[arg-type]


async def test_pins_irq_and_i2c_target(tmp_path: Path) -> None:
    """Edges reach IRQ handlers, SoftI2C reads and writes the I2CTarget memory,
    the Pyboard's own bytes in the ESP8266's half survive (only changed bytes
    are pushed), the bus counts bytes per direction and takes time."""
    bench = bench_for(tmp_path, PB_ECHO.format(ready="True", count=20), ESP_ECHO,
                      i2c_clock_hz=100_000)
    async with bench:
        await bench.wait_output(r"^done$", timeout=TEST_TIMEOUT)
        replies = [ln for ln in bench.output(PYBOARD) if ln.startswith("reply")]
        assert replies == [f"reply HELLO {i}" for i in range(20)]
        assert "edges 40 F0 0x5a" in bench.output(PYBOARD)
        st = bench.stats
        assert st["syn_edges"] == 20 and st["ack_edges"] == 20
        # per exchange: 1 + len header read, "hello N" read, reply written
        assert st["i2c_to_esp_transactions"] == 40
        assert st["i2c_to_pyboard_transactions"] == 20
        # the ESP8266 reads 1 + n bytes and writes 1 + n back
        assert st["i2c_to_esp_bytes"] == st["i2c_to_pyboard_bytes"] > 20 * 8
        assert st["i2c_errors"] == 0
        # 20 exchanges of (4 + 3+n + 2+1+n) bus bytes at 100 kHz take > 20 ms of bus time
        assert bench.bus_free_at > 0


async def test_i2c_without_target_is_enodev(tmp_path: Path) -> None:
    """No Pyboard process: the controller's transactions fail with ENODEV."""
    esp = """
    from machine import Pin, SoftI2C
    i2c = SoftI2C(scl=Pin(0), sda=Pin(2))
    print('scan', i2c.scan())
    try:
        i2c.readfrom_mem(0x12, 0, 4)
    except OSError as e:
        print('errno', e.errno)
    wrong = SoftI2C(scl=Pin(12), sda=Pin(13))
    try:
        wrong.writeto_mem(0x12, 0x80, b'x')
    except OSError as e:
        print('wrong pins errno', e.errno)
    """
    async with bench_for(tmp_path, None, esp) as bench:
        await bench.wait_output(r"wrong pins errno", board=ESP, timeout=TEST_TIMEOUT)
        assert bench.output(ESP) == ["scan []", "errno 19", "wrong pins errno 19"]
        assert bench.stats["i2c_errors"] == 2


async def test_pyb_i2c_slave_pairing(tmp_path: Path) -> None:
    """pyb.I2C SLAVE recv/send block until the controller's matching transaction
    (readfrom_mem = recv(1) + send(n); writeto_mem = recv(1 + n))."""
    pb = """
    import pyb
    from machine import Pin
    i2c = pyb.I2C(1, pyb.I2C.SLAVE, addr=0x12)
    syn = Pin('X11', Pin.OUT, value=0)
    try:
        i2c.recv(1, timeout=50)
    except OSError as e:
        print('idle recv errno', e.errno)
    syn(1)
    print('addr', i2c.recv(1, timeout=3000))
    i2c.send(b'\\x03abc', timeout=3000)
    got = i2c.recv(5, timeout=3000)
    print('written', got)
    print('done')
    """
    esp = """
    from machine import Pin, SoftI2C
    import time
    i2c = SoftI2C(scl=Pin(0), sda=Pin(2))
    syn = Pin(5, Pin.IN)
    while not syn():
        time.sleep_ms(5)
    print('read', i2c.readfrom_mem(0x12, 0, 4))
    i2c.writeto_mem(0x12, 0x80, b'WXYZ')
    print('esp done')
    """
    async with bench_for(tmp_path, pb, esp) as bench:
        await bench.wait_output(r"^done$", timeout=TEST_TIMEOUT)
        await bench.wait_output(r"esp done", board=ESP, timeout=TEST_TIMEOUT)
        assert bench.output(PYBOARD) == ["idle recv errno 110", "addr b'\\x00'",
                                         "written b'\\x80WXYZ'", "done"]
        assert "read b'\\x03abc'" in bench.output(ESP)
        assert bench.stats["i2c_mismatch"] == 0


async def test_reset_line_restarts_esp(tmp_path: Path) -> None:
    """Holding X12 low kills the ESP8266 process; releasing it starts a fresh one."""
    pb = """
    import time
    from machine import Pin
    rst = Pin('X12', Pin.OUT, value=1)
    time.sleep_ms(300)
    rst(0)
    time.sleep_ms(200)
    rst(1)
    print('pulsed')
    time.sleep(30)
    """
    esp = """
    import time
    from machine import reset_cause, unique_id
    print('esp up', reset_cause(), len(unique_id()))
    time.sleep(30)
    """
    async with bench_for(tmp_path, pb, esp) as bench:
        await bench.wait_output(r"pulsed", timeout=TEST_TIMEOUT)
        await bench.wait_output(r"esp up 2 4", board=ESP, timeout=TEST_TIMEOUT)
        assert [ln.boot for ln in bench.lines if ln.board == ESP] == [1, 2]
        assert bench.output(ESP) == ["esp up 1 4", "esp up 2 4"]  # power-on, then hard reset
        assert bench.stats["reset_pulses"] == 1 and bench.stats["esp_boots"] == 2


# A Pyboard watchdog in miniature: toggles syn; the ESP8266 mirrors it on ack;
# no mirror within 500 ms -> reset pulse (as pb_link does on a dead ESP8266).
PB_WATCHDOG = """
import time
from machine import Pin
syn = Pin('X11', Pin.OUT, value=0)
ack = Pin('Y8', Pin.IN)
rst = Pin('X12', Pin.OUT, value=1)
level = 0
while True:
    level ^= 1
    syn(level)
    t0 = time.ticks_ms()
    while ack() != level:
        if time.ticks_diff(time.ticks_ms(), t0) > 500:
            print('no answer: reset')
            rst(0)
            time.sleep_ms(100)
            rst(1)
            time.sleep_ms(300)
            syn(0)
            level = 0
            break
        time.sleep_ms(5)
    time.sleep_ms(20)
"""

ESP_MIRROR = """
import asyncio
from machine import Pin
syn = Pin(5, Pin.IN)
ack = Pin(4, Pin.OUT, value=0)
flag = asyncio.ThreadSafeFlag()
syn.irq(lambda p: flag.set())
print('mirror up')
async def main():
    while True:
        await flag.wait()
        ack(syn())
asyncio.run(main())
"""


async def test_crash_and_hang_are_recovered_by_reset(tmp_path: Path) -> None:
    """crash_esp (SIGKILL) leaves the ESP8266 dead until the reset pulse; a hung
    (SIGSTOPped) one is killed by the pulse and starts afresh."""
    async with bench_for(tmp_path, PB_WATCHDOG, ESP_MIRROR) as bench:
        await bench.wait_output(r"mirror up", board=ESP, timeout=TEST_TIMEOUT)
        await asyncio.sleep(0.3)
        await bench.crash_esp()
        assert not bench.esp_alive
        await bench.wait_output(r"no answer: reset", timeout=TEST_TIMEOUT)
        await bench.wait_output(r"mirror up", board=ESP, timeout=TEST_TIMEOUT,
                                since=bench.line_count)
        assert bench.procs[ESP].boot == 2
        mark = bench.line_count
        await bench.hang_esp()
        await bench.wait_output(r"no answer: reset", timeout=TEST_TIMEOUT, since=mark)
        await bench.wait_output(r"mirror up", board=ESP, timeout=TEST_TIMEOUT, since=mark)
        assert bench.procs[ESP].boot == 3 and bench.esp_alive
        assert bench.stats["esp_crashes"] == 1 and bench.stats["esp_hangs"] == 1


async def test_corrupt_i2c_flips_one_bit(tmp_path: Path) -> None:
    """corrupt_i2c(count=1): exactly one transfer carries exactly one flipped bit."""
    bench = bench_for(tmp_path, PB_ECHO.format(ready="ack.value() == 0 and go()", count=6),
                      ESP_ECHO)
    # go() waits for the harness to arm the corruption: a file appears
    flag = tmp_path / "go"
    write(tmp_path / "code", "pb_go.py", f"""
    import os
    def go():
        try:
            os.stat({str(flag)!r})
            return True
        except OSError:
            return False
    """)
    pb_src = (tmp_path / "code" / "pb_test.py").read_text()
    (tmp_path / "code" / "pb_test.py").write_text("from pb_go import go\n" + pb_src)
    async with bench:
        await bench.wait_output(r"esp boot", board=ESP, timeout=TEST_TIMEOUT)
        await bench.corrupt_i2c(count=1)
        flag.write_text("go")
        await bench.wait_output(r"^done$", timeout=TEST_TIMEOUT)
        replies = [ln[6:] for ln in bench.output(PYBOARD) if ln.startswith("reply")]
        good = [f"HELLO {i}" for i in range(6)]
        assert len(replies) == 6
        diff = [(a, b) for a, b in zip(replies, good, strict=True) if a != b]
        assert bench.stats["i2c_corrupted"] == 1
        # the flipped bit hit a length byte or one character of one reply
        assert len(diff) <= 1


async def test_wifi_cut_drops_connections_and_wlan(tmp_path: Path) -> None:
    """cut_wifi: WLAN.isconnected() goes false, the proxied TCP connection is
    dropped and new ones are refused; after the outage both work again."""
    received: list[bytes] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(100):
            received.append(data)
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    target_port = server.sockets[0].getsockname()[1]
    proxy_port = free_port()
    esp = f"""
    import network, socket, time
    sta = network.WLAN(network.STA_IF)
    sta.active(True)
    sta.connect('bench-ap', 'bench-pw')
    while not sta.isconnected():
        time.sleep_ms(10)
    print('wifi up', sta.status(), sta.ifconfig()[0] != '0.0.0.0')
    def dial():
        s = socket.socket()
        s.connect(socket.getaddrinfo('127.0.0.1', {proxy_port})[0][-1])
        return s
    s = dial()
    s.write(b'ping')
    print('echo', s.read(4))
    print('waiting')
    while sta.isconnected():
        time.sleep_ms(10)
    print('wifi down', sta.status())
    try:
        print('read after cut', s.read(4))
    except OSError as e:
        print('read after cut errno', e.errno)
    try:
        dial()
        print('dial during cut ok')
    except OSError as e:
        print('dial during cut errno', e.errno)
    while not sta.isconnected():
        time.sleep_ms(10)
    s = dial()
    s.write(b'pong')
    print('echo again', s.read(4))
    """
    bench = bench_for(tmp_path, None, esp, proxy_port=proxy_port)
    bench.broker = ("127.0.0.1", target_port)
    try:
        async with bench:
            await bench.wait_output(r"^waiting$", board=ESP, timeout=TEST_TIMEOUT)
            await bench.cut_wifi(1.0)
            await bench.wait_output(r"echo again", board=ESP, timeout=TEST_TIMEOUT)
            out = bench.output(ESP)
            assert out[0] == "wifi up 5 True"
            assert "echo b'ping'" in out
            assert any(ln.startswith("wifi down") for ln in out)
            assert ("read after cut b''" in out) or any("read after cut errno" in ln for ln in out)
            assert "dial during cut errno 111" in out  # ECONNREFUSED
            assert out[-1] == "echo again b'pong'"
            assert bench.stats["wifi_cuts"] == 1
    finally:
        server.close()


def test_sniffer_counts_loaded_exchanges_apart_from_empty_polls() -> None:
    """The throughput model times the exchanges a busy link needs: one whose
    frame carried payload either way is loaded; a poll with two empty frames is
    not (benchmarks/throughput.py modelled_rows)."""
    from link_core.i2c_tools import encode_block
    from virtual_bench.sniffer import BusSniffer

    got: list[tuple[str, bytes]] = []
    s = BusSniffer(lambda d, m: got.append((d, m)))

    def exchange(up: bytes, down: bytes, seq: int) -> None:
        s.transfer(False, 0x00, encode_block(0, seq, 0, up))  # the Initiator's frame
        s.transfer(True, 0x80, encode_block(0, seq, 0, down))  # the Responder's
        s.exchange_done()

    exchange(b"", b"", 1)  # an empty poll
    exchange(b"qline", b"", 2)
    exchange(b"", b"", 3)
    exchange(b"", b"a 1", 4)
    exchange(b"x", b"y", 5)
    assert s.loaded == 3 and s.frames == 10
    assert got == [("up", b"qline"), ("down", b"a 1"), ("up", b"x"), ("down", b"y")]
