"""The ESP8266 bridge's budget: frozen code size, the ESP8266's free heap, smallest heap.

1. Code size: every module esp_bridge/manifest.py freezes (the bridge's
   ``module(...)`` entries and the ``link_core`` package) compiled with
   ``mpy-cross -march=xtensa``; the .mpy bytes go to flash on the ESP8266.
2. The ESP8266's free heap, the figure that counts: the bridge's traffic test
   (virtual_bench.bridge_rig: the real esp_bridge, a scripted Pyboard on a fake
   bus in the same process, a real broker; N frames each way, every 50th of
   1,000 bytes, and a broker restart) on a 32-bit MicroPython with
   esp_bridge/manifest.py frozen in, at the heap that gives the bridge the
   ESP8266's room. Breakdown and rule: virtual_bench/esp_heap.py and
   docs/FIRMWARE.md "Memory budget". Needs the 32-bit builder
   (virtual_bench/micropython32.py); without it these rows say so.
3. Side note, the 64-bit unix port (the PyPI MicroPython): heap peak of the
   same test above the import cost, the old halving estimate, and the smallest
   ``-X heapsize`` at which the test still passes (bisection to 512 bytes).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.common import BIN, ROOT, Broker, Context, Row
from virtual_bench import bridge_rig, esp_heap, micropython32
from virtual_bench.harness import micropython_binary

FAMILY = "esp"
DESCRIPTION = "bridge .mpy sizes (xtensa), heap peak in a traffic test, smallest heap"

ESP_HEAP = 38 * 1024  # the ESP8266 port's MicroPython heap
TARGET_FREE = esp_heap.TARGET_FREE


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


# -- the bridge's traffic test -----------------------------------------------------------


def heap_log(lines: list[str]) -> list[int]:
    """The scripted Pyboard's ``PB MEM live=N ...`` lines (PBLINK_SIM_MEMLOG: one a
    second, ``gc.mem_alloc()`` after a collect), in order: the heap over the test."""
    return [int(m.group(1)) for m in (re.match(r"PB MEM live=(\d+)", ln) for ln in lines) if m]


def heap_series(live: list[int], base: int) -> dict[str, list[float]]:
    """A run's heap, second by second, above `base` (the import cost): a Row series."""
    return {"t_s": [float(i + 1) for i in range(len(live))],
            "live heap above import cost, B": [float(v - base) for v in live]}


def bytecode_of(mpy_dir: Path, modules: set[str]) -> int:
    total = 0
    for name in modules:
        f = mpy_dir / (name.replace(".", "/") + ".mpy")
        if f.exists():
            total += f.stat().st_size
    return total


def modules_after(mpy_bin: str, mpy_dir: Path, imports: str) -> list[str]:
    code = ("import sys\nsys.path.insert(0, '.frozen')\n" + imports
            + "\nprint(' '.join(sorted(sys.modules)))")
    r = subprocess.run([mpy_bin, "-c", code], env=bridge_rig.mpy_env(mpy_dir, frozen=False),
                       cwd=mpy_dir, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(r.stdout + r.stderr)
    return r.stdout.split()


def traffic_test(mpy_bin: str, broker: Broker, work: Path, mpy_dir: Path,
                 heapsize: int | None, n: int, frozen_bridge: bool = False) -> dict[str, Any]:
    """run_traffic with n frames each way; its figures plus "ok" and "error"."""
    try:
        res = bridge_rig.run_traffic(mpy_bin, work, broker.port,
                                     lambda: asyncio.run(broker.restart()), n=n,
                                     heapsize=heapsize, mpy_dir=mpy_dir,
                                     frozen_bridge=frozen_bridge, PBLINK_SIM_MEMLOG="1")
    except (AssertionError, TimeoutError, OSError, ValueError, RuntimeError) as exc:
        lines = str(exc).splitlines()
        oom = [x for x in lines if "MemoryError" in x]
        return {"ok": False, "heapsize": heapsize, "error": (oom or lines or ["?"])[0][:160]}
    res["live"] = heap_log(res.pop("lines", []))
    res.update(ok=True, heapsize=heapsize)
    return res


async def esp32_figures(ctx: Context, work: Path, broker: Broker, n: int) -> list[Row]:
    """The ESP8266's free heap from the 32-bit frozen build (virtual_bench/esp_heap.py)."""
    if micropython32.builder() is None:
        return [Row(FAMILY, "ESP8266 free heap (32-bit frozen)", "B", [],
                    target=f">= {TARGET_FREE}",
                    note=f"not measured: {micropython32.MISSING}")]
    ctx.progress("esp: building (or reusing) the 32-bit MicroPython with the bridge frozen in")
    mp32 = str(await asyncio.to_thread(micropython32.build, micropython32.MANIFEST))
    fakes = bridge_rig.compile_fakes(mpy_cross(), bridge_rig.make_hw_dir(work), work / "fakes32")
    imports = await asyncio.to_thread(esp_heap.breakdown_imports, mp32, fakes)
    heap = esp_heap.run_heapsize(imports)
    runs: list[dict[str, int]] = []
    errors: list[str] = []
    series: dict[str, list[float]] = {}
    for r in range(max(1, ctx.repeats - 1)):
        ctx.progress(f"esp: 32-bit frozen traffic test, {n} frames each way + broker restart, "
                     f"-X heapsize={heap}, run {r + 1}")
        res = await asyncio.to_thread(traffic_test, mp32, broker, work, fakes, heap, n, True)
        if res["ok"]:
            runs.append(esp_heap.esp_figures(imports, res))
            if not series and res["live"]:
                series = heap_series(res["live"], imports["all"])
        else:
            errors.append(res["error"])
    params = {"frames": n, "heapsize": heap, "build": "32-bit unix, esp_bridge/manifest.py frozen",
              "fakes": imports["fakes"], "interpreter": imports["interpreter"]}
    rows = []
    for key, name in (("asyncio", "asyncio (none: the bridge imports no asyncio)"),
                      ("modules", "bridge + link_core module objects (frozen)"),
                      ("run_time", "bridge run-time data, live peak"),
                      ("taken_out", "the test's fake hardware and scripted Pyboard, taken out"),
                      ("boot", "ESP8266 state after boot (assumed)"),
                      ("used", "used of the ESP8266 heap")):
        rows.append(Row(FAMILY, f"ESP8266 heap: {name}", "B", [x[key] for x in runs], params,
                        series=series if key == "run_time" else {}))
    # where the fixed part goes: each frozen module, the objects made at boot, the main loop
    parts = await asyncio.to_thread(esp_heap.breakdown_parts, mp32, fakes)
    for part, n in parts:
        if not part.startswith("fakes"):
            rows.append(Row(FAMILY, f"ESP8266 heap part: {part}", "B", [n], params,
                            note="python -m virtual_bench.esp_heap"))
    rows.append(Row(FAMILY, "ESP8266 free heap (32-bit frozen)", "B", [x["free"] for x in runs],
                    params, target=f">= {TARGET_FREE}",
                    note=f"of the GC heap {esp_heap.ESP_GC_TOTAL} B; runs failed: {errors}"
                    if errors else f"of the GC heap {esp_heap.ESP_GC_TOTAL} B"))
    return rows


async def unix64_figures(ctx: Context, work: Path, broker: Broker, n: int) -> list[Row]:
    """Side note: the 64-bit unix port, its heap peak, the old estimate, the smallest heap."""
    mpy_bin = micropython_binary()
    mpy_dir = bridge_rig.compile_tree(mpy_cross(), bridge_rig.make_hw_dir(work), work / "mpy")
    cost = bridge_rig.import_cost(mpy_bin, mpy_dir)
    # what the test's own scaffolding (fake hardware, scripted Pyboard) costs, and
    # which modules the bridge adds on top of it, with their bytecode
    fakes_imports = f"import {bridge_rig.FAKES}"
    fakes_cost = bridge_rig.heap_after(mpy_bin, mpy_dir, fakes_imports)
    bridge_mods = (set(modules_after(mpy_bin, mpy_dir, bridge_rig.IMPORTS))
                   - set(modules_after(mpy_bin, mpy_dir, fakes_imports)))
    bridge_code = bytecode_of(mpy_dir, bridge_mods)
    nb = 100 if ctx.quick else 200
    step = 16384 if ctx.tiny else 512
    rows: list[Row] = []
    peaks, lives = [], []
    series: dict[str, list[float]] = {}
    default_heap = cost + bridge_rig.HEAP_ROOM  # the rule: bridge_rig.ESP_BUDGET
    for r in range(max(1, ctx.repeats - 1)):
        ctx.progress(f"esp: 64-bit traffic test {n} frames each way + broker restart, heap "
                     f"{default_heap}, run {r + 1}")
        res = await asyncio.to_thread(traffic_test, mpy_bin, broker, work, mpy_dir,
                                      default_heap, n)
        if not res["ok"]:
            rows.append(Row(FAMILY, "traffic test failed", "-", [],
                            {"heapsize": default_heap}, note=res.get("error", "")))
            continue
        if not series and res["live"]:
            series = heap_series(res["live"], cost)
        peaks.append(res["peak"] - cost)
        lives.append(res["live_peak"] - cost)
    params = {"frames": n, "heapsize": default_heap, "unix_import_cost": cost}
    rows.append(Row(FAMILY, "unix heap peak above import cost (no gc)", "B", peaks, params,
                    note="64-bit side note"))
    rows.append(Row(FAMILY, "unix heap live peak above import cost", "B", lives, params,
                    note="64-bit side note", series=series))
    # bisection: smallest heap that passes
    lo, hi = cost, default_heap
    ok_at: dict[int, bool] = {}
    while hi - lo > step:
        mid = (lo + hi) // 2
        ctx.progress(f"esp: bisection, -X heapsize={mid} ({nb} frames each way)")
        res = await asyncio.to_thread(traffic_test, mpy_bin, broker, work, mpy_dir, mid, nb)
        ok_at[mid] = res["ok"]
        if res["ok"]:
            hi = mid
        else:
            lo = mid
    rows.append(Row(FAMILY, "smallest -X heapsize that passes", "B", [hi],
                    {"frames": nb, "step": step},
                    note=f"64-bit side note; {hi - cost} B above the import cost (near the "
                    "limit a pass depends on the heap's layout too); tried "
                    + ", ".join(f"{k}:{'ok' if v else 'fail'}" for k, v in sorted(ok_at.items()))))
    if lives:
        run_time = sorted(lives)[len(lives) // 2]  # live peak above every import
        modules = cost - fakes_cost - bridge_code  # the bridge's module objects
        used = (run_time + modules) / 2
        rows.append(Row(FAMILY, "64-bit estimate of the ESP8266 free heap (old rule)", "B",
                        [ESP_HEAP - used], {"rule": "38K-(run+modules)/2"},
                        note=f"side note, superseded by the 32-bit figure: run-time live peak "
                        f"{run_time} B + module objects {modules} B (import cost "
                        f"{cost - fakes_cost} B minus {bridge_code} B bytecode), halved"))
    return rows


async def driver_figures(ctx: Context, work: Path) -> list[Row]:
    # at least 100: the traffic test paces the down frames by the Pyboard's count of
    # every hundredth, so fewer never finish
    n = 100 if ctx.tiny else 200 if ctx.quick else 1000
    kind = "mosquitto" if ctx.mosquitto else "amqtt"
    broker = Broker(kind, work / "broker", ctx.mosquitto)
    await broker.start()
    try:
        rows = await esp32_figures(ctx, work, broker, n)
        return rows + await unix64_figures(ctx, work, broker, n)
    finally:
        await broker.stop()


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
    return rows + await driver_figures(ctx, work)
