"""A 32-bit MicroPython unix port with the ESP8266 bridge frozen in, built once and cached.

The ESP8266 runs a 32-bit MicroPython with the bridge frozen into flash: its
objects are half the size of the 64-bit unix port's and its bytecode is not in
the heap. A 32-bit unix build of the same MicroPython with esp_bridge/manifest.py
frozen in has the same object sizes and the same heap layout (``-X
heapsize=38912`` gives the ESP8266's GC total of 38,016 bytes), so heap figures
measured with it carry over to the device (docs/FIRMWARE.md "Memory budget").

The build script is a development tool, not part of this project: the source of
the MicroPython version of the PyPI unix port and ``build.sh OUT [MANIFEST]``
(needs ``gcc-multilib``). It is looked up in ``$PBLINK_MICROPYTHON32_BUILD``,
else in ``DEV_BUILDER`` beside the checkout (the project's development
machines). Where neither exists ``builder()`` returns None and the
callers skip with that reason.

Binaries are cached under ``$PBLINK_CACHE`` (default ``~/.cache/pblink``),
keyed by a hash of the build script and of every file the manifest freezes:
a change to the bridge rebuilds it (about a minute on 2 cores), anything else
reuses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "esp_bridge" / "manifest.py"
BUILD_ENV = "PBLINK_MICROPYTHON32_BUILD"
# The ESP8266 port's MicroPython heap: heap[38 * 1024] in ports/esp8266/main.c.
ESP_HEAPSIZE = 38 * 1024


# Where the development machines keep the build script, beside the checkout: the
# one place the project names it (the 32-bit heap gate's tool).
DEV_BUILDER = ROOT.parent / "shared" / "micropython32" / "build.sh"
MISSING = (f"no 32-bit MicroPython builder: set ${BUILD_ENV} to its build.sh "
           "(needs gcc-multilib)")


def builder() -> Path | None:
    """The build script, or None when this machine has none (see the module doc)."""
    env = os.environ.get(BUILD_ENV)
    if env:
        return Path(env)
    return DEV_BUILDER if DEV_BUILDER.exists() else None


def cache_dir() -> Path:
    return Path(os.environ.get("PBLINK_CACHE") or Path.home() / ".cache" / "pblink") / "mp32"


def _frozen_sources(manifest: Path) -> list[Path]:
    """Every file that changes what the manifest freezes: the esp_bridge and link_core sources."""
    return sorted(manifest.parent.glob("*.py")) + sorted((ROOT / "link_core").glob("*.py"))


# The test binary freezes asyncio beside the bridge: the builder checks its binary
# by importing asyncio, and tests run under it (PBLINK_MICROPYTHON) include the
# Pyboard's, which use it. Frozen, it costs no heap unless imported, and the
# bridge imports none (tests/test_bridge_build.py); the ESP8266 firmware
# (esp_bridge/manifest.py alone) does not freeze it.
_WITH_ASYNCIO = 'include("{manifest}")\ninclude("$(MPY_DIR)/extmod/asyncio")\n'


def _key(script: Path, manifest: Path | None) -> str:
    h = hashlib.sha256(script.read_bytes() + _WITH_ASYNCIO.encode())
    if manifest is not None:
        for f in [manifest, *_frozen_sources(manifest)]:
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def build(manifest: Path | None = MANIFEST) -> Path:
    """Path of the 32-bit ``micropython`` binary with ``manifest`` frozen (None: plain).

    Builds it on first use (about 1 minute) under ``cache_dir()``; concurrent
    callers wait for one build. Raises FileNotFoundError when there is no
    builder, RuntimeError with the build's output when it fails (for example
    ``apt-get install gcc-multilib`` is missing).
    """
    script = builder()
    if script is None:
        raise FileNotFoundError(MISSING)
    if not script.is_file():  # named by the variable, but not there
        raise FileNotFoundError(f"${BUILD_ENV}={script}: no such file")
    tag = ("frozen-" if manifest else "plain-") + _key(script, manifest)
    out = cache_dir() / tag / "micropython"
    if out.exists():
        return out
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists():  # built while we waited
            return out
        # The MicroPython source and its mpy-cross are extracted and built once
        # in one work folder; the port's objects go to a build folder named by
        # the frozen manifest's path (build.sh). That path is per key, so each
        # key builds from scratch: in a shared build folder make judges the
        # frozen .py files by their times, and a checkout's older files would
        # be frozen as another checkout's newer .mpy already there.
        work = cache_dir() / "work"
        env = dict(os.environ, WORK=str(work))
        frozen: list[str] = []
        if manifest is not None:
            wrapper = cache_dir() / tag / "manifest-with-asyncio.py"
            wrapper.parent.mkdir(parents=True, exist_ok=True)
            wrapper.write_text(_WITH_ASYNCIO.format(manifest=manifest.resolve()))
            frozen = [str(wrapper)]
        argv = ["bash", str(script), str(out) + ".tmp", *frozen]
        try:
            r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1200)
        finally:
            if frozen:  # the binary is all that is kept of a key's build
                shutil.rmtree(_port_build_dir(work, Path(frozen[0])), ignore_errors=True)
        if r.returncode != 0:
            with contextlib.suppress(OSError):
                os.unlink(str(out) + ".tmp")
            raise RuntimeError(f"32-bit MicroPython build failed ({' '.join(argv)}):\n"
                               + (r.stdout + r.stderr)[-3000:])
        os.replace(str(out) + ".tmp", out)
    return out


def _port_build_dir(work: Path, manifest: Path) -> Path:
    """The unix port's build folder build.sh uses for ``manifest``: named by
    the first 8 hex digits of the MD5 of its real path and a newline
    (``echo "$(realpath M)" | md5sum``)."""
    path = (os.path.realpath(manifest) + "\n").encode()
    digest = hashlib.md5(path, usedforsecurity=False).hexdigest()[:8]
    return work / "micropython" / "ports" / "unix" / f"build-frozen-{digest}"
