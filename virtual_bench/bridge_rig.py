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
from paho.mqtt.enums import CallbackAPIVersion

from virtual_bench.ports import WAIT_S, free_port

ROOT = Path(__file__).resolve().parent.parent

ESP_BRIDGE = ROOT / "esp_bridge"

# The in-process fake hardware (machine, network, esp, pyb) and sim_pyboard, real
# MicroPython files; virtual_bench/hw is the bench's, served by the harness.
FAKES_DIR = Path(__file__).resolve().parent / "fakes"


def make_hw_dir(tmp_path: Path) -> Path:
    """``tmp_path/fakehw``: a copy of ``FAKES_DIR`` (the fake machine, network, esp,
    pyb and the sim_pyboard modules), to put first on MICROPYPATH or compile."""
    hw = tmp_path / "fakehw"
    hw.mkdir(exist_ok=True)
    for f in FAKES_DIR.glob("*.py"):
        shutil.copy(f, hw / f.name)
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
           user: str = "", password: str = "", tuning: dict[str, object] | None = None,
           host: str = "127.0.0.1", root: str = "pblink") -> list[object]:
    return [conn_id, port, host, timeout_ms, report_s, "ssid", "wifi-pw", user, password,
            root, False, FAST if tuning is None else tuning]


# select first: the fake select (on the ESP8266 a built-in module) runs the
# scripted Pyboard while the bridge polls; the bridge imports no asyncio
FAKES = "select, machine, network, esp, sim_pyboard"
BRIDGE = "bridge"  # what main.py imports; the rest follows from it
IMPORTS = f"import {FAKES}, {BRIDGE}"

# The 64-bit side note's rule (docs/FIRMWARE.md "Memory budget"): the bridge's
# run-time live peak above the import cost may be at most 2 x ESP_BUDGET (64-bit
# objects are up to twice the ESP8266's); the traffic runs at import cost +
# HEAP_ROOM, so that the verdict is that measured peak and not where the
# allocator finds a hole in the heap the bridge shares with the scripted Pyboard.
ESP_BUDGET = 24 * 1024
HEAP_ROOM = 4 * ESP_BUDGET


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


def start_bridge(micropython_bin: str, tmp_path: Path, cfg: list[object], up: int = 0,
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
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"srv-{free_port()}")
        self.c.on_message = self._on_message
        self.c.on_connect = self._on_connect
        if user is not None:
            self.c.username_pw_set(user, password)
        # paho annotates whole seconds; it only compares and doubles them, so 0.1 s works
        self.c.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
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
                self.status.append((bytes(msg.payload), bool(msg.retain)))
            elif msg.topic.endswith("/report"):
                self.reports.append((bytes(msg.payload), bool(msg.retain)))
            elif msg.payload == b"h":
                if self.answer:
                    c.publish(f"{self.base}/down", self.reply, qos=0)
            else:
                self.up.append(bytes(msg.payload))
            self._cv.notify_all()

    def wait(self, pred: Callable[[], object], timeout: float = WAIT_S, what: str = "",
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

    def send(self, frame: bytes, level: int) -> paho.MQTTMessageInfo:
        """Publish ``frame`` on down at MQTT QoS ``level``."""
        return self.c.publish(f"{self.base}/down", frame, qos=level)

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
    bytes of heap, see fakes/sim_pyboard.py) ``peak``, ``live_peak``, ``bridge_peak``,
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
