#!/usr/bin/env python3
"""One-command set-up for pblink-mqtt: `python3 dev.py demo` or `python3 dev.py test`.

Creates ./.venv when it is missing or older than pyproject.toml, installs the
project with its test extra and the MicroPython stubs (one folder per port,
because the two stub packages overwrite each other's machine.pyi), then runs
the demo or the test suite. Only the standard library is used here, so a fresh
machine needs nothing but Python 3.11+ with venv and pip.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".pblink-installed"
STUBS = {
    "stm32": ["micropython-stm32-stubs==1.29.0.post1"],
    # The esp8266 type check uses the stubs as the whole typeshed, so it also
    # needs MicroPython's own stdlib stubs (asyncio.sleep_ms, ThreadSafeFlag).
    "esp8266": [
        "micropython-esp8266-stubs==1.29.0.post1",
        "micropython-stdlib-stubs==1.29.0.post2",
    ],
}


def _step(message: str) -> None:
    print(f"[dev] {message}", flush=True)


def _fingerprint() -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    digest.update(repr(sorted(STUBS.items())).encode())
    return digest.hexdigest()


def ensure_venv() -> None:
    """Create and fill .venv unless it is already up to date."""
    if STAMP.exists() and STAMP.read_text() == _fingerprint():
        return
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs on whatever python3 is
        sys.exit(f"pblink-mqtt needs Python 3.11 or newer, this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        _step(f"creating {VENV}")
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check"]
    _step("installing pblink-mqtt and its test tools into .venv (first run takes a minute)")
    subprocess.run([*pip, "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", "-q", "-e", f"{ROOT}[test,postgres]"], check=True)
    for port, requirements in STUBS.items():
        _step(f"installing {' '.join(requirements)} into .venv/stubs/{port}")
        subprocess.run(
            [*pip, "install", "-q", "--upgrade", "--no-deps", "--target",
             str(VENV / "stubs" / port), *requirements],
            check=True,
        )
    STAMP.write_text(_fingerprint())


def main(argv: list[str]) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # during set-up
        print("[dev] interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "setup"}:
        print("usage: python3 dev.py demo [pblink demo options] | test [pytest options] | setup")
        return 2
    ensure_venv()
    command, rest = argv[0], argv[1:]
    if command == "setup":
        return 0
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if command == "demo":
        args = [str(BIN / "pblink"), "demo", *rest]
    else:
        args = [str(BIN / "python"), "-m", "pytest", *rest]
    # Ctrl-C reaches the child too (same process group): it ends on its own,
    # printing its summary; this process only waits for it, without a traceback.
    with subprocess.Popen(args, cwd=ROOT, env=env) as child:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:
                continue


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
