"""Repository-wide gates: the server-side code is ruff-clean and type-checks with
``mypy --strict``, device code compiles for its target.

Each part's own tests also check its files; this one catches a file that no
part's test lists (a new module, a stray script).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

DEVICE_TARGETS = {
    "pyboard": "-march=armv7emsp",
    "esp_bridge": "-march=xtensa",
    "link_core": "-march=xtensa",
    "virtual_bench/hw": None,  # runs only under the unix port: plain compile
    "virtual_bench/fakes": None,
}


def test_ruff_clean() -> None:
    done = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


# The typed packages. link_core is typed by its .pyi stubs (the .py files are MicroPython
# code); pyproject.toml [tool.mypy] leaves out the fakes in virtual_bench/hw and the
# untyped esptool/pyserial.
TYPED_PACKAGES = ["server_apps", "pblink", "virtual_bench", "broker"]


def test_mypy_strict(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--cache-dir",
                           str(tmp_path / "mypy-cache"), *TYPED_PACKAGES],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "Success" in done.stdout


def test_link_core_stubs_match_the_code(tmp_path: Path) -> None:
    """mypy's stubtest imports each link_core module (CPython) and compares it with its
    .pyi: a name, parameter or default in one and not the other is an error."""
    done = subprocess.run([sys.executable, "-m", "mypy.stubtest", "--mypy-config-file",
                           str(ROOT / "pyproject.toml"), "link_core"],
                          cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "MYPY_CACHE_DIR": str(tmp_path / "mypy-cache")})
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


def test_mypy_sees_link_core_types(tmp_path: Path) -> None:
    """The stubs are in use: a wrong call into link_core and a field the decoded
    frame does not have are errors."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from link_core import endpoint, frames\n"
        "s = endpoint.Sender(frames.new_session(b'1234'), 8, 1500)\n"
        "s.send(3, 0)\n"
        "frames.decode(b'h').msgid\n"
    )
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--cache-dir",
                           str(tmp_path / "mypy-cache"), str(probe)],
                          cwd=ROOT, capture_output=True, text=True)
    errors = [ln for ln in done.stdout.splitlines() if ": error:" in ln]
    assert len(errors) == 2, done.stdout
    assert "probe.py:3" in errors[0] and '"send" of "Sender"' in errors[0]
    assert "probe.py:4" in errors[1] and '"Frame" has no attribute "msgid"' in errors[1]


@pytest.mark.parametrize("folder", sorted(DEVICE_TARGETS))
def test_device_code_compiles_for_its_target(folder: str, mpy_cross_bin: str,
                                             tmp_path: Path) -> None:
    sources = sorted((ROOT / folder).rglob("*.py"))
    assert sources, f"no sources under {folder}"
    arch = DEVICE_TARGETS[folder]
    failures = []
    for src in sources:
        argv = [mpy_cross_bin, *([arch] if arch else []), "-o", str(tmp_path / "out.mpy"), str(src)]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            failures.append(f"{src.relative_to(ROOT)}: {done.stderr.strip()}")
    assert not failures, "\n".join(failures)
