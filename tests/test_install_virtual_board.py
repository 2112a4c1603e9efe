"""`pblink install` against a virtual board: the MicroPython unix port behind a pty.

The recipe (socat, both ends raw so that the REPL's "\\r\\n" reaches mpremote
unchanged, which its raw-REPL handshake needs):

    socat PTY,link=<tmp>/ttyVB,raw,echo=0 EXEC:micropython,pty,stderr,setsid,ctty,raw,echo=0

run with the board's "filesystem" (a temp dir) as working directory. mpremote
must `resume` (pblink install --no-reset): a soft reset (Ctrl-D in the raw REPL)
ends the unix port. The board path given to --target is the temp dir itself.
Tiny `machine`/`pyb` stand-ins on MICROPYPATH let pb_link/config.py build its
hardware list there, as it does on a Pyboard.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, TEST_TIMEOUT, require_tool

pytestmark = pytest.mark.slow

HW_MACHINE = """\
class Pin:
    IN = 0
    OUT = 1
    def __init__(self, name, mode=-1, value=None):
        self.name = name
    def __repr__(self):
        return 'Pin(%r)' % (self.name,)
class I2CTarget:
    def __init__(self, i2c_id, addr, mem=None, mem_addrsize=8):
        self.args = (i2c_id, addr, len(mem), mem_addrsize)
    def __repr__(self):
        return 'I2CTarget%r' % (self.args,)
"""

HW_PYB = """\
class I2C:
    SLAVE = 1
    def __init__(self, bus, mode, addr=None):
        self.args = (bus, mode, addr)
    def __repr__(self):
        return 'pyb.I2C%r' % (self.args,)
"""


@dataclass
class VirtualBoard:
    tty: str
    fs: Path  # the board's filesystem root = the process's cwd

    def mpremote(self, *args: str, timeout: float = TEST_TIMEOUT) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mpremote", "connect", self.tty, "resume",
                               *args], capture_output=True, text=True, timeout=timeout)

    def run(self, code: str) -> object:
        """Run code on the board; it prints one `RESULT <literal>` line."""
        done = self.mpremote("exec", code)
        assert done.returncode == 0, done.stdout + done.stderr
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        assert lines, done.stdout + done.stderr
        return ast.literal_eval(lines[-1][len("RESULT "):])


@pytest.fixture
def board(tmp_path: Path, micropython_bin: str) -> Iterator[VirtualBoard]:
    socat = require_tool("socat")
    fs = tmp_path / "board"
    fs.mkdir()
    hw = tmp_path / "hw"
    hw.mkdir()
    (hw / "machine.py").write_text(HW_MACHINE)
    (hw / "pyb.py").write_text(HW_PYB)
    tty = tmp_path / "ttyVB"
    env = dict(os.environ, MICROPYPATH=f"{hw}:.frozen")
    proc = subprocess.Popen(
        [socat, f"PTY,link={tty},raw,echo=0",
         f"EXEC:{micropython_bin},pty,stderr,setsid,ctty,raw,echo=0"],
        cwd=fs, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + TEST_TIMEOUT
        while not tty.exists():
            assert proc.poll() is None, "socat exited"
            assert time.monotonic() < deadline, "socat made no pty"
            time.sleep(0.02)
        yield VirtualBoard(str(tty), fs)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def pblink(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pblink", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=TEST_TIMEOUT * 4, input=stdin)


def install(board: VirtualBoard, *args: str) -> subprocess.CompletedProcess:
    return pblink("install", board.tty, "--no-reset", "--target", str(board.fs),
                  "--timeout", str(TEST_TIMEOUT * 2), *args)


def sources() -> dict[str, Path]:
    files = {}
    for name, rel in (("pb_link", "pyboard/pb_link"), ("link_core", "link_core")):
        for path in (ROOT / rel).rglob("*.py"):
            if "__pycache__" not in path.parts:
                files[f"{name}/{path.relative_to(ROOT / rel).as_posix()}"] = path
    return files


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def board_settings(board: VirtualBoard) -> dict[str, object]:
    tree = ast.parse((board.fs / "pb_settings.py").read_text())
    return {node.targets[0].id: ast.literal_eval(node.value)  # type: ignore[attr-defined]
            for node in tree.body if isinstance(node, ast.Assign)}


def test_install_copies_verifies_and_runs(board: VirtualBoard) -> None:
    done = install(board, "--conn-id", "kitchen", "--host", "10.1.2.3", "--broker-port", "1884",
                   "--ssid", "home net", "--wifi-password", "pa'ss\"word", "--mqtt-user", "dev",
                   "--mqtt-password", "s3cret", "--topic-root", "site/pblink", "--report-s", "0",
                   "--set", "boot_wait_ms=300")
    assert done.returncode == 0, done.stderr
    assert "verified by sha256" in done.stdout
    # secrets never printed
    assert "s3cret" not in done.stdout + done.stderr and "pa'ss" not in done.stdout + done.stderr
    # progress on stderr, one line per file
    expected = sources()
    assert f"[{len(expected) + 1:>2}/{len(expected) + 1}]" in done.stderr

    on_board = {p.relative_to(board.fs).as_posix(): p for p in board.fs.rglob("*") if p.is_file()}
    assert set(on_board) == set(expected) | {"pb_settings.py"}
    for rel, src in expected.items():
        assert sha(on_board[rel]) == sha(src), rel

    assert board_settings(board) == {
        "conn_id": "kitchen", "host": "10.1.2.3", "port": 1884, "topic_root": "site/pblink",
        "mqtt_user": "dev", "mqtt_password": "s3cret", "ssid": "home net",
        "wifi_password": "pa'ss\"word", "report_s": 0, "boot_wait_ms": 300,
    }

    # The installed package imports and runs on the board, with these settings.
    result = board.run(
        "import pb_link.config as c\n"
        "import pb_link.app_base\n"
        "from link_core import frames, names\n"
        "f = frames.encode_qos('0123abcd', 1, 1, 'hello')\n"
        "i2c = c.hardware[0][0] if isinstance(c.hardware[0], tuple) else c.hardware[0]\n"
        "print('RESULT', repr([c.conn_id, c.config, repr(i2c),"
        " frames.decode(f)[-1], names.check_conn_id(c.conn_id)]))\n")
    assert isinstance(result, list)
    conn_id, config, i2c, line, checked = result
    assert conn_id == checked == "kitchen"
    assert config[:10] == [1884, "10.1.2.3", 1500, 0, "home net", "pa'ss\"word", "dev", "s3cret",
                           "site/pblink", False]
    assert config[10] == {"boot_wait_ms": 300}
    assert i2c == "I2CTarget(1, 18, 256, 8)"
    assert line == "hello"


def test_reinstall_keeps_settings_and_updates_some(board: VirtualBoard) -> None:
    assert install(board, "--conn-id", "dev1", "--host", "broker.lan", "-q").returncode == 0
    # settings-only: what is not given is kept from the board's pb_settings.py, an
    # application's own names too
    with open(board.fs / "pb_settings.py", "a") as f:
        f.write("my_app_knob = [1, 'two']\n")
    done = install(board, "--settings-only", "--tls", "--i2c-mode", "pyb", "-q")
    assert done.returncode == 0, done.stderr
    assert board_settings(board) == {"conn_id": "dev1", "host": "broker.lan", "port": 8883,
                                     "tls": True, "i2c_mode": "pyb",
                                     "my_app_knob": [1, "two"]}
    result = board.run("import pb_link.config as c\nprint('RESULT', repr([c.config[0], "
                       "c.config[9], repr(c.hardware[0])]))\n")  # pyb.I2C: not a tuple
    assert result == [8883, True, "pyb.I2C(1, 1, 18)"]
    # packages reinstalled, settings file untouched
    before = sha(board.fs / "pb_settings.py")
    done = install(board, "--keep-settings", "-q")
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr
    assert sha(board.fs / "pb_settings.py") == before


def test_install_mpy_compiles_and_runs(board: VirtualBoard) -> None:
    done = install(board, "--mpy", "--conn-id", "dev2", "--host", "h", "-q")
    assert done.returncode == 0, done.stderr
    names = {p.relative_to(board.fs).as_posix() for p in board.fs.rglob("*") if p.is_file()}
    assert "pb_link/__init__.py" in names and "link_core/__init__.py" in names
    assert "pb_link/config.mpy" in names and "link_core/names.mpy" in names
    assert "pb_link/config.py" not in names and "pb_settings.py" in names
    for name in names - {"pb_settings.py", "pb_link/__init__.py", "link_core/__init__.py"}:
        assert name.endswith(".mpy"), name
        assert (board.fs / name).read_bytes()[:2] == b"M\x06"  # .mpy version 6
    result = board.run("import pb_link.config as c\nprint('RESULT', repr([c.conn_id, "
                       "c.__file__]))\n")
    assert result == ["dev2", "pb_link/config.mpy"]
    # --check agrees; a reinstall without --mpy removes every .mpy
    assert install(board, "--check", "--mpy", "-q").returncode == 0
    assert install(board, "--keep-settings", "-q").returncode == 0
    assert not list(board.fs.rglob("*.mpy"))


def test_check_reports_hash_mismatch(board: VirtualBoard) -> None:
    assert install(board, "--conn-id", "dev3", "--host", "h", "-q").returncode == 0
    done = install(board, "--check")
    assert done.returncode == 0, done.stderr
    assert "match the checkout" in done.stdout
    (board.fs / "link_core" / "names.py").write_bytes(b"# damaged\n")
    done = install(board, "--check")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("pblink install: error: hash mismatch: ")
    assert last.endswith("/link_core/names.py (board sha256 "
                         f"{hashlib.sha256(b'# damaged' + bytes([10])).hexdigest()[:12]}, "
                         f"expected {sha(ROOT / 'link_core/names.py')[:12]})")


def test_board_without_the_target_directory(board: VirtualBoard) -> None:
    done = pblink("install", board.tty, "--no-reset", "--conn-id", "a", "--host", "h")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "pblink install: error: the board has neither /sd nor /flash (not a Pyboard?): "
        "choose a directory with --target")
    done = pblink("install", board.tty, "--no-reset", "--target", "sd", "--conn-id", "a",
                  "--host", "h")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "pblink install: error: the board has no directory /sd (no SD card in the board? "
        "use --target /flash)")
    assert not any(board.fs.iterdir())


def test_missing_required_setting_without_a_terminal(board: VirtualBoard) -> None:
    done = install(board, "--host", "h", "--no-input")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "pblink install: error: no conn_id given and none on the board: pass --conn-id")


def test_mip_installs_package_json_from_the_checkout(board: VirtualBoard) -> None:
    lib = board.fs / "lib"
    done = board.mpremote("mip", "install", "--target", str(lib), str(ROOT / "package.json"),
                          timeout=TEST_TIMEOUT * 2)
    assert done.returncode == 0, done.stdout + done.stderr
    expected = sources()
    got = {p.relative_to(lib).as_posix(): p for p in lib.rglob("*") if p.is_file()}
    assert set(got) == set(expected)
    for rel, src in expected.items():
        assert sha(got[rel]) == sha(src), rel
    data = json.loads((ROOT / "package.json").read_text())
    assert sorted(dest for dest, _ in data["urls"]) == sorted(expected)


def test_no_device_at_port() -> None:
    done = pblink("install", "/dev/pblink-no-such-tty", "--conn-id", "a", "--host", "h")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "pblink install: error: no device at /dev/pblink-no-such-tty: no such file (is the board "
        "plugged in? `mpremote devs` lists the serial ports)")


def test_bad_conn_id_fails_before_touching_the_board() -> None:
    done = pblink("install", "/dev/pblink-no-such-tty", "--conn-id", "a/b", "--host", "h")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("pblink install: error: conn_id 'a/b' has the character '/'")


BROKEN_SETTINGS = ("conn_id = 'kitchen'\nhost = '10.0.0.2'\nssid = 'home'\n"
                   "wifi_password = 'secret-pw'\nmy_knob = 3\nreport_s = 5\nhost2 = \n")


def test_a_settings_file_that_does_not_parse_is_not_overwritten(board: VirtualBoard) -> None:
    """Review finding 1: install used to read such a file as empty and write a new one,
    dropping every setting in it (or claim there was no conn_id)."""
    path = board.fs / "pb_settings.py"
    path.write_text(BROKEN_SETTINGS)
    board_path = f"{board.fs}/pb_settings.py"
    for args in (["--settings-only", "--conn-id", "kitchen", "--host", "10.0.0.5"],
                 ["--no-input"], ["--settings-only", "--no-input"]):
        done = install(board, *args)
        assert done.returncode == 2, (args, done.stderr)
        last = done.stderr.strip().splitlines()[-1]
        assert last == (
            f"pblink install: error: {board_path} on the board does not parse: line 7: invalid "
            f"syntax: 'host2 ='; nothing was written: fix it (mpremote connect {board.tty} edit "
            f":{board_path}) or remove it (mpremote connect {board.tty} rm :{board_path}), then "
            "run pblink install again (--keep-settings copies the packages and leaves the file "
            "as it is)"), args
        assert path.read_text() == BROKEN_SETTINGS
        assert sorted(p.name for p in board.fs.iterdir()) == ["pb_settings.py"]
    # --keep-settings: the packages go on, the file stays, with a warning
    done = install(board, "--keep-settings")
    assert done.returncode == 0, done.stderr
    assert (f"pblink install: warning: {board_path} on the board does not parse: line 7: "
            "invalid syntax: 'host2 ='; pb_link/config.py will fail on it: fix it") in done.stderr
    assert path.read_text() == BROKEN_SETTINGS
    assert (board.fs / "pb_link" / "config.py").is_file()
    done = install(board, "--check")
    assert done.returncode == 0, done.stderr
    assert "does not parse: line 7" in done.stderr
    assert f"settings: {board.fs}/pb_settings.py cannot be read (see the warning)" in done.stdout


def test_a_settings_file_with_a_bom_or_not_utf8(board: VirtualBoard) -> None:
    """Review 2 finding 3: a UTF-8 byte order mark (MicroPython skips it) is read and kept
    on rewrite; a file that is not UTF-8 is named with its line, exit 2, nothing written."""
    path = board.fs / "pb_settings.py"
    path.write_bytes(b"\xef\xbb\xbf# caf\xc3\xa9\nconn_id = 'kitchen'\nhost = '10.0.0.2'\n")
    done = install(board, "--settings-only", "--host", "10.0.0.5", "--no-input")
    assert done.returncode == 0, done.stderr
    assert path.read_bytes() == (b"\xef\xbb\xbf# caf\xc3\xa9\nconn_id = 'kitchen'\n"
                                 b"host = '10.0.0.5'\n")
    latin1 = b"conn_id = 'kitchen'\nhost = '10.0.0.2'\n# caf\xe9\n"
    path.write_bytes(latin1)
    board_path = f"{board.fs}/pb_settings.py"
    done = install(board, "--settings-only", "--host", "10.0.0.5", "--no-input")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"pblink install: error: {board_path} on the board: line 3: not UTF-8 (byte 0xe9); "
        "nothing was written: fix it")
    assert path.read_bytes() == latin1
    # finding 9: a value out of range names the path and the line
    bad = b"conn_id = 'kitchen'\nhost = '10.0.0.2'\ntimeout_ms = 10\n"
    path.write_bytes(bad)
    done = install(board, "--settings-only", "--host", "10.0.0.5", "--no-input")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"pblink install: error: {board_path} on the board: line 3: timeout_ms 10 is not an int "
        "from 200 to 3600000; fix it with --set timeout_ms=...")
    assert path.read_bytes() == bad


def test_reinstall_keeps_lines_that_are_code(board: VirtualBoard) -> None:
    """Review finding 1: expressions and imports in pb_settings.py (the user's own code)
    stay as they are; only what an option changes is rewritten. Finding 2: a loopback
    --host warns, as a short WiFi password does."""
    path = board.fs / "pb_settings.py"
    (board.fs / "my_calib.py").write_text("GAIN = 2\n")
    text = ("# my board\nconn_id = 'kitchen'\nhost = '10.0.0.2'  # the broker\n"
            "my_period_ms = 60 * 1000\nimport my_calib\ntimeout_ms = 1000 * my_calib.GAIN\n"
            "report_s = 5\n")
    path.write_text(text)
    done = install(board, "--host", "127.0.0.1", "--ssid", "", "-q")
    assert done.returncode == 0, done.stderr
    assert path.read_text() == text.replace("'10.0.0.2'", "'127.0.0.1'") + "ssid = ''\n"
    warnings = [ln for ln in done.stderr.splitlines() if ln.startswith("pblink install: warn")]
    assert warnings == [
        "pblink install: warning: pb_settings.py on the board has lines that are not NAME = "
        "literal, kept as they are (config.py checks their values on the board): line 4: "
        "my_period_ms = 60 * 1000; line 5: import my_calib; line 6: timeout_ms = 1000 * "
        "my_calib.GAIN",
        "pblink install: warning: host '127.0.0.1' is the ESP8266 itself, not the PC (the "
        "ESP8266 connects to the broker): give the broker's LAN address, e.g. --host "
        "192.168.1.20"]
    assert "timeout_ms=<code>" in done.stdout and "my_period_ms=<code>" in done.stdout
    result = board.run("import pb_link.config as c\nimport pb_settings as s\n"
                       "print('RESULT', repr([c.config[1], c.config[2], s.my_period_ms]))\n")
    assert result == ["127.0.0.1", 2000, 60000]
