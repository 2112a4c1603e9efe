"""Support for the esp_bridge tests: fake ESP8266 hardware and a scripted Pyboard.

The bridge's device code runs unmodified under the MicroPython unix port. A
temporary directory placed first on MICROPYPATH holds small modules named
``machine``, ``network`` and ``esp`` (the only hardware the bridge reaches)
and ``sim_pyboard``, an Initiator built on link_core that plays the Pyboard's
side of the I2C link in the same process: it owns the 256-byte target memory,
drives syn and answers ack like the real board. Their MicroPython source is
kept here as strings, so the tests need no files outside tests/test_bridge_*.

The helpers are imported by the other test_bridge_* modules; the tests at the
bottom check the fakes themselves.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

from conftest import ROOT, TEST_TIMEOUT

ESP_BRIDGE = ROOT / "esp_bridge"

FAKE_MACHINE = r'''
# Fake machine module for the esp_bridge tests (not device code).
import asyncio
import os

MEM = bytearray(256)  # the Pyboard's I2C target memory
MV = memoryview(MEM)
LOG = None  # a list to record bus transactions: (op, memaddr, nbytes)
FAULTS = {}  # "eio": every k-th transaction raises OSError(EIO)
#              "flip_in": every k-th read returns one flipped bit
#              "flip_out": every k-th write stores one flipped bit
#              "long_hdr": every k-th header read reports length 200
_started = [False]


class Pin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    PULL_UP = 1
    IRQ_RISING = 1
    IRQ_FALLING = 2
    pins = {}

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        self.mode = mode
        self._v = 1 if value else 0
        self._h = None
        self._t = 0
        Pin.pins[id] = self

    def value(self, v=None):
        if v is None:
            return self._v
        self.drive(v)

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.drive(1)

    def off(self):
        self.drive(0)

    def drive(self, v):
        v = 1 if v else 0
        if v == self._v:
            return
        self._v = v
        if self._h is not None and self._t & (1 if v else 2):
            self._h(self)

    def irq(self, handler=None, trigger=3, hard=False):
        self._h = handler
        self._t = trigger


class SoftI2C:
    def __init__(self, scl=None, sda=None, freq=400000, timeout=50000):
        self.n = 0
        if os.getenv("PBLINK_SIM_PYBOARD") and not _started[0]:
            _started[0] = True
            import sim_pyboard

            asyncio.create_task(sim_pyboard.main())

    def _tick(self, op, memaddr, n):
        self.n += 1
        if LOG is not None:
            LOG.append((op, memaddr, n))
        k = FAULTS.get("eio")
        if k and self.n % k == 0:
            raise OSError(5)

    def readfrom_mem(self, addr, memaddr, nbytes, addrsize=8):
        if addr != 0x12:
            raise OSError(19)
        self._tick("r", memaddr, nbytes)
        k = FAULTS.get("long_hdr")
        if k and nbytes == 4 and self.n % k == 0:
            b = bytearray(MV[memaddr : memaddr + 4])
            b[3] = 200
            return bytes(b)
        k = FAULTS.get("flip_in")
        if k and self.n % k == 0:
            b = bytearray(MV[memaddr : memaddr + nbytes])
            b[(self.n // k) % nbytes] ^= 0x04
            return bytes(b)
        return bytes(MV[memaddr : memaddr + nbytes])

    def writeto_mem(self, addr, memaddr, buf, addrsize=8):
        if addr != 0x12:
            raise OSError(19)
        self._tick("w", memaddr, len(buf))
        n = len(buf)
        MEM[memaddr : memaddr + n] = buf
        k = FAULTS.get("flip_out")
        if k and self.n % k == 0 and n:
            MEM[memaddr + (self.n // k) % n] ^= 0x20


def reset():
    print("MACHINE RESET")
    raise SystemExit(3)


def freq(f=None):
    return 80000000
'''

FAKE_NETWORK = r'''
# Fake network module for the esp_bridge tests (not device code).
# "WiFi" is up unless the file named by PBLINK_FAKE_WIFI_DOWN exists.
import os

_DOWN = os.getenv("PBLINK_FAKE_WIFI_DOWN")
STA_IF = 0
AP_IF = 1
STAT_IDLE = 0
STAT_CONNECTING = 1
STAT_GOT_IP = 5
UP = [True]  # or tests cut "WiFi" by setting UP[0] = False


def _up():
    if not UP[0]:
        return False
    if _DOWN:
        try:
            os.stat(_DOWN)
            return False
        except OSError:
            pass
    return True


class WLAN:
    PM_NONE = 0

    def __init__(self, interface=STA_IF):
        self.interface = interface
        self._active = False
        self._ssid = ""

    def active(self, v=None):
        if v is None:
            return self._active
        self._active = bool(v)

    def isconnected(self):
        return self.interface == STA_IF and self._active and _up()

    def connect(self, ssid=None, key=None):
        if ssid is not None:
            self._ssid = ssid

    def disconnect(self):
        pass

    def status(self, *a):
        return STAT_GOT_IP if self.isconnected() else STAT_CONNECTING

    def config(self, *a, **k):
        if a:
            return self._ssid
'''

FAKE_ESP = r'''
# Fake esp module for the esp_bridge tests (not device code).
SLEEP_NONE = 0
SLEEP_LIGHT = 1
SLEEP_MODEM = 2
_sleep = [SLEEP_MODEM]


def sleep_type(t=None):
    if t is None:
        return _sleep[0]
    _sleep[0] = t
'''

SIM_PYBOARD = r'''
# A scripted Pyboard for the esp_bridge tests (not device code): the
# Initiator of PROTOCOL.md 1.2 over the fake bus of machine.py, built on
# link_core. main() runs the app scenario configured by environment variables.
import asyncio
import gc
import json
import os
import sys
import time

import machine
from link_core.i2c_link import FRAME_MAX, INITIATOR, LinkEndpoint, PollPolicy


class Initiator:
    def __init__(self, rx_queue=4, timeout_ms=300):
        self.link = LinkEndpoint(INITIATOR, 4, rx_queue)
        self.buf = bytearray(FRAME_MAX)
        self.bv = memoryview(self.buf)
        self.poll = PollPolicy()
        self.timeout_ms = timeout_ms
        self.exchanges = 0
        self.fails = 0

    async def _wait(self, pin, level):
        t0 = time.ticks_ms()
        while pin._v != level:
            if time.ticks_diff(time.ticks_ms(), t0) > self.timeout_ms:
                return False
            await asyncio.sleep_ms(0)
        return True

    async def exchange(self):
        syn = machine.Pin.pins[5]
        ack = machine.Pin.pins[4]
        if not await self._wait(ack, 0):
            self.fails += 1
            return False
        n = self.link.build_frame(self.buf)
        machine.MEM[0:n] = self.bv[:n]
        syn.drive(1)
        ok = await self._wait(ack, 1)
        if ok:
            self.link.on_frame(machine.MV[0x80 : 0x80 + FRAME_MAX])
        syn.drive(0)
        if ok:
            ok = await self._wait(ack, 0)
        self.exchanges += 1
        if not ok:
            self.fails += 1
        return ok

    async def step(self):
        ok = await self.exchange()
        d = self.poll.delay_ms(time.ticks_ms(), self.link.busy) if ok else 20
        await asyncio.sleep_ms(d)
        return ok


def frame(i, size):
    if i % 2:
        head = "q|0badcafe|%d|%d|" % (i, i)
    else:
        head = "u|0badcafe|"
    line = "line %d " % i
    return (head + line + "x" * max(0, size - len(line))).encode()


async def main():
    cfg = json.loads(os.getenv("PBLINK_SIM_CONFIG"))
    n_up = int(os.getenv("PBLINK_SIM_UP", "0"))
    size = int(os.getenv("PBLINK_SIM_SIZE", "60"))
    ini = Initiator()
    link = ini.link
    cmsg = b"C" + json.dumps(cfg).encode()
    if os.getenv("PBLINK_SIM_EARLY"):  # a frame before the config
        link.queue_message(b"u|0badcafe|early")
        link.queue_message(cmsg)
    else:
        link.sync_message = cmsg
    ok_ = False
    sent = 0
    down = 0
    bl = 0  # last backlog frame number seen
    k = 0
    peak = 0
    live_peak = 0
    t_gc = time.ticks_ms()
    gc.collect()
    base = gc.mem_alloc()
    print("PB START heap_base=%d" % base)
    synced = False
    while True:
        await ini.step()
        if link.synced and not synced:
            print("PB SYNCED")
        synced = link.synced
        a = gc.mem_alloc()
        if a > peak:
            peak = a
        now = time.ticks_ms()
        if time.ticks_diff(now, t_gc) >= 1000:
            t_gc = now
            gc.collect()
            a = gc.mem_alloc()
            if a > live_peak:
                live_peak = a
            if os.getenv("PBLINK_SIM_MEMLOG"):
                print("PB MEM live=%d sent=%d down=%d" % (a, sent, down))
        while True:
            m = link.pop_message()
            if m is None:
                break
            c = m[0]
            if c == 0x4B:  # K
                k += 1
                print("PB K %d" % k)
            elif c == 0x55:  # U
                ok_ = True
                print("PB U")
            elif c == 0x44:  # D, with the bridge's reason when it has one
                ok_ = False
                print("PB D" + (" " + m[1:].decode() if len(m) > 1 else ""))
            elif c in b"RWBE":
                print("PB %s %s" % (chr(c), m[1:].decode()))
            else:
                down += 1
                if down % 100 == 0:
                    print("PB DOWN %d" % down)
                i = m.find(b"|bl ")  # backlog frames "...|bl <n> ...": checked for order
                if i > 0:
                    n = int(m[i + 4 : m.find(b" ", i + 4)])
                    if n != bl + 1:
                        print("PB BL GAP want %d got %d" % (bl + 1, n))
                    bl = n
                    if n % 50 == 0:
                        print("PB BL %d" % n)
                if m.endswith(b"|END"):
                    gc.collect()
                    print(
                        "PB DONE up=%d down=%d k=%d exchanges=%d fails=%d peak=%d live_peak=%d"
                        % (sent, down, k, ini.exchanges, ini.fails, peak, live_peak)
                    )
                    print("PB COUNTERS %s" % json.dumps(link.counters()))
                    import micropython

                    micropython.mem_info()
                    sys.exit(0)
        while ok_ and sent < n_up and link.can_queue():
            sent += 1
            link.queue_message(frame(sent, 1000 if sent % 50 == 0 else size))
            if sent % 100 == 0:
                print("PB UP %d" % sent)
'''


def make_hw_dir(tmp_path: Path) -> Path:
    """A directory with the fake machine, network, esp and sim_pyboard modules."""
    hw = tmp_path / "fakehw"
    hw.mkdir(exist_ok=True)
    (hw / "machine.py").write_text(FAKE_MACHINE)
    (hw / "network.py").write_text(FAKE_NETWORK)
    (hw / "esp.py").write_text(FAKE_ESP)
    (hw / "sim_pyboard.py").write_text(SIM_PYBOARD)
    return hw


def compile_tree(mpy_cross_bin: str, hw: Path, dst: Path) -> Path:
    """Precompiled .mpy copies of the bridge, link_core and the fakes in dst.

    Frozen on the ESP8266, the bridge is never compiled there; under the unix
    port compiling .py source costs transient heap the device never spends,
    so the memory test loads bytecode (.mpy) instead."""
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "link_core").mkdir(exist_ok=True)
    sources = [(f, dst / (f.stem + ".mpy")) for f in ESP_BRIDGE.glob("*.py")
               if f.name not in ("main.py", "manifest.py")]
    core = ROOT / "link_core"
    sources += [(f, dst / "link_core" / (f.stem + ".mpy")) for f in core.glob("*.py")]
    sources += [(f, dst / (f.stem + ".mpy")) for f in hw.glob("*.py")]
    for src, out in sources:
        r = subprocess.run([mpy_cross_bin, "-o", str(out), str(src)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    # main.py runs as a script: its directory leads sys.path, so it sits with the .mpy files
    shutil.copy(ESP_BRIDGE / "main.py", dst / "main.py")
    return dst


def mpy_env(*path: Path | str, frozen: bool = True, **extra: str) -> dict[str, str]:
    """Environment for a micropython child: MICROPYPATH from path, plus .frozen
    (where the unix port keeps asyncio) unless frozen=False."""
    env = dict(os.environ)
    env["MICROPYPATH"] = os.pathsep.join([str(p) for p in path] + ([".frozen"] if frozen else []))
    env.update(extra)
    return env


class MpyProcess:
    """A micropython child whose stdout lines are collected by a thread."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd or ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            self._q.put(line)
        self._q.put(None)

    def wait_for(self, prefix: str, timeout: float = TEST_TIMEOUT) -> str:
        """The first new line starting with prefix; AssertionError on timeout or exit."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no line {prefix!r} within {timeout} s; output:\n{self.output()}")
            try:
                line = self._q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self._q.put(None)
                raise AssertionError(f"process exited before {prefix!r}; output:\n{self.output()}")
            if line.startswith(prefix):
                return line

    def expect(self, prefix: str, timeout: float = TEST_TIMEOUT) -> str:
        """A line starting with prefix, printed before or within timeout (any order)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.lines):
                if line.startswith(prefix):
                    return line
            if time.monotonic() > deadline or (self.proc.poll() is not None and self._q.empty()):
                raise AssertionError(f"no line {prefix!r}; output:\n{self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        return "\n".join(self.lines[-80:])

    def wait(self, timeout: float = TEST_TIMEOUT) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            self.kill()
            raise AssertionError(
                f"process did not exit within {timeout} s; output:\n{self.output()}") from e
        self._t.join(timeout=5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> MpyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def run_mpy(micropython_bin: str, script: str, tmp_path: Path, *path: Path | str,
            args: list[str] | None = None, timeout: float = TEST_TIMEOUT,
            heapsize: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a MicroPython script (source text) to completion."""
    f = tmp_path / "script.py"
    f.write_text(script)
    argv = [micropython_bin] + (["-X", f"heapsize={heapsize}"] if heapsize else []) + [str(f)]
    return subprocess.run(
        argv + (args or []), env=mpy_env(*path, **env), cwd=ROOT, capture_output=True,
        text=True, timeout=timeout,
    )


# --- tests of the fakes themselves ------------------------------------------


def test_fakes_compile(mpy_cross_bin: str, tmp_path: Path) -> None:
    hw = make_hw_dir(tmp_path)
    for f in hw.glob("*.py"):
        r = subprocess.run([mpy_cross_bin, "-o", str(tmp_path / (f.stem + ".mpy")), str(f)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_fake_bus_transfers(micropython_bin: str, tmp_path: Path) -> None:
    hw = make_hw_dir(tmp_path)
    script = """
import machine
i2c = machine.SoftI2C(scl=machine.Pin(0), sda=machine.Pin(2))
machine.MEM[0:4] = b"\\x50\\x01\\x00\\x02"
assert i2c.readfrom_mem(0x12, 0, 4) == b"\\x50\\x01\\x00\\x02"
i2c.writeto_mem(0x12, 0x80, b"abc")
assert bytes(machine.MEM[0x80:0x83]) == b"abc"
try:
    i2c.readfrom_mem(0x13, 0, 1)
except OSError as e:
    print("nodev", e.args[0])
hits = []
p = machine.Pin(5, machine.Pin.IN)
p.irq(handler=lambda q: hits.append(q.value()),
      trigger=machine.Pin.IRQ_RISING | machine.Pin.IRQ_FALLING)
p.drive(1); p.drive(1); p.drive(0)
print("edges", hits)
"""
    r = run_mpy(micropython_bin, script, tmp_path, hw)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "nodev 19" in r.stdout
    assert "edges [1, 0]" in r.stdout
