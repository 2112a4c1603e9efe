"""`pblink install PORT`: put pb_link, link_core and this board's settings on a Pyboard."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from pblink.common import (
    BROKER_PORT,
    LINK_TIMEOUT_MS,
    SECONDS,
    TOOL_KINDS,
    CliError,
    UsageError,
    add_command,
    setting,
)
from pblink.settings import BY_NAME, int_range

if TYPE_CHECKING:
    from pblink.board_install import BoardSettings

DESCRIPTION = """\
Copy pyboard/pb_link and link_core onto a Pyboard with mpremote, write the
board's settings (pb_settings.py at the root of the target directory), then
list and hash (sha256) what is on the board and compare it with what was sent.

PORT is what `mpremote connect` takes: /dev/ttyACM0, COM3, a0, id:<serial>...

Settings not given as options are taken from the pb_settings.py already on the
board, whose other lines (comments, code) stay as they are; one that does not
parse stops the install before anything is written. conn_id and host are asked
for when missing and stdin is a terminal.
Passwords may come from $PBLINK_WIFI_PASSWORD and $PBLINK_MQTT_PASSWORD (which
`ps` does not show) or be asked for.

examples:
  pblink install /dev/ttyACM0 --conn-id kitchen --host 192.168.1.20 --ssid home
  pblink install a0 --target /flash --mpy          (compiled, for a Pyboard without SD card)
  pblink install a0 --settings-only --broker-port 8883 --tls
  pblink install a0 --check                        (compare the board with this checkout)
"""


def _limits(name: str) -> str:
    from pblink.settings import shown_default

    low, high = int_range(name)
    return f"{low} to {high}, default {shown_default(BY_NAME[name]).strip('`')}"


def register(subparsers: Any) -> None:
    from pblink.board_install import DEFAULT_MARCH, PYBOARD_MARCH

    p = add_command(subparsers, "install", exits=TOOL_KINDS,
                         help="copy pb_link, link_core and settings to a Pyboard",
                    description=DESCRIPTION)
    p.add_argument("port", metavar="PORT", help="the Pyboard's serial port (as mpremote takes it)")
    p.add_argument("--target", metavar="DIR",
                   help="directory on the board: sd (/sd), flash (/flash) or a path "
                        "(default: /sd when an SD card is mounted, else /flash)")
    p.add_argument("--mpy", action="store_true",
                   help="compile the modules with mpy-cross first (less RAM and flash on the "
                        "board; __init__.py and pb_settings.py stay source)")
    p.add_argument("--march", choices=PYBOARD_MARCH, metavar="ARCH",
                   help=f"mpy-cross architecture for --mpy (default {DEFAULT_MARCH}: Pyboard "
                        f"v1.x, PYBLITE, PYBD-SF2/SF3; armv7emdp: PYBD-SF6; one of "
                        f"{', '.join(PYBOARD_MARCH)}: the Cortex-M ones a Pyboard loads)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--settings-only", action="store_true",
                      help="only write pb_settings.py, leave the packages as they are")
    mode.add_argument("--keep-settings", action="store_true",
                      help="copy the packages, leave pb_settings.py as it is")
    mode.add_argument("--check", action="store_true",
                      help="copy nothing: compare the board's files with this checkout")
    p.add_argument("--no-reset", action="store_true",
                   help="do not soft-reset the board first (mpremote resume); needed for a "
                        "board whose REPL ends on soft reset, such as the unix port")
    p.add_argument("--no-input", action="store_true",
                   help="never prompt; fail when a required setting is missing")
    p.add_argument("--source", metavar="DIR",
                   help="the pblink-mqtt checkout to install from (default: this one)")
    p.add_argument("--timeout", type=SECONDS, default=120.0, metavar="S",
                   help="seconds one mpremote step may take (default %(default)g)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")

    s = p.add_argument_group("settings written to pb_settings.py")
    s.add_argument("--conn-id", help="connection ID of this board (1-64 of A-Z a-z 0-9 _ -)")
    s.add_argument("--host", type=setting("host"),
                   help="MQTT broker host, as the ESP8266 reaches it")
    s.add_argument("--broker-port", type=BROKER_PORT, dest="broker_port", metavar="N",
                   help="MQTT broker port (default in config.py: 1883; 8883 is set with --tls)")
    tls = s.add_mutually_exclusive_group()
    tls.add_argument("--tls", dest="tls", action="store_const", const=True,
                     help="the bridge connects to the broker with TLS")
    tls.add_argument("--no-tls", dest="tls", action="store_const", const=False,
                     help="plain MQTT")
    s.add_argument("--topic-root", help="MQTT topic root (default pblink)")
    s.add_argument("--mqtt-user", help="MQTT user name ('' for anonymous)")
    s.add_argument("--mqtt-password", default=os.environ.get("PBLINK_MQTT_PASSWORD"),
                   help="MQTT password (default $PBLINK_MQTT_PASSWORD; asked for if --mqtt-user "
                        "is given without it)")
    s.add_argument("--ssid", help="WiFi network name ('' keeps the network the ESP8266 last "
                                  "joined)")
    s.add_argument("--wifi-password", default=os.environ.get("PBLINK_WIFI_PASSWORD"),
                   help="WiFi password (default $PBLINK_WIFI_PASSWORD; asked for if --ssid is "
                        "given without it)")
    s.add_argument("--timeout-ms", type=LINK_TIMEOUT_MS, metavar="MS",
                   help=f"the link's timeout in ms, the same as the server application's "
                        f"({_limits('timeout_ms')})")
    s.add_argument("--report-s", type=setting("report_s"), metavar="S",
                   help=f"ESP8266 reports every S seconds, 0: never ({_limits('report_s')})")
    s.add_argument("--i2c-mode", choices=BY_NAME["i2c_mode"].low,
                   help="target: machine.I2CTarget (default); pyb: blocking pyb.I2C slave, for "
                        "firmware without I2CTarget")
    s.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="any setting of docs/PYBOARD.md \"Settings\" (link_core/schema.py), e.g. "
                        "--set boot_wait_ms=1500 (VALUE is a Python literal or a string); "
                        "repeatable")
    p.set_defaults(func=run)


class _Progress:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        print(f"pblink install: warning: {message}", file=sys.stderr, flush=True)


def _given_settings(args: argparse.Namespace, known: tuple[str, ...]) -> dict[str, Any]:
    from pblink.board_install import parse_set_option

    given: dict[str, Any] = {}
    for item in args.set:
        name, value = parse_set_option(item, known)
        given[name] = value
    pairs = {
        "conn_id": args.conn_id, "host": args.host, "port": args.broker_port, "tls": args.tls,
        "topic_root": args.topic_root, "mqtt_user": args.mqtt_user,
        "mqtt_password": args.mqtt_password, "ssid": args.ssid,
        "wifi_password": args.wifi_password, "timeout_ms": args.timeout_ms,
        "report_s": args.report_s, "i2c_mode": args.i2c_mode,
    }
    given.update({k: v for k, v in pairs.items() if v is not None})
    if args.tls and args.broker_port is None:
        given.setdefault("port", 8883)
    return given


def _ask(prompt: str, *, secret: bool = False) -> str:
    if secret:
        import getpass

        return getpass.getpass(prompt)
    print(prompt, end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    if not line:
        raise UsageError("no answer (end of input)")
    return line.rstrip("\n")


def _complete(values: dict[str, Any], given: dict[str, Any], interactive: bool,
              coded: frozenset[str] | set[str] = frozenset()) -> None:
    """Ask for what is missing, when a terminal is there to answer (`coded`: names the
    board's pb_settings.py sets with code, which are there)."""
    from pblink.board_install import REQUIRED

    prompts = {"conn_id": "conn_id (this board's connection ID, e.g. kitchen): ",
               "host": "MQTT broker host (as the ESP8266 reaches it): "}
    for name in REQUIRED:
        if values.get(name) or name in coded:
            continue
        if not interactive:
            raise UsageError(f"no {name} given and none on the board: pass "
                             f"--{name.replace('_', '-')}")
        values[name] = _ask(prompts[name]).strip()
    if not interactive:
        return
    if "ssid" in given and given["ssid"] and "wifi_password" not in given:
        values["wifi_password"] = _ask(f"WiFi password for {given['ssid']!r} (empty for an "
                                       "open network): ", secret=True)
    if given.get("mqtt_user") and "mqtt_password" not in given:
        values["mqtt_password"] = _ask(f"MQTT password for {given['mqtt_user']!r}: ",
                                       secret=True)


def run(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from pblink import board_install as bi

    progress = _Progress(args.quiet)
    root = bi.find_source(args.source)
    given = {} if args.check else _given_settings(args, bi.SETTING_NAMES)
    if (args.keep_settings or args.check) and any(
            getattr(args, n) is not None for n in ("conn_id", "host", "broker_port", "tls")):
        raise UsageError("settings options and --keep-settings/--check do not go together")

    if args.march is not None and not args.mpy:
        raise UsageError("--march goes with --mpy (it chooses what mpy-cross compiles for)")
    march = args.march or bi.DEFAULT_MARCH
    bi.validate_settings(given, complete=False)  # fail fast, before the board is reached
    board = bi.Mpremote(args.port, soft_reset=not args.no_reset, timeout=args.timeout)
    with tempfile.TemporaryDirectory(prefix="pblink-install-") as tmp:
        stage_dir = Path(tmp)
        files: list[bi.StagedFile] = []
        mpy_cross = None
        if not args.settings_only:
            if args.mpy:
                mpy_cross = bi.find_mpy_cross()
            files = bi.stage(root, stage_dir, mpy=args.mpy, march=march,
                             mpy_cross=mpy_cross, progress=progress)

        candidates = [bi.TARGET_ALIASES.get(args.target, args.target)] if args.target \
            else list(bi.AUTO_TARGETS)
        progress(f"probing the board at {args.port}")
        info = bi.probe(board, candidates)
        target = bi.choose_target(info, args.target)
        progress(f"board: {info.platform}, {info.version.split(';')[-1].strip()}; "
                 f"target {target}")
        if args.mpy and mpy_cross is not None:
            made = bi.mpy_cross_version(mpy_cross)
            if made and info.mpy_major is not None and info.mpy_major != made[0]:
                raise CliError(f"the board runs .mpy version {info.mpy_major} but mpy-cross "
                               f"writes version {made[0]}: update the board's firmware, or "
                               "install without --mpy")
        if not info.sha256:
            raise CliError("the board's firmware has no hashlib.sha256, so the copy cannot be "
                           "verified (build it with MICROPY_PY_HASHLIB_SHA256)")

        entry = info.targets.get(target, {})
        existing_text = entry.get("settings")
        path = bi.board_join(target, bi.SETTINGS_FILE)
        fix = (f"fix it (mpremote connect {args.port} edit :{path}) or remove it (mpremote "
               f"connect {args.port} rm :{path})")
        unreadable = None  # why the board's pb_settings.py cannot be read, if it cannot
        existing = None
        if entry.get("settings_error"):
            unreadable = f"{path} on the board cannot be read ({entry['settings_error']})"
        bom = False  # a UTF-8 byte order mark at its start (MicroPython skips it): kept
        if not unreadable and existing_text is not None:
            try:
                existing_text, bom = bi.decode_settings(existing_text)
            except bi.SettingsSyntaxError as exc:
                unreadable = f"{path} on the board: {exc}"
        if not unreadable and existing_text is not None and existing_text.strip():
            try:  # else: a new file
                existing = bi.parse_settings_text(existing_text)
            except bi.SettingsSyntaxError as exc:
                unreadable = f"{path} on the board does not parse: {exc}"
        if unreadable and (args.check or args.keep_settings):
            # nothing rewrites it; but the board's config.py cannot import it either
            progress.warn(f"{unreadable}; pb_link/config.py will fail on it: {fix}")
        elif unreadable:
            # rewriting it would drop what cannot be read: the user decides
            raise UsageError(f"{unreadable}; nothing was written: {fix}, then run pblink "
                             "install again (--keep-settings copies the packages and leaves "
                             "the file as it is)")
        old = existing.values if existing else {}
        coded = existing.coded if existing else set()

        if args.check:
            return _check(board, target, files, existing, unreadable is not None, progress)

        values: dict[str, Any] | None = None
        if not args.keep_settings:
            for warning in bi.check_board_settings(old, given,
                                                   existing.kept if existing else (), path=path,
                                                   lines=existing.lines if existing else None):
                progress.warn(warning)
            values = dict(old)  # an application's own names stay too
            values.update(given)
            _complete(values, given, interactive=not args.no_input and sys.stdin.isatty(),
                      coded=coded)
            for warning in bi.validate_settings(values, coded=coded):
                progress.warn(warning)
            if existing is None:
                text = bi.render_settings(values)
            else:  # only what changes: every other line (comments, code) stays as it is
                changes = {k: v for k, v in values.items()
                           if k in given or k not in old or repr(v) != repr(old[k])}
                text = bi.update_settings_text(existing.text, changes)
            settings_path = stage_dir / bi.SETTINGS_FILE
            settings_path.write_bytes(bi.settings_bytes(text, bom and existing is not None))
            data = settings_path.read_bytes()
            import hashlib

            files.append(bi.StagedFile(bi.SETTINGS_FILE, settings_path, len(data),
                                       hashlib.sha256(data).hexdigest()))
        elif not existing_text:
            progress.warn(f"{target}/{bi.SETTINGS_FILE} does not exist: config.py's defaults "
                          "apply until you write it (pblink install --settings-only ...)")

        bi.check_space(info, target, files)
        if not args.settings_only:
            progress(f"removing the old {target}/pb_link and {target}/link_core")
        bi.clean_and_mkdir(board, target, files, remove_packages=not args.settings_only)
        progress(f"copying {len(files)} files to {target}")
        bi.copy_files(board, target, files, progress=progress)

        progress("verifying (sha256 on the board)")
        names = [bi.SETTINGS_FILE] if args.settings_only else [*bi.PACKAGES, bi.SETTINGS_FILE]
        found = bi.board_hashes(board, target, names)
        errors, warnings = bi.compare(files, found, target, packages_only=args.keep_settings)
        for warning in warnings:
            progress.warn(warning)
        if errors:
            raise bi.install_exit(errors, progress.warn)

    what = "pb_settings.py" if args.settings_only else f"{len(files)} files"
    print(f"installed {what} to {target} on {args.port}, verified by sha256")
    if values is not None:
        print(f"settings: {bi.describe_settings(values, coded)}")
    if not args.settings_only:
        print("run the demo on the board with: import pb_link.pb_client")
    return 0


def _check(board: Any, target: str, files: list[Any], existing: BoardSettings | None,
           unreadable: bool, progress: _Progress) -> int:
    from pblink import board_install as bi

    progress(f"comparing {target} with the checkout (sha256 on the board)")
    found = bi.board_hashes(board, target, [*bi.PACKAGES, bi.SETTINGS_FILE])
    errors, warnings = bi.compare(files, found, target, packages_only=True)
    for warning in warnings:
        progress.warn(warning)
    compiled_here = any(f.dest.endswith(".mpy") for f in files)
    compiled_there = any(d.endswith(".mpy") for d in found)
    if errors and compiled_here != compiled_there:
        progress.warn("the board has " + ("source" if compiled_here else "compiled (.mpy)")
                      + " modules: compare " + ("without" if compiled_here else "with")
                      + " --mpy")
    if errors:
        raise bi.install_exit(errors, progress.warn)
    print(f"{len(files)} files on {target} match the checkout")
    if unreadable:
        print(f"settings: {target}/{bi.SETTINGS_FILE} cannot be read (see the warning)")
    elif existing is not None and (existing.values or existing.coded):
        print(f"settings: {bi.describe_settings(existing.values, existing.coded)}")
    else:
        print(f"no {target}/{bi.SETTINGS_FILE}: config.py's defaults apply")
    return 0
