"""The project's files point only at files of the repository: never at the
developers' shared/ folder, which users do not have. (`shared/runtime/...` of
the MicroPython source tree is named as such.)"""

from __future__ import annotations

import re
import subprocess

from conftest import ROOT

SHARED = re.compile(r"(?<![\w/.-])(\.\./)?shared/(?!runtime/)")


def test_no_file_points_into_shared() -> None:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    offenders = []
    for name in files:
        if not name.endswith((".md", ".py", ".toml", ".yml", ".txt", ".cfg")) or \
                name == "tests/test_docs_links.py":
            continue
        for number, line in enumerate((ROOT / name).read_text(errors="replace").splitlines(), 1):
            if SHARED.search(line):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
