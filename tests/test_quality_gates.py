"""Repository-wide gates: the server-side code is ruff-clean, device code compiles for its target.

Each part's own tests also check its files; this one catches a file that no
part's test lists (a new module, a stray script).
"""

from __future__ import annotations

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
