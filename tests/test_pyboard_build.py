"""Quality gates for pyboard/pb_link: mpy-cross for the Pyboard, mypy against the stm32 stubs.

The mypy run (documented in docs/PYBOARD.md "Type checks"):

- ``mypy_path`` = the stm32 stubs (``.venv/stubs/stm32``), the repository root
  (for ``link_core``) and ``pyboard/`` (for ``pb_link``); ``no_site_packages``
  so nothing from the CPython venv leaks in. The stubs shadow typeshed for
  ``machine``, ``pyb``, ``micropython``, ``time``, ``gc``; ``asyncio`` and
  ``os`` come from mypy's own typeshed (the stm32 stubs have none), so the few
  MicroPython-only names (``asyncio.sleep_ms``, ``asyncio.ThreadSafeFlag``,
  ``sys.print_exception``) carry a ``# type: ignore[attr-defined]`` each, and
  ``warn_unused_ignores`` keeps those honest.
- The stub package itself does not type-check cleanly without
  ``micropython-stdlib-stubs`` (its ``_mpy_shed``), which the project does not
  install: errors inside the stub modules are ignored, ``_mpy_shed`` is treated
  as missing.
- ``link_core`` is followed silently: its types are used, its own checks are
  the business of the link_core tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYBOARD = ROOT / "pyboard"
STUBS = ROOT / ".venv" / "stubs" / "stm32"
SOURCES = sorted((PYBOARD / "pb_link").glob("*.py"))


def test_sources_present() -> None:
    names = {p.name for p in SOURCES}
    assert {"__init__.py", "app_base.py", "ports.py", "config.py", "demo.py",
            "pb_client.py"} <= names


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_compiles_for_the_pyboard(src: Path, mpy_cross_bin: str, tmp_path: Path) -> None:
    out = tmp_path / (src.stem + ".mpy")
    done = subprocess.run(
        [mpy_cross_bin, "-march=armv7emsp", "-o", str(out), str(src)],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 0


def _mypy_config(tmp_path: Path) -> Path:
    stub_modules = sorted(p.stem for p in STUBS.glob("*.pyi"))
    text = "\n".join([
        "[mypy]",
        "python_version = 3.11",
        "no_site_packages = True",
        "check_untyped_defs = True",
        "warn_unused_ignores = True",
        f"mypy_path = {STUBS}:{ROOT}:{PYBOARD}",
        f"cache_dir = {tmp_path / 'mypy-cache'}",
        "",
        "[mypy-_mpy_shed,_mpy_shed.*]",
        "ignore_missing_imports = True",
        "",
        "[mypy-" + ",".join([*stub_modules, "_mpy_shed.*"]) + "]",
        "ignore_errors = True",
        "",
        "[mypy-link_core,link_core.*]",
        "follow_imports = silent",
        "",
    ])
    cfg = tmp_path / "mypy.ini"
    cfg.write_text(text)
    return cfg


def test_type_checks_against_stm32_stubs(tmp_path: Path) -> None:
    if not (STUBS / "machine.pyi").exists():
        pytest.fail("stm32 stubs missing: run python3 dev.py setup "
                    "(pip install --target .venv/stubs/stm32 micropython-stm32-stubs)")
    cfg = _mypy_config(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(cfg), "-p", "pb_link"],
        cwd=PYBOARD, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success" in done.stdout


def test_type_check_catches_a_wrong_call(tmp_path: Path) -> None:
    """The stubs really are in use: a bad pyb.I2C call is an error."""
    cfg = _mypy_config(tmp_path)
    bad = tmp_path / "bad_port.py"
    bad.write_text(
        "import pyb\n"
        "from machine import Pin\n"
        "def f(i2c: pyb.I2C, syn: Pin) -> None:\n"
        "    i2c.recv(bytearray(1), timeout='1000')\n"
        "    syn.valu(1)\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(cfg), str(bad)],
        cwd=PYBOARD, capture_output=True, text=True,
    )
    assert done.returncode == 1
    assert 'No overload variant of "recv"' in done.stdout
    assert '"Pin" has no attribute "valu"' in done.stdout
