"""link_core.liveness (PROTOCOL.md 4.4) under CPython and the MicroPython unix port.

The cases live in tests/vectors/liveness_cases.py so that the same code runs
in both interpreters.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "vectors"))

import liveness_cases  # noqa: E402

SCRIPT = ROOT / "tests" / "vectors" / "liveness_cases.py"


CASES = liveness_cases.CASES


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_case_cpython(case):
    case()


def test_cases_micropython():
    exe = Path(sys.executable).parent / "micropython"
    if not exe.exists():
        pytest.fail(f"micropython is missing from {exe.parent}: run python3 dev.py setup")
    proc = subprocess.run(
        [str(exe), str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"MICROPYPATH": str(ROOT)},
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"ALL {len(liveness_cases.CASES)} CASES PASSED" in out, out
