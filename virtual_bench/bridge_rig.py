"""The bridge's traffic rig: the real esp_bridge under MicroPython, fake ESP8266 hardware,
a scripted Pyboard, the server's side over a real broker.

The bridge's device code runs unmodified under the MicroPython unix port
(64-bit from PyPI, or the 32-bit build of ``virtual_bench.micropython32`` with
the bridge frozen in, as on the ESP8266). A directory placed first on
MICROPYPATH holds small modules named ``machine``, ``network`` and ``esp`` (the
only hardware the bridge reaches) and ``sim_pyboard``, an Initiator built on
link_core that plays the Pyboard's side of the I2C link in the same process: it
owns the 256-byte target memory, drives syn and answers ack like the real
board. ``Server`` plays the server application with paho-mqtt.

``run_traffic()`` is the bridge's traffic test (N frames each way, every 50th
up a 1,000-byte line, and a broker restart) shared by
tests/test_bridge_relay.py, tests/test_bridge_heap32.py and ``pblink bench``
(benchmarks/esp_budget.py). Memory figures: docs/FIRMWARE.md "Memory budget".
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from virtual_bench.harness import free_port

ROOT = Path(__file__).resolve().parent.parent
# One knob stretches every wait of the tests and of this rig (slow machine: 30).
WAIT_S = float(os.environ.get("PBLINK_WAIT_S", "15"))

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
        b = bytearray(nbytes)
        self.readfrom_mem_into(addr, memaddr, b)
        return bytes(b)

    def readfrom_mem_into(self, addr, memaddr, buf, addrsize=8):
        if addr != 0x12:
            raise OSError(19)
        nbytes = len(buf)
        self._tick("r", memaddr, nbytes)
        buf[:] = MV[memaddr : memaddr + nbytes]
        k = FAULTS.get("long_hdr")
        if k and nbytes == 4 and self.n % k == 0:
            buf[3] = 200
        k = FAULTS.get("flip_in")
        if k and self.n % k == 0:
            buf[(self.n // k) % nbytes] ^= 0x04

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
        self.mem_errors = 0

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
            try:
                self.link.on_frame(machine.MV[0x80 : 0x80 + FRAME_MAX])
            except MemoryError:  # its chunk stays unacknowledged: resent
                self.mem_errors += 1
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


# What one bytes object of n bytes holds in the heap: its header (4 words, one GC
# block) plus its data and terminator rounded up to GC blocks of 4 words
# (py/objstr.c mp_obj_new_str_copy, py/gc.c BYTES_PER_BLOCK); main() checks it.
_BLK = 16 if sys.maxsize < 2**32 else 32


def held(n):
    return _BLK + (n + _BLK) // _BLK * _BLK


def fragment(keep, size):
    """Fill the heap with pieces of ``size`` bytes kept in ``keep``. With size
    200, every other piece is then freed: plenty free, but no hole fits a
    1,000-byte line (the ESP8266's failure mode). Called again with size 600 it
    plugs the large holes that objects dying since have opened. The pieces hang
    in groups of 16 chained by their last slot: no list grows (and leaves a hole)."""
    head = None
    while True:
        try:
            group = [None] * 17
        except MemoryError:
            break
        group[16] = head
        head = group
        n = 0
        try:
            while n < 16:
                group[n] = bytearray(size)
                n += 1
        except MemoryError:
            break
    if size <= 200:
        group = head
        while group is not None:
            for i in range(0, 16, 2):
                group[i] = None
            group = group[16]
    try:
        keep.append(head)
    except MemoryError:
        pass


async def main():
    gc.collect()
    a0 = gc.mem_alloc()
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
    bridge_peak = 0  # live heap minus what this scripted Pyboard holds
    own_peak = 0
    t_gc = time.ticks_ms()
    m = None
    frag = os.getenv("PBLINK_SIM_FRAGMENT")  # "sent,ms": fragment the heap for ms
    frag_at, frag_ms = [int(x) for x in frag.split(",")] if frag else (0, 0)
    ballast = None
    frag_t0 = None
    gc.collect()
    own_fixed = gc.mem_alloc() - a0  # this Pyboard's Initiator, config, locals
    m = frame(1000, 1000)
    gc.collect()
    check = gc.mem_alloc() - a0 - own_fixed
    m = None
    base = gc.mem_alloc()
    print("PB START heap_base=%d own_fixed=%d held_check=%d/%d"
          % (base, own_fixed, check, held(len(frame(1000, 1000)))))
    synced = False
    while True:
        await ini.step()
        if link.synced and not synced:
            print("PB SYNCED")
        synced = link.synced
        a = gc.mem_alloc()
        if a > peak:
            peak = a
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
                        " bridge_peak=%d own_fixed=%d own_peak=%d mem_errors=%d"
                        % (sent, down, k, ini.exchanges, ini.fails, peak, live_peak,
                           bridge_peak, own_fixed, own_peak, ini.mem_errors)
                    )
                    print("PB COUNTERS %s" % json.dumps(link.counters()))
                    import micropython

                    micropython.mem_info()
                    sys.exit(0)
        m = None
        now = time.ticks_ms()
        if time.ticks_diff(now, t_gc) >= 1000:
            # once a second, with no received message held: the live heap, and
            # what of it is this Pyboard's (its fixed part and its queued lines)
            t_gc = now
            gc.collect()
            a = gc.mem_alloc()
            own = own_fixed
            for q in link._txq:
                if q is not cmsg:
                    own += held(len(q))
            if a > live_peak:
                live_peak = a
            if a - own > bridge_peak:
                bridge_peak = a - own
            if own > own_peak:
                own_peak = own
            if os.getenv("PBLINK_SIM_MEMLOG"):
                print("PB MEM live=%d own=%d sent=%d down=%d" % (a, own, sent, down))
        if frag_at and sent >= frag_at and ballast is None and frag_t0 is None:
            print("PB FRAGMENT")
            ballast = []
            fragment(ballast, 200)
            frag_t0 = time.ticks_ms()
        if ballast is not None:
            now = time.ticks_ms()
            if time.ticks_diff(now, frag_t0) >= frag_ms:
                ballast = None
                gc.collect()
                print("PB RELEASED mem_errors=%d" % ini.mem_errors)
            else:  # at every step: a hole that opened is plugged before the bridge's turn
                fragment(ballast, 600)
        try:
            while ok_ and sent < n_up and link.can_queue():
                link.queue_message(frame(sent + 1, 1000 if (sent + 1) % 50 == 0 else size))
                sent += 1
                if sent % 100 == 0:
                    print("PB UP %d" % sent)
        except MemoryError:  # no room for the next line yet: made again later
            ini.mem_errors += 1
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
        if r.returncode != 0:
            raise RuntimeError(f"mpy-cross {src}: {r.stderr}")
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

    def wait_for(self, prefix: str, timeout: float = WAIT_S) -> str:
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

    def expect(self, prefix: str, timeout: float = WAIT_S) -> str:
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

    def wait(self, timeout: float = WAIT_S) -> int:
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



FAST = {
    "keepalive_ms": 500,
    "wifi_connect_ms": 1000,
    "wifi_stable_ms": 200,
    "reconnect_min_ms": 200,
    "reconnect_max_ms": 1000,
    "mqtt_keepalive_s": 4,
    "mqtt_response_ms": 1500,
}


def config(port: int, conn_id: str = "dev1", timeout_ms: int = 1500, report_s: int = 0,
           user: str = "", password: str = "", tuning: dict | None = None,
           host: str = "127.0.0.1") -> list:
    return [conn_id, port, host, timeout_ms, report_s, "ssid", "wifi-pw", user, password,
            "pblink", False, FAST if tuning is None else tuning]


FAKES = "machine, network, esp, sim_pyboard"
BRIDGE = "bridge, wifi"  # what main.py and Bridge() import; the rest follows from them
IMPORTS = f"import asyncio, {FAKES}, {BRIDGE}"


def _mpy_run(micropython_bin: str, code: str, env: dict[str, str], cwd: Path) -> str:
    r = subprocess.run([micropython_bin, "-c", code], env=env, cwd=cwd, capture_output=True,
                       text=True, timeout=WAIT_S * 4)
    if r.returncode != 0:
        raise RuntimeError(f"{micropython_bin} -c ... failed:\n{r.stdout}{r.stderr}")
    return r.stdout


def run_mpy_code(micropython_bin: str, mpy_dir: Path, code: str) -> str:
    """Stdout of ``code`` run with ``mpy_dir`` (see ``heap_after``) as path and
    working folder; RuntimeError with the output when it fails."""
    return _mpy_run(micropython_bin, code, mpy_env(mpy_dir, frozen=False), mpy_dir)


def heap_after(micropython_bin: str, mpy_dir: Path, imports: str) -> int:
    """gc.mem_alloc() after a collect, once ``imports`` (a statement) has run.

    ``mpy_dir``: from ``compile_tree`` (bridge, link_core and fakes as .mpy) or,
    for a binary with the bridge frozen in, from ``compile_fakes``; it is also
    the working folder, so no source tree shadows the frozen modules."""
    code = (f"import gc, sys\nsys.path.insert(0, '.frozen')\n{imports}\n"
            "gc.collect()\nprint(gc.mem_alloc())")
    return int(run_mpy_code(micropython_bin, mpy_dir, code).split()[-1])


def import_cost(micropython_bin: str, mpy_dir: Path) -> int:
    """Bytes of heap in use once every module of the traffic test is imported."""
    return heap_after(micropython_bin, mpy_dir, IMPORTS)


def compile_fakes(mpy_cross_bin: str, hw: Path, dst: Path) -> Path:
    """The fakes alone as .mpy in dst: for a binary with the bridge frozen in."""
    dst.mkdir(parents=True, exist_ok=True)
    for src in hw.glob("*.py"):
        r = subprocess.run([mpy_cross_bin, "-o", str(dst / (src.stem + ".mpy")), str(src)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"mpy-cross {src}: {r.stderr}")
    return dst


def start_bridge(micropython_bin: str, tmp_path: Path, cfg: list, up: int = 0,
                 heapsize: str | int | None = None, mpy_dir: Path | None = None,
                 frozen_bridge: bool = False, **env: str) -> MpyProcess:
    """main.py as the bench starts it; with mpy_dir, from precompiled modules.

    ``frozen_bridge``: the binary has esp_bridge/manifest.py frozen in (as on the
    ESP8266): it runs the frozen main.py (``-m main``) with only the fakes of
    ``mpy_dir`` (``compile_fakes``) on the path, from a folder with no sources."""
    hw = make_hw_dir(tmp_path)
    argv = [micropython_bin] + (["-X", f"heapsize={heapsize}"] if heapsize else [])
    cwd = None
    if frozen_bridge:
        if mpy_dir is None:
            raise ValueError("frozen_bridge needs mpy_dir (compile_fakes)")
        argv += ["-m", "main"]
        path: tuple[Path | str, ...] = (mpy_dir, ".frozen")
        cwd = mpy_dir
    else:
        argv.append(str((mpy_dir or ESP_BRIDGE) / "main.py"))
        path = (mpy_dir,) if mpy_dir else (hw, ESP_BRIDGE, ROOT)
    e = mpy_env(*path, frozen=False, PBLINK_SIM_PYBOARD="1",
                PBLINK_SIM_CONFIG=json.dumps(cfg), PBLINK_SIM_UP=str(up), **env)
    return MpyProcess(argv, e, cwd=cwd)


class Server:
    """The server application's side, reduced to what the bridge needs."""

    def __init__(self, port: int, conn_id: str = "dev1", root: str = "pblink",
                 user: str | None = None, password: str | None = None) -> None:
        self.base = f"{root}/{conn_id}"
        self.answer = True  # answer 'h' with self.reply
        self.reply = b"h"
        self.up: list[bytes] = []
        self.status: list[tuple[bytes, bool]] = []
        self.reports: list[tuple[bytes, bool]] = []  # <root>/<id>/report: (payload, retained)
        self._cv = threading.Condition()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"srv-{free_port()}")
        self.c.on_message = self._on_message
        self.c.on_connect = self._on_connect
        if user is not None:
            self.c.username_pw_set(user, password)
        self.c.reconnect_delay_set(0.1, 0.5)
        self._subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: self._subscribed.set()
        self.c.connect("127.0.0.1", port, keepalive=5)
        self.c.loop_start()
        if not self._subscribed.wait(WAIT_S):
            raise TimeoutError(f"server side: no SUBACK from the broker on port {port}")

    def _on_connect(self, c: paho.Client, *_a: object) -> None:
        c.subscribe([(f"{self.base}/up", 1), (f"{self.base}/status", 1),
                     (f"{self.base}/report", 0)])

    def _on_message(self, c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        with self._cv:
            if msg.topic.endswith("/status"):
                self.status.append((msg.payload, bool(msg.retain)))
            elif msg.topic.endswith("/report"):
                self.reports.append((msg.payload, bool(msg.retain)))
            elif msg.payload == b"h":
                if self.answer:
                    c.publish(f"{self.base}/down", self.reply, qos=0)
            else:
                self.up.append(msg.payload)
            self._cv.notify_all()

    def wait(self, pred, timeout: float = WAIT_S, what: str = "",
             proc: MpyProcess | None = None) -> None:
        deadline = time.monotonic() + timeout
        with self._cv:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = "" if proc is None else "\noutput:\n" + proc.output()
                    raise AssertionError(f"timed out waiting for {what}; status={self.status[-5:]} "
                                         f"up={len(self.up)}{tail}")
                self._cv.wait(left)

    def send(self, frame: bytes, qos: int) -> paho.MQTTMessageInfo:
        return self.c.publish(f"{self.base}/down", frame, qos=qos)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()



def _indices(frames: list[bytes]) -> list[int]:
    return [int(f.rsplit(b"|", 1)[1].split()[1]) for f in frames]


def down_frame(i: int, long_every: int = 50) -> bytes:
    """The i-th frame the server sends: q (QoS 1) when i is odd, else u; every
    long_every-th carries a 1,000-byte line."""
    line = f"down {i}"
    if long_every and i % long_every == long_every - 1:
        line += " " + "y" * (999 - len(line))
    return (f"q|5e55f00d|{i}|{i}|{line}" if i % 2 else f"u|5e55f00d|{line}").encode()


def run_traffic(micropython_bin: str, work: Path, port: int, restart_broker: Callable[[], Any],
                n: int = 1000, heapsize: int | str | None = None, mpy_dir: Path | None = None,
                frozen_bridge: bool = False, **env: str) -> dict[str, Any]:
    """The bridge's traffic test: connect, n frames up, n down, a broker restart.

    Up: the scripted Pyboard's lines of 60 bytes, every 50th 1,000 bytes (9
    chunks). Down: ``down_frame(i)``, half at QoS 1, every 50th 1,000 bytes,
    paced by what the Pyboard got. Then ``restart_broker()`` (a blocking call);
    the bridge must say D, reconnect and say U. Checks everything arrived, in
    order, with no traceback, and returns the scripted Pyboard's figures (ints,
    bytes of heap, see SIM_PYBOARD) ``peak``, ``live_peak``, ``bridge_peak``,
    ``own_fixed``, ``own_peak``, plus ``up``, ``down``, ``reports`` (the ``R``
    reports as lists), ``lines`` (the whole output). Raises AssertionError
    (with the output) when any check fails.
    """
    srv = Server(port)
    try:
        with start_bridge(micropython_bin, work, config(port, report_s=1), up=n,
                          heapsize=heapsize, mpy_dir=mpy_dir, frozen_bridge=frozen_bridge,
                          **env) as p:
            limit = 30 + n / 20  # a healthy bridge relays well over 100 frames/s here
            p.wait_for("PB SYNCED")
            p.wait_for("PB U")  # the server answered 'h': reachable
            if srv.status[-1][0] != b"online":
                raise AssertionError(f"status {srv.status[-1]!r}, not online")
            srv.wait(lambda: len(srv.up) >= n, timeout=limit, what=f"{n} frames up", proc=p)
            if _indices(srv.up) != list(range(1, n + 1)):
                raise AssertionError(f"up frames lost or out of order: {_indices(srv.up)[:20]}...")
            long = [f for f in srv.up if len(f) > 1000]
            if len(long) != n // 50:
                raise AssertionError(f"{len(long)} long lines up, not {n // 50}")
            sent = done = 0
            while sent < n:
                batch = min(100, n - sent)
                for i in range(sent, sent + batch):
                    srv.send(down_frame(i), 1)
                sent += batch
                if sent - done > 300:
                    done = int(p.wait_for("PB DOWN", timeout=limit).split()[2])
            p.wait_for(f"PB DOWN {n // 100 * 100}" if n >= 100 else "PB K", timeout=limit)
            online_before = sum(m == b"online" for m, _ in srv.status)
            restart_broker()
            p.wait_for("PB D", timeout=30)
            p.wait_for("PB U", timeout=30)
            srv.wait(lambda: sum(m == b"online" for m, _ in srv.status) > online_before,
                     what="status online again", proc=p)
            p.wait_for("PB R [2,", timeout=30)  # reports count the second connection
            deadline = time.monotonic() + 30
            while p.proc.poll() is None and time.monotonic() < deadline:
                srv.send(b"u|5e55f00d|END", 1)
                time.sleep(0.3)
            done_line = p.wait_for("PB DONE")
            rc = p.wait()
            out = p.output()
            if rc != 0 or "Traceback" in out:
                raise AssertionError(f"bridge process rc={rc}; output:\n{out}")
            lines = list(p.lines)
    finally:
        srv.close()
    res: dict[str, Any] = {k: int(v) for k, v in (kv.split("=") for kv in done_line.split()[2:])}
    if res["up"] != n or res["down"] < n:
        raise AssertionError(f"the Pyboard counted up={res['up']} down={res['down']}, not {n}")
    res["reports"] = [json.loads(x[5:]) for x in lines if x.startswith("PB R ")]
    res["lines"] = lines
    res["done_line"] = done_line
    return res
