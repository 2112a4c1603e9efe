"""ESP8266 firmware: find and check an image, flash it with esptool, build it from source.

Flashing follows the original install guide: erase the whole flash, then write
the image at 0x0 with `--flash-size detect --flash-mode dio`, at 115200 baud by
default. esptool runs as a subprocess (`python -m esptool`) so that its own
progress reaches the terminal unchanged; before that, pblink asks esptool's
Python API which chip answers on the port, so that "no device" and "not an
ESP8266" are one clear line each instead of a screenful.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pblink.common import EXIT_ERROR, CliError, UsageError

CHIP = "esp8266"
DEFAULT_BAUD = 115200
FLASH_MODE = "dio"
FLASH_SIZE = "detect"
FLASH_OFFSET = "0x0"
DEFAULT_BOARD = "ESP8266_GENERIC"
# Where `pblink build-firmware` puts its result and `pblink flash` looks first.
DEFAULT_IMAGE = Path("build") / "esp8266" / "firmware.bin"
IMAGE_ENV = "PBLINK_FIRMWARE"
MAX_IMAGE = 16 * 1024 * 1024  # the ESP8266 addresses at most 16 MiB of flash


def esptool_version() -> tuple[int, int]:
    import esptool

    parts = re.findall(r"\d+", getattr(esptool, "__version__", "5.0"))[:2]
    return (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0)


def _names(major: int) -> dict[str, str]:
    """esptool 5 spells commands and options with '-', esptool 4 with '_'."""
    if major >= 5:
        return {"erase": "erase-flash", "write": "write-flash", "size": "--flash-size",
                "mode": "--flash-mode", "default-reset": "default-reset",
                "no-reset": "no-reset", "hard-reset": "hard-reset"}
    return {"erase": "erase_flash", "write": "write_flash", "size": "--flash_size",
            "mode": "--flash_mode", "default-reset": "default_reset",
            "no-reset": "no_reset", "hard-reset": "hard_reset"}


@dataclass
class FlashPlan:
    port: str
    image: Path
    baud: int = DEFAULT_BAUD
    before: str = "default-reset"  # or "no-reset": the user holds GPIO0 low and resets by hand
    connect_attempts: int = 7
    esptool_major: int = 5

    def _common(self) -> list[str]:
        n = _names(self.esptool_major)
        return ["--chip", CHIP, "--port", self.port, "--baud", str(self.baud),
                "--before", n[self.before], "--connect-attempts", str(self.connect_attempts)]

    def erase_argv(self) -> list[str]:
        """esptool arguments of the erase step (after `python -m esptool`)."""
        n = _names(self.esptool_major)
        return [*self._common(), "--after", n["no-reset"], n["erase"]]

    def write_argv(self) -> list[str]:
        """esptool arguments of the write step; esptool checks every block it writes by hash."""
        n = _names(self.esptool_major)
        return [*self._common(), "--after", n["hard-reset"], n["write"], n["size"], FLASH_SIZE,
                n["mode"], FLASH_MODE, FLASH_OFFSET, str(self.image)]


def find_image(explicit: str | None) -> Path:
    """The image to flash: --firmware, else $PBLINK_FIRMWARE, else build/esp8266/firmware.bin."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            if path.exists() and not path.is_dir():  # /dev/null, a pipe, a socket
                raise UsageError(f"--firmware {path} is not a regular file")
            raise UsageError(f"--firmware {path}: " + (
                "a folder, not an image file" if path.is_dir() else "no such file"))
        return path
    looked = []
    env = os.environ.get(IMAGE_ENV)
    if env:
        if Path(env).is_file():
            return Path(env)
        looked.append(f"${IMAGE_ENV}={env}")
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        candidate = base / DEFAULT_IMAGE
        if candidate.is_file():
            return candidate
        looked.append(str(candidate))
    raise UsageError("no firmware image given (--firmware IMAGE) or found (looked at "
                     + ", ".join(dict.fromkeys(looked)) + "): build one with "
                     "`pblink build-firmware --micropython-src DIR`")


def check_image(path: Path) -> str:
    """A one-line description of an ESP8266 image, or CliError if it is not one."""
    from esptool.bin_image import ESP8266ROMFirmwareImage, LoadFirmwareImage
    from esptool.util import FatalError

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CliError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if len(data) < 16:
        raise CliError(f"{path} is not an ESP8266 firmware image ({len(data)} bytes)")
    if len(data) > MAX_IMAGE:
        raise CliError(f"{path} is {len(data)} bytes, larger than any ESP8266 flash")
    import contextlib
    import io

    said = io.StringIO()  # esptool's own WARNING lines: not printed, pblink says it in one line
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            image = LoadFirmwareImage(CHIP, data)
    except (FatalError, ValueError, KeyError, IndexError, TypeError) as exc:
        warned = [ln.strip() for ln in said.getvalue().splitlines() if ln.strip()]
        why = f" (esptool: {warned[0]})" if warned else ""
        raise CliError(f"{path} is not an ESP8266 firmware image: {exc}{why}") from None
    if not image.segments:
        raise CliError(f"{path} is not an ESP8266 firmware image: it has no segments")
    kind = "v1" if isinstance(image, ESP8266ROMFirmwareImage) else "v2"
    if isinstance(image, ESP8266ROMFirmwareImage) and hasattr(image, "calculate_checksum"):
        if image.calculate_checksum() != image.checksum:
            raise CliError(f"{path}: the ESP8266 image checksum does not match (damaged file?)")
    return (f"{path} ({len(data)} bytes, ESP8266 {kind} image, {len(image.segments)} segments, "
            f"entry {image.entrypoint:#010x})")


def detect_chip(port: str, baud: int, before: str, connect_attempts: int) -> str:
    """The chip name esptool detects on `port` (e.g. 'ESP8266'); CliError if none answers."""
    import serial
    from esptool.cmds import detect_chip as _detect
    from esptool.util import FatalError

    if port.startswith("/") and not os.path.exists(port):
        raise CliError(f"no device at {port}: no such file (is the ESP8266 board plugged in?)")
    try:
        # esptool logs to stdout; during detection that is progress, so stderr
        with contextlib.redirect_stdout(sys.stderr):
            esp = _detect(port, baud, before, False, connect_attempts)
    except (FatalError, serial.SerialException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(f"no ESP8266 answers at {port}: {first} (check the USB cable; on a board "
                       "without auto-reset hold FLASH/GPIO0 low while pressing RESET, and use "
                       "--before no-reset)") from None
    try:
        name = str(esp.CHIP_NAME)
    finally:
        try:
            esp._port.close()
        except Exception:  # closing is best effort
            pass
    return name


def run_esptool(argv: list[str], step: str) -> None:
    """Run `python -m esptool ARGV` with its output on the terminal; CliError on failure."""
    command = [sys.executable, "-m", "esptool", *argv]
    try:
        code = subprocess.call(command, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise CliError(f"cannot run esptool ({exc}): pip install esptool") from None
    if code != 0:
        raise CliError(f"esptool {step} failed with exit status {code} (its message is above)")


# -- building -------------------------------------------------------------------------

TOOLCHAIN = "xtensa-lx106-elf-gcc"


@dataclass
class BuildPlan:
    src: Path
    manifest: Path
    board: str = DEFAULT_BOARD
    variant: str | None = None
    jobs: int = os.cpu_count() or 2
    docker: str | None = None  # image with the toolchain, e.g. larsks/esp-open-sdk
    mounts: tuple[Path, ...] = ()  # further folders the build reads (the checkout)

    @property
    def port_dir(self) -> Path:
        return self.src / "ports" / "esp8266"

    @property
    def build_dir(self) -> Path:
        suffix = f"-{self.variant}" if self.variant else ""
        return self.port_dir / f"build-{self.board}{suffix}"

    def make_vars(self) -> list[str]:
        extra = [f"BOARD_VARIANT={self.variant}"] if self.variant else []
        return [f"BOARD={self.board}", *extra, f"FROZEN_MANIFEST={self.manifest.resolve()}"]

    def commands(self) -> list[list[str]]:
        """The make commands, in order: mpy-cross, the port's submodules, the firmware."""
        makes = [
            ["make", "-C", str(self.src / "mpy-cross"), f"-j{self.jobs}"],
            ["make", "-C", str(self.port_dir), *self.make_vars(), "submodules"],
            ["make", "-C", str(self.port_dir), *self.make_vars(), f"-j{self.jobs}"],
        ]
        if not self.docker:
            return makes
        # submodules are fetched with git on the host (the toolchain image may lack git)
        prefix = ["docker", "run", "--rm", "-u", f"{os.getuid()}:{os.getgid()}"]
        for folder in dict.fromkeys([self.src.resolve(), *(m.resolve() for m in self.mounts)]):
            prefix += ["-v", f"{folder}:{folder}"]
        prefix += ["-w", str(self.src.resolve()), self.docker]
        return [[*prefix, *makes[0]], makes[1], [*prefix, *makes[2]]]


def board_variants(plan: BuildPlan) -> list[str]:
    """The variants of the plan's board in its MicroPython tree: the NAMEs of
    ports/esp8266/boards/<board>/mpconfigvariant_NAME.mk (what the port's Makefile
    includes for BOARD_VARIANT=NAME; ESP8266_GENERIC has e.g. FLASH_1M and
    FLASH_512K)."""
    prefix, suffix = "mpconfigvariant_", ".mk"
    folder = plan.port_dir / "boards" / plan.board
    return sorted(p.name[len(prefix):-len(suffix)] for p in folder.glob(f"{prefix}*{suffix}"))


def check_source_tree(plan: BuildPlan) -> None:
    """--micropython-src, --board, --variant and --manifest, against the tree
    (UsageError, exit 2): also before a --dry-run prints commands that could not work."""
    if not plan.src.is_dir():
        raise UsageError(f"--micropython-src {plan.src} is not a directory")
    if not (plan.port_dir / "Makefile").is_file() or not (plan.src / "py" / "mpconfig.h").is_file():
        raise UsageError(f"{plan.src} is not a MicroPython source tree (no ports/esp8266/Makefile "
                         "or py/mpconfig.h): clone https://github.com/micropython/micropython")
    if not (plan.port_dir / "boards" / plan.board).is_dir():
        boards = sorted(p.name for p in (plan.port_dir / "boards").glob("*") if p.is_dir())
        raise UsageError(f"--board {plan.board}: {plan.src} has no ESP8266 board {plan.board} "
                         f"(ports/esp8266/boards/{plan.board}; its boards: "
                         f"{', '.join(boards) or 'none'})")
    if plan.variant is not None:
        variants = board_variants(plan)
        if plan.variant not in variants:
            known = (f"its variants: {', '.join(variants)}" if variants
                     else "it has no variants")
            raise UsageError(f"--variant {plan.variant}: {plan.src} has no variant "
                             f"{plan.variant!r} of board {plan.board} ({known}; without "
                             "--variant: the 2 MiB+ build)")
    if not plan.manifest.is_file():
        raise UsageError(f"no freeze manifest at {plan.manifest}")


def check_docker() -> None:
    """CliError unless `docker` is installed and its daemon answers (`docker version`)."""
    if shutil.which("docker") is None:
        raise CliError("--docker given but docker is not installed")
    try:
        done = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                              capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CliError(f"--docker: the Docker daemon is not reachable ({exc})") from None
    if done.returncode != 0 or not done.stdout.strip():
        said = [line.strip() for line in (done.stderr or done.stdout).splitlines()
                if line.strip()]
        raise CliError("--docker: the Docker daemon is not reachable"
                       + (f" ({said[0]})" if said else f" (docker version: exit {done.returncode})")
                       + ": start it (systemctl start docker) or build without --docker")


def check_build_inputs(plan: BuildPlan) -> None:
    """Everything a build needs, before the first command runs: the tree
    (`check_source_tree`, exit 2), make, and the toolchain or Docker (exit 1)."""
    check_source_tree(plan)
    if shutil.which("make") is None:
        raise CliError("make is not installed (apt-get install build-essential)")
    if plan.docker:
        check_docker()
        return
    if shutil.which(TOOLCHAIN) is None:
        raise CliError(f"the ESP8266 toolchain ({TOOLCHAIN}) is not on PATH: install the "
                       "esp-open-sdk toolchain and add its bin/ to PATH (see docs/FIRMWARE.md), "
                       "or build in Docker with --docker")


def built_image(plan: BuildPlan) -> Path:
    """firmware.bin (MicroPython >= 1.20) or firmware-combined.bin (older) in the build dir."""
    for name in ("firmware.bin", "firmware-combined.bin"):
        path = plan.build_dir / name
        if path.is_file():
            return path
    raise CliError(f"the build finished but left no firmware.bin in {plan.build_dir}",
                   EXIT_ERROR)
