"""Build gates for the ESP8266 firmware code.

- every file under esp_bridge/ and link_core/ compiles with mpy-cross -march=xtensa;
- esp_bridge/ type-checks with mypy against micropython-esp8266-stubs;
- the freeze manifest names every bridge module and the link_core package, and
  nothing that does not exist;
- the bridge and link_core import no asyncio at all, and the manifest does
  not freeze it (docs/FIRMWARE.md "Memory budget").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import IN_CI, ROOT

from virtual_bench.bridge_rig import ESP_BRIDGE

STUBS = ROOT / ".venv" / "stubs" / "esp8266"
DEVICE_FILES = sorted(ESP_BRIDGE.glob("*.py")) + sorted((ROOT / "link_core").glob("*.py"))


@pytest.mark.parametrize("src", DEVICE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_compiles_for_xtensa(src: Path, mpy_cross_bin: str, tmp_path: Path) -> None:
    out = tmp_path / (src.stem + ".mpy")
    r = subprocess.run([mpy_cross_bin, "-march=xtensa", "-o", str(out), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 0


STDLIB_STUBS = "micropython-stdlib-stubs==1.29.0.post2"


@pytest.fixture(scope="module")
def typeshed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder holding MicroPython's reduced typeshed (stdlib/) and _mpy_shed.

    micropython-esp8266-stubs depends on micropython-stdlib-stubs; installed
    with --no-deps the stubs folder lacks it, and then it is fetched here
    (ordinary pip, into a temporary folder) so the check still runs."""
    if not (STUBS / "machine.pyi").exists():
        _missing(f"{STUBS}/machine.pyi (pip install --target {STUBS} --no-deps "
                 "micropython-esp8266-stubs==1.29.0.post1)")
    if (STUBS / "stdlib" / "VERSIONS").exists():
        return STUBS
    extra = tmp_path_factory.mktemp("stdlib-stubs")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--disable-pip-version-check", "--target", str(extra), STDLIB_STUBS],
                       capture_output=True, text=True)
    if r.returncode != 0 or not (extra / "stdlib" / "VERSIONS").exists():
        _missing(f"{STUBS}/stdlib ({STDLIB_STUBS}; pip said: {r.stderr.strip()[-300:]})")
    return extra


def _missing(what: str) -> None:
    message = f"ESP8266 stubs incomplete, missing {what}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _mypy(files: list[Path], tmp_path: Path, typeshed: Path,
          cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """mypy with the ESP8266 stubs as the whole world.

    micropython-esp8266-stubs brings machine, network, esp, time, socket...;
    its dependency micropython-stdlib-stubs (installed into the same folder)
    is a reduced typeshed with MicroPython's asyncio (sleep_ms,
    ThreadSafeFlag, wait_for_ms) and sys.print_exception: it serves as the
    custom typeshed, so CPython's own asyncio never leaks in. Stub files have
    errors of their own; only lines about our files count.
    """
    # link_core without its .pyi stubs, as before they existed: the stubs speak CPython's
    # int ticks and the bridge's config list is typed by position (not yet checked here).
    core = tmp_path / "untyped" / "link_core"
    core.mkdir(parents=True, exist_ok=True)
    for src in (ROOT / "link_core").glob("*.py"):
        shutil.copy(src, core / src.name)
    path = [str(STUBS), str(typeshed), str(ESP_BRIDGE), str(core.parent)]
    env = dict(os.environ, MYPYPATH=os.pathsep.join(path))
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--custom-typeshed-dir", str(typeshed),
         "--no-site-packages", "--python-version", "3.11", "--follow-imports=silent",
         "--explicit-package-bases", "--check-untyped-defs", "--no-error-summary",
         "--cache-dir", str(tmp_path / "cache"), *[str(f) for f in files]],
        capture_output=True, text=True, env=env, cwd=cwd,
    )


def test_esp_bridge_type_checks_against_esp8266_stubs(tmp_path: Path, typeshed: Path) -> None:
    files = [f for f in sorted(ESP_BRIDGE.glob("*.py")) if f.name != "manifest.py"]
    r = _mypy(files, tmp_path, typeshed)
    ours = [line for line in (r.stdout + r.stderr).splitlines()
            if line.startswith("esp_bridge/") or line.startswith(str(ESP_BRIDGE))]
    assert not ours, "\n".join(ours)


def test_type_check_sees_micropython_apis(tmp_path: Path, typeshed: Path) -> None:
    """The check above is real: MicroPython-only APIs resolve and misuse is caught."""
    probe = tmp_path / "esp_bridge" / "probe.py"
    probe.parent.mkdir()
    probe.write_text(
        "import asyncio\nimport esp\nfrom machine import Pin\n"
        "f = asyncio.ThreadSafeFlag()\n"
        "async def ok() -> None:\n    await asyncio.sleep_ms(1)\n"
        "esp.sleep_type(esp.SLEEP_NONE)\n"
        "p = Pin(5, Pin.IN)\n"
        "p.irq(handler=None, trigger=Pin.IRQ_RISING | Pin.IRQ_FALLING)\n"
        "esp.sleep_type('none')\n"
    )
    r = _mypy([probe], tmp_path, typeshed, cwd=tmp_path)
    ours = [line for line in r.stdout.splitlines() if "probe.py" in line and ": error:" in line]
    assert len(ours) == 1 and "probe.py:10" in ours[0] and "sleep_type" in ours[0], r.stdout


def test_manifest_freezes_every_bridge_module() -> None:
    calls: list[tuple[str, tuple, dict]] = []

    def record(name: str):
        return lambda *a, **k: calls.append((name, a, k))

    names = {n: record(n) for n in ("include", "module", "package", "require", "freeze")}
    exec(compile((ESP_BRIDGE / "manifest.py").read_text(), "manifest.py", "exec"), names)
    modules = {a[0] for n, a, k in calls if n == "module"}
    for n, a, k in calls:
        if n == "module":
            base = ESP_BRIDGE / k.get("base_path", ".")
            assert (base / a[0]).is_file(), a
    bridge = {f.name for f in ESP_BRIDGE.glob("*.py")} - {"manifest.py"}
    assert modules == bridge
    packages = [(a, k) for n, a, k in calls if n == "package"]
    assert packages == [(("link_core",), {"base_path": ".."})]
    assert (ESP_BRIDGE / ".." / "link_core" / "__init__.py").is_file()
    includes = [a[0] for n, a, k in calls if n == "include"]
    assert "$(PORT_DIR)/boards/manifest.py" in includes  # _boot, inisetup, ssl...
    # a FROZEN_MANIFEST replaces the board's; nothing on the ESP8266 uses asyncio
    assert not any("asyncio" in i for i in includes), includes
    assert not [a for n, a, k in calls if n == "require" and "asyncio" in a[0]]


# The bridge runs one main loop over select.poll, without asyncio: asyncio's
# module objects and its tasks cost the ESP8266's heap about 4.5 K
# (docs/FIRMWARE.md "Memory budget"), and the firmware does not freeze it.
def _asyncio_imports(src: str) -> set[str]:
    """The asyncio modules src imports (import asyncio, import asyncio.x as y,
    from asyncio import ..., from asyncio.x import ...)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names
                      if a.name == "asyncio" or a.name.startswith("asyncio.")}
        if isinstance(node, ast.ImportFrom) and node.module and (
                node.module == "asyncio" or node.module.startswith("asyncio.")):
            found.add(node.module)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and (
                node.func.id == "__import__" and node.args
                and isinstance(node.args[0], ast.Constant)
                and str(node.args[0].value).startswith("asyncio")):
            found.add(str(node.args[0].value))
    return found


def test_bridge_imports_no_asyncio() -> None:
    probe = ("import asyncio\nfrom asyncio import core\nimport asyncio.event as ev\n"
             "def f():\n    import asyncio.stream\n")
    # the check sees every form, at module level and in functions
    assert _asyncio_imports(probe) == {"asyncio", "asyncio.event", "asyncio.stream"}
    device = sorted(ESP_BRIDGE.glob("*.py")) + sorted(ROOT.joinpath("link_core").glob("*.py"))
    used = {f.name: _asyncio_imports(f.read_text()) for f in device if f.name != "manifest.py"}
    assert not set().union(*used.values()), used
