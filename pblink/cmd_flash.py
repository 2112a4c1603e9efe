"""`pblink flash PORT`: erase the ESP8266 and write the pblink bridge firmware with esptool."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from pblink.common import COUNT, LOCAL_KINDS, CliError, UsageError, add_command

DESCRIPTION = """\
Flash the ESP8266 with the firmware that has the pblink bridge frozen in.

Steps: check the image, ask the port which chip answers (it must be an
ESP8266), erase the whole flash (essential: it makes MicroPython create a
fresh littlefs filesystem), then write the image at 0x0 with
--flash-size detect --flash-mode dio. esptool prints its own progress and
checks every block it writes by hash. Flash before wiring the ESP8266 to the
Pyboard.

The image is --firmware IMAGE, else $PBLINK_FIRMWARE, else
build/esp8266/firmware.bin (where `pblink build-firmware` puts it). A missing
image, or a file that is not an intact ESP8266 image, is refused with exit 2
before the port is touched.

examples:
  pblink flash /dev/ttyUSB0
  pblink flash /dev/ttyUSB0 --firmware firmware.bin --baud 460800
  pblink flash /dev/ttyUSB0 --dry-run      (check image and chip, print the esptool commands)
"""


def register(subparsers: Any) -> None:
    from pblink.firmware import DEFAULT_BAUD

    p = add_command(subparsers, "flash", exits=LOCAL_KINDS,
                         help="erase the ESP8266 and write the bridge firmware",
                    description=DESCRIPTION)
    p.add_argument("port", metavar="PORT", help="the ESP8266's serial port, e.g. /dev/ttyUSB0")
    p.add_argument("--firmware", metavar="IMAGE", help="firmware image (.bin) to write")
    p.add_argument("--baud", type=COUNT, default=DEFAULT_BAUD,
                   help="baud rate for erasing and writing (default %(default)s; 460800 is "
                        "faster where the USB adapter allows)")
    p.add_argument("--before", choices=("default-reset", "no-reset"), default="default-reset",
                   help="default-reset: esptool resets the chip into its bootloader with "
                        "DTR/RTS (boards with USB, e.g. WeMos D1 mini, Feather Huzzah); "
                        "no-reset: you hold GPIO0 low and reset it yourself")
    p.add_argument("--connect-attempts", type=COUNT, default=7, metavar="N",
                   help="tries to reach the bootloader (default %(default)s)")
    p.add_argument("--no-erase", action="store_true",
                   help="skip the full erase (keeps the ESP8266's filesystem; not recommended)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the image and the chip, print the esptool commands, flash nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pblink import firmware

    image = firmware.find_image(args.firmware)
    try:
        description = firmware.check_image(image)
    except CliError as exc:  # a bad image is a bad argument, as a missing one is (exit 2)
        raise UsageError(f"--firmware {exc}" if args.firmware else str(exc)) from None
    if args.baud <= 0:
        raise UsageError(f"--baud {args.baud} is not a baud rate")
    print(f"pblink flash: image {description}", file=sys.stderr, flush=True)
    plan = firmware.FlashPlan(port=args.port, image=image, baud=args.baud, before=args.before,
                              connect_attempts=args.connect_attempts,
                              esptool_major=firmware.esptool_version()[0])
    print(f"pblink flash: looking for an ESP8266 at {args.port}", file=sys.stderr, flush=True)
    chip = firmware.detect_chip(args.port, min(args.baud, firmware.DEFAULT_BAUD), args.before,
                                args.connect_attempts)
    if chip.upper().replace("-", "") != "ESP8266":
        raise CliError(f"the chip at {args.port} is an {chip}, not an ESP8266: this firmware is "
                       "for the ESP8266 only")
    steps = ([] if args.no_erase else [("erase-flash", plan.erase_argv())]) + [
        ("write-flash", plan.write_argv())]
    if args.dry_run:
        for _, argv in steps:
            print(shlex.join([sys.executable, "-m", "esptool", *argv]))
        return 0
    for step, argv in steps:
        print(f"pblink flash: esptool {step}", file=sys.stderr, flush=True)
        firmware.run_esptool(argv, step)
    print(f"flashed {image} to the ESP8266 at {args.port}; it boots the bridge now "
          "(unplug it, wire it to the Pyboard: docs/HARDWARE.md)")
    return 0
