"""The docs: their examples run as printed, the API reference builds, and the
project's files point only at files of the repository: never at the developers'
shared/ folder, which users do not have. (`shared/runtime/...` of the
MicroPython source tree is named as such.)"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import ROOT

SHARED = re.compile(r"(?<![\w/.-])(\.\./)?shared/(?!runtime/)")


def test_no_file_points_into_shared() -> None:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    offenders = []
    for name in files:
        if not name.endswith((".md", ".py", ".toml", ".yml", ".txt", ".cfg")) or \
                name == "tests/test_docs.py":
            continue
        for number, line in enumerate((ROOT / name).read_text(errors="replace").splitlines(), 1):
            if SHARED.search(line):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def doc_block(doc: str, after: str) -> str:
    """The first ```python block that follows the line starting with `after` in docs/<doc>."""
    text = (ROOT / "docs" / doc).read_text()
    match = re.search(r"```python\n(.*?)```", text[text.index(after):], re.S)
    assert match, f"no python block after {after!r} in docs/{doc}"
    return match.group(1)


@pytest.mark.slow
def test_bench_md_harness_example_runs_as_printed() -> None:
    code = doc_block("BENCH.md", "The harness underneath")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cuts, _, last = proc.stdout.strip().partition(" ")
    assert cuts == "1" and last.startswith("["), proc.stdout
