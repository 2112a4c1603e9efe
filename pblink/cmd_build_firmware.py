"""`pblink build-firmware`: build ESP8266 firmware with the bridge frozen in."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from pblink.common import COUNT, LOCAL_KINDS, CliError, UsageError, add_command, output_folder

DESCRIPTION = """\
Build MicroPython for the ESP8266 with esp_bridge and link_core frozen in, from a
MicroPython source tree you have, using esp_bridge/manifest.py:

  make -C DIR/mpy-cross
  make -C DIR/ports/esp8266 BOARD=ESP8266_GENERIC FROZEN_MANIFEST=M submodules
  make -C DIR/ports/esp8266 BOARD=ESP8266_GENERIC FROZEN_MANIFEST=M

with M = <checkout>/esp_bridge/manifest.py (absolute),

then copy the image to build/esp8266/firmware.bin (or --output), where
`pblink flash` finds it. Needs the xtensa-lx106-elf toolchain on PATH, or
Docker with --docker (the image MicroPython's ESP8266 README uses).

examples:
  pblink build-firmware --micropython-src ~/micropython
  pblink build-firmware --micropython-src ~/micropython --docker larsks/esp-open-sdk
  pblink build-firmware --micropython-src ~/micropython --variant FLASH_1M
"""


def register(subparsers: Any) -> None:
    from pblink.firmware import DEFAULT_BOARD, DEFAULT_IMAGE

    p = add_command(subparsers, "build-firmware",
                    exits=LOCAL_KINDS, help="build ESP8266 firmware with the bridge frozen in",
                    description=DESCRIPTION)
    p.add_argument("--micropython-src", required=True, metavar="DIR",
                   help="a MicroPython source tree (git clone of micropython/micropython)")
    p.add_argument("--board", default=DEFAULT_BOARD, help="board (default %(default)s)")
    p.add_argument("--variant", help="board variant, e.g. FLASH_1M for 1 MiB modules: one of "
                                     "the board's mpconfigvariant_NAME.mk in the source tree "
                                     "(default: the 2 MiB+ build)")
    p.add_argument("--manifest", metavar="FILE",
                   help="freeze manifest (default esp_bridge/manifest.py in this checkout)")
    p.add_argument("--output", default=str(DEFAULT_IMAGE), metavar="FILE",
                   help="where to copy the image (default %(default)s)")
    p.add_argument("--jobs", "-j", type=COUNT, metavar="N", help="parallel make jobs")
    p.add_argument("--docker", nargs="?", const="larsks/esp-open-sdk", metavar="IMAGE",
                   help="run the compiler in Docker (default image %(const)s; the Docker "
                   "daemon must be running)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the source tree, board and variant, print the commands, "
                   "run nothing")
    p.set_defaults(func=run)


def check_output(text: str) -> Path:
    """--output, checked before anything runs (a dry run too), nothing created:
    a file name, not a folder; its folder exists or can be created (the checks
    of common.output_folder: not a file, not under one, writable). Raises
    UsageError (exit 2) naming --output."""
    path = Path(text).expanduser()
    if not text:
        raise UsageError("--output '' is not a file name")
    if path.is_dir():
        raise UsageError(f"--output {text} is a folder, not a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"--output {text}: no permission to write it")
    try:
        output_folder(str(path.parent))
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"--output {text}: {exc}") from None
    if path.parent.is_dir():  # root passes os.access: try a file (catches /proc, read-only)
        import tempfile
        try:
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".pblink-check-"):
                pass
        except OSError as exc:
            raise UsageError(f"--output {text}: cannot write a file in {path.parent}: "
                             f"{exc.strerror or exc}") from None
    return path


def run(args: argparse.Namespace) -> int:
    from pblink import firmware
    from pblink.board_install import find_source

    output = check_output(args.output)
    if args.docker is not None and not args.docker.strip():
        raise UsageError("--docker: the image name is empty (give an image, or --docker "
                         "alone for the default)")
    if args.manifest:
        manifest = Path(args.manifest)
        mounts: tuple[Path, ...] = (manifest.resolve().parent.parent,)  # manifest + link_core
    else:
        checkout = find_source(None)
        manifest = checkout / "esp_bridge" / "manifest.py"
        mounts = (checkout,)
    plan = firmware.BuildPlan(src=Path(args.micropython_src).expanduser(), manifest=manifest,
                              board=args.board, variant=args.variant, docker=args.docker,
                              mounts=mounts)
    if args.jobs:
        plan.jobs = args.jobs
    commands = plan.commands()
    firmware.check_source_tree(plan)  # board, variant, manifest: a dry run's commands too
    if args.dry_run:
        for command in commands:
            print(shlex.join(command))
        return 0
    firmware.check_build_inputs(plan)
    for command in commands:
        print(f"pblink build-firmware: {shlex.join(command)}", file=sys.stderr, flush=True)
        try:
            code = subprocess.call(command, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise CliError(f"cannot run {command[0]}: {exc}") from None
        if code != 0:
            raise CliError(f"{shlex.join(command[:4])}... failed with exit status {code} "
                           "(the compiler's message is above)")
    image = firmware.built_image(plan)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, output)
    except OSError as exc:
        raise CliError(f"--output {output}: cannot write it: {exc.strerror or exc}") from None
    print(f"built {firmware.check_image(output)}")
    print(f"flash it with: pblink flash PORT --firmware {output}")
    return 0
