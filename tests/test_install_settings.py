"""pblink install without a board: settings, staging, package.json, verification logic."""

from __future__ import annotations

import argparse
import ast
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from pblink import board_install as bi
from pblink import cmd_install
from pblink.common import EXIT_USAGE, CliError


def test_settings_round_trip_through_python_literals() -> None:
    values = {"conn_id": "dev-1", "host": "192.168.1.5", "port": 1883, "tls": False,
              "ssid": "café \"net\"", "wifi_password": "it's\\x00\n", "mqtt_user": "",
              "report_s": 0, "bridge_tuning": {"keepalive_ms": 500}}
    text = bi.render_settings(values)
    assert bi.parse_settings_text(text).values == values
    # the fixed order: known names in the settings table's order, then the rest sorted
    names = [ast.parse(line).body[0].targets[0].id  # type: ignore[attr-defined]
             for line in text.splitlines() if line and not line.startswith("#")]
    assert names == ["conn_id", "port", "host", "report_s", "ssid", "wifi_password", "mqtt_user",
                     "tls", "bridge_tuning"]


def test_settings_text_that_is_not_literals_is_kept_and_named() -> None:
    found = bi.parse_settings_text("import os\nhost = os.getenv('X')\nport = 1\n"
                                   "x = {[1]: 2}\n")
    assert found.values == {"port": 1}
    assert found.kept == [(1, "import os"), (2, "host = os.getenv('X')"), (4, "x = {[1]: 2}")]
    assert found.coded == {"os", "host", "x"}


@pytest.mark.parametrize(("text", "message"), [
    ("conn_id = kitchen board", "line 1: invalid syntax: 'conn_id = kitchen board'"),
    ("conn_id = 'k'\nhost = 'h'\nhost2 = \nreport_s = 5\n", "line 3: invalid syntax: 'host2 ='"),
    ("conn_id = 'k'\nx = (1,\n", "line 2: '(' was never closed: 'x = (1,'"),
    ("a = 1\x00\n", "null bytes"),
])
def test_settings_text_that_does_not_parse_names_its_line(text: str, message: str) -> None:
    """Install must not rewrite a file it cannot read (it would drop what is in it)."""
    with pytest.raises(bi.SettingsSyntaxError) as info:
        bi.parse_settings_text(text)
    assert message in str(info.value)


def test_settings_update_changes_only_what_it_must() -> None:
    text = ("# mine\r\nconn_id = 'kitchen'\r\nhost = '1.2.3.4'  # broker\r\n"
            "my_period_ms = 60 * 1000\r\nimport my_calib\r\nport = 1883; tls = False\r\n"
            "if my_calib.X:\r\n    port = 8883\r\nname = 'caf\u00e9'; ssid = 'a'")
    new = bi.update_settings_text(text, {"host": "10.0.0.5", "port": 1884, "report_s": 5,
                                         "ssid": "net"})
    assert new == ("# mine\r\nconn_id = 'kitchen'\r\nhost = '10.0.0.5'  # broker\r\n"
                   "my_period_ms = 60 * 1000\r\nimport my_calib\r\nport = 1884; tls = False\r\n"
                   "if my_calib.X:\r\n    port = 8883\r\nname = 'caf\u00e9'; ssid = 'net'\r\n"
                   # port: also set by code above, so set last too; report_s: new
                   "port = 1884\r\nreport_s = 5\r\n")
    assert bi.update_settings_text(text, {}) == text
    multi = "host = (\n  'a'\n)\nx = 1\n"
    assert bi.update_settings_text(multi, {"host": "b"}) == "host = 'b'\nx = 1\n"


@pytest.mark.parametrize(("values", "message"), [
    ({"host": "h"}, "conn_id is required"),
    ({"conn_id": "a+b", "host": "h"}, "conn_id 'a+b' has the character '+'"),
    ({"conn_id": "x" * 65, "host": "h"}, "is 65 characters long"),
    ({"conn_id": "a", "host": "mqtt://h"}, "host 'mqtt://h' is not a host name"),
    ({"conn_id": "a", "host": "h:1883"}, "host 'h:1883' is not a host name"),
    ({"conn_id": "a", "host": "h", "port": 0}, "port 0 is not an int from 1 to 65535"),
    ({"conn_id": "a", "host": "h", "port": "1883"}, "port '1883' is not an int from 1 to"),
    ({"conn_id": "a", "host": "h", "tls": 1}, "tls 1 is not a bool (True or False)"),
    ({"conn_id": "a", "host": "h", "topic_root": "a/+/b"}, "topic root 'a/+/b'"),
    ({"conn_id": "a", "host": "h", "ssid": "s" * 33}, "must be 0 to 32 bytes"),
    ({"conn_id": "a", "host": "h", "timeout_ms": 10}, "timeout_ms 10 is not an int from 200 to"),
    ({"conn_id": "a", "host": "h", "i2c_mode": "fast"}, "i2c_mode 'fast' is not one of"),
    ({"conn_id": "a", "host": "h", "boot_wait_ms": -1}, "boot_wait_ms -1 is not an int from 0"),
    ({"conn_id": "a", "host": "h", "mqtt_password": "p"},  # MQTT-3.1.2-22
     "mqtt_password is set but mqtt_user is empty"),
])
def test_invalid_settings_are_refused(values: dict[str, object], message: str) -> None:
    with pytest.raises(CliError) as info:
        bi.validate_settings(values)
    assert info.value.code == EXIT_USAGE
    assert message in str(info.value)


def test_settings_warnings() -> None:
    assert bi.validate_settings({"conn_id": "a", "host": "fe80::1", "port": 1883}) == []
    assert bi.validate_settings({"conn_id": "a", "host": "192.168.1.5"}) == []
    warnings = bi.validate_settings({"conn_id": "a", "host": "h", "tls": True, "port": 1883,
                                     "wifi_password": "short"})
    text = " ".join(warnings)
    assert "8 to 63" in text and "without an ssid" in text and "8883" in text
    # required names and the login rule: a name the board's file sets with code is there
    assert bi.validate_settings({"host": "h", "mqtt_password": "p"},
                                coded={"conn_id", "mqtt_user"}) == []


@pytest.mark.parametrize("host", ["localhost", "LocalHost.", "dev.localhost", "127.0.0.1",
                                  "127.1.2.3", "::1", "0.0.0.0", "::", "127.1",
                                  "127.000.000.001", "0", "ip6-localhost", "ip6-loopback",
                                  "::ffff:127.0.0.1", "::FFFF:0.0.0.0"])
def test_a_loopback_host_warns(host: str) -> None:
    """The ESP8266 connects to the broker: localhost there is the ESP8266 itself."""
    warnings = bi.validate_settings({"conn_id": "a", "host": host})
    assert warnings == [f"host {host!r} is the ESP8266 itself, not the PC (the ESP8266 connects "
                        "to the broker): give the broker's LAN address, e.g. --host 192.168.1.20"]


@pytest.mark.parametrize("host", ["192.168.1.20", "fe80::1", "localhost2", "mylocalhost",
                                  "broker.lan", "10.0.0.1", "::ffff:192.168.1.20", "1",
                                  "ip6-localhost2"])
def test_a_lan_host_does_not_warn(host: str) -> None:
    assert not bi.loopback_host(host)
    assert bi.loopback_host("[::1]") and bi.loopback_host("::ffff:127.0.0.1")


def test_set_option_knows_the_settings_table() -> None:
    known = bi.SETTING_NAMES
    assert "boot_wait_ms" in known and "i2c_mode" in known and "bridge_tuning" in known
    assert bi.parse_set_option("boot_wait_ms=1500", known) == ("boot_wait_ms", 1500)
    assert bi.parse_set_option("report_s=5", known) == ("report_s", 5)
    assert bi.parse_set_option("host=broker", known) == ("host", "broker")
    assert bi.parse_set_option("tls=True", known) == ("tls", True)
    with pytest.raises(CliError, match="reads no such setting"):
        bi.parse_set_option("colour=red", known)
    with pytest.raises(CliError, match="expected NAME=VALUE"):
        bi.parse_set_option("report_s", known)


def test_settings_from_options_tls_picks_8883() -> None:
    parser = argparse.ArgumentParser()
    cmd_install.register(parser.add_subparsers())
    args = parser.parse_args(["install", "a0", "--conn-id", "x", "--tls", "--ssid", "n"])
    given = cmd_install._given_settings(args, bi.SETTING_NAMES)
    assert given["port"] == 8883 and given["tls"] is True and given["ssid"] == "n"
    args = parser.parse_args(["install", "a0", "--tls", "--broker-port", "9000"])
    assert cmd_install._given_settings(args, bi.SETTING_NAMES)["port"] == 9000


def test_stage_with_mpy_keeps_init_as_source(tmp_path: Path, mpy_cross_bin: str) -> None:
    files = bi.stage(ROOT, tmp_path, mpy=True, mpy_cross=mpy_cross_bin)
    dests = {f.dest for f in files}
    assert "pb_link/__init__.py" in dests and "link_core/__init__.py" in dests
    assert "pb_link/config.mpy" in dests and "link_core/i2c_link.mpy" in dests
    for f in files:
        data = f.local.read_bytes()
        assert hashlib.sha256(data).hexdigest() == f.sha256 and len(data) == f.size
        if f.dest.endswith(".mpy"):
            assert data[:2] == b"M\x06"
            assert f.dest[:-4].encode() + b".py" in data  # -s: the source name for tracebacks
    assert bi.mpy_cross_version(mpy_cross_bin) is not None


def test_march_choices_are_mpy_crosss(mpy_cross_bin: str, tmp_path: Path) -> None:
    """--march is checked against the architectures of the mpy-cross that is installed."""
    import re

    text = subprocess.run([mpy_cross_bin, "--help"], capture_output=True, text=True,
                          check=False).stdout
    listed = re.search(r"-march=<arch> : [^;]*;\s*(.*?)\n-", text, re.S)
    assert listed, text
    assert tuple(re.split(r",\s*", listed.group(1).strip())) == bi.MARCH_CHOICES
    assert bi.DEFAULT_MARCH in bi.MARCH_CHOICES
    with pytest.raises(CliError) as info:
        bi.stage(ROOT, tmp_path, mpy=True, march="nope", mpy_cross=mpy_cross_bin)
    assert info.value.code == EXIT_USAGE
    assert str(info.value).startswith("--march 'nope': mpy-cross has no such architecture (one "
                                      "of x86, x64, armv6")
    assert not any(tmp_path.iterdir())  # before anything is compiled
    # review 2 finding 9: mpy-cross knows it, a Pyboard cannot load it
    assert set(bi.PYBOARD_MARCH) <= set(bi.MARCH_CHOICES) and bi.DEFAULT_MARCH in bi.PYBOARD_MARCH
    for march in ("debug", "host", "x64", "xtensa"):
        with pytest.raises(CliError) as info:
            bi.stage(ROOT, tmp_path, mpy=True, march=march, mpy_cross=mpy_cross_bin)
        assert info.value.code == EXIT_USAGE
        assert str(info.value) == (f"--march {march!r}: a Pyboard cannot load .mpy files of "
                                   "that architecture (one of armv6m, armv7m, armv7em, "
                                   "armv7emsp, armv7emdp)")
    assert not any(tmp_path.iterdir())


def test_stage_reports_a_compile_error(tmp_path: Path, mpy_cross_bin: str) -> None:
    src = tmp_path / "src"
    for rel in bi.PACKAGES.values():
        (src / rel).mkdir(parents=True)
        (src / rel / "__init__.py").write_text("")
    (src / "link_core" / "bad.py").write_text("def f(:\n")
    with pytest.raises(CliError, match=r"mpy-cross could not compile .*bad\.py"):
        bi.stage(src, tmp_path / "stage", mpy=True, mpy_cross=mpy_cross_bin)


def test_compare_finds_missing_mismatched_and_stale_files(tmp_path: Path) -> None:
    def staged(dest: str, data: bytes) -> bi.StagedFile:
        return bi.StagedFile(dest, tmp_path / dest, len(data), hashlib.sha256(data).hexdigest())

    want = [staged("pb_link/a.mpy", b"a"), staged("pb_link/b.py", b"b"),
            staged("pb_settings.py", b"s")]
    found = {"pb_link/a.mpy": (1, hashlib.sha256(b"a").hexdigest()),
             "pb_link/a.py": (1, "0" * 64),
             "pb_link/b.py": (1, hashlib.sha256(b"B").hexdigest()),
             "pb_link/notes.txt": (1, "0" * 64)}
    errors, warnings = bi.compare(want, found, "/flash")
    assert errors[0].startswith("hash mismatch: /flash/pb_link/b.py (board sha256 ")
    assert errors[1] == "missing on the board: /flash/pb_settings.py"
    assert errors[2].startswith("stale file on the board: /flash/pb_link/a.py")
    assert warnings == ["extra file on the board: /flash/pb_link/notes.txt"]
    assert bi.compare(want[:1], {"pb_link/a.mpy": found["pb_link/a.mpy"]}, "/") == ([], [])
    assert str(bi.install_exit(errors)) == errors[0] + " (and 2 more)"


def test_board_paths_and_target_choice() -> None:
    assert bi.board_join("/sd", "pb_link/x.py") == "/sd/pb_link/x.py"
    assert bi.board_join("/sd/", "x") == "/sd/x"
    assert bi.board_join("/", "x") == "/x"
    info = bi.BoardInfo("pyboard", "v1.29", 0x0A06, True, {
        "/sd": {"target": "/sd", "mode": None}, "/flash": {"target": "/flash", "mode": 0x4000}})
    assert bi.choose_target(info, None) == "/flash"
    assert bi.choose_target(info, "flash") == "/flash"
    assert info.mpy_major == 6
    with pytest.raises(CliError, match="no SD card"):
        bi.choose_target(info, "sd")


def test_space_check() -> None:
    files = [bi.StagedFile("pb_link/x.py", Path("x"), 1000, "")] * 20  # 20 x 1024 on disk
    info = bi.BoardInfo("pyboard", "", None, True, {
        "/flash": {"free": (512, 10_000), "used": 5_000}})
    with pytest.raises(CliError, match="not enough space on /flash: the files need 20 KiB"):
        bi.check_space(info, "/flash", files)
    info.targets["/flash"]["used"] = 20_000  # the old copy that is removed first
    bi.check_space(info, "/flash", files)


def test_package_json_is_current() -> None:
    """package.json lists every pb_link and link_core module; regenerate it with
    `python -m pblink.board_install package-json > package.json`."""
    assert (ROOT / "package.json").read_text() == bi.render_package_json(ROOT)
    data = bi.package_json(ROOT)
    for dest, src in data["urls"]:
        assert (ROOT / src).is_file()
        assert dest.split("/")[0] in bi.PACKAGES
    printed = subprocess.run([sys.executable, "-m", "pblink.board_install", "package-json"],
                             capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert printed == bi.render_package_json(ROOT)


def test_mpremote_argv_resets_only_first() -> None:
    board = bi.Mpremote("/dev/ttyACM0", command=["mpremote"])
    assert board.argv(["exec", "x"]) == ["mpremote", "connect", "/dev/ttyACM0", "exec", "x"]
    board.calls = 1
    assert board.argv(["exec", "x"]) == ["mpremote", "connect", "/dev/ttyACM0", "resume", "exec",
                                         "x"]
    assert bi.Mpremote("a0", soft_reset=False, command=["m"]).argv([])[-1] == "resume"


def test_mpremote_errors_become_one_line() -> None:
    board = bi.Mpremote("/dev/ttyUSB9")
    err = board._error(1, "", "mpremote: failed to access /dev/ttyUSB9 (it may be in use by "
                               "another program)\n")
    assert str(err).startswith("no device at /dev/ttyUSB9")
    err = board._error(1, "", "Traceback...\nmpremote.transport.TransportError: could not enter "
                              "raw repl\n")
    assert "does not answer as a MicroPython REPL" in str(err)
    assert "\n" not in str(err)


def test_board_scripts_are_micropython_syntax(micropython_bin: str, tmp_path: Path) -> None:
    """The probe, clean and hash scripts run on the unix port (here without mpremote)."""
    (tmp_path / "pb_link").mkdir()
    (tmp_path / "pb_link" / "a.py").write_bytes(b"x = 1\n")
    (tmp_path / "pb_settings.py").write_text("conn_id = 'q'\n")
    target = str(tmp_path)
    probe = bi._PROBE % {"targets": [target, target + "/nope"], "names": ["pb_link"],
                         "settings": bi.SETTINGS_FILE}
    out = subprocess.run([micropython_bin, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    head, here, nope = bi.parse_marked(out)
    assert head["sha256"] is True and head["platform"] == "linux"
    assert here["mode"] & 0x4000 and here["used"] == 6 and here["settings"] == b"conn_id = 'q'\n"
    assert here["settings_error"] is None
    assert nope["mode"] is None and nope["settings"] is None and nope["settings_error"] is None
    # a pb_settings.py that is there but cannot be read is not "no file" (install would
    # write a new one over it)
    odd = tmp_path / "odd"
    (odd / "pb_settings.py").mkdir(parents=True)
    out = subprocess.run([micropython_bin, "-c", bi._PROBE % {
        "targets": [str(odd)], "names": [], "settings": bi.SETTINGS_FILE}],
        capture_output=True, text=True, check=True).stdout
    _, entry = bi.parse_marked(out)
    assert entry["settings"] is None and entry["settings_error"]
    hashed = subprocess.run([micropython_bin, "-c", bi._HASH % {"names": ["pb_link",
                            "pb_settings.py"], "target": target}], capture_output=True,
                            text=True, check=True).stdout
    assert bi.parse_marked(hashed) == [
        ("pb_link/a.py", 6, hashlib.sha256(b"x = 1\n").hexdigest()),
        ("pb_settings.py", 14, hashlib.sha256(b"conn_id = 'q'\n").hexdigest()), "end"]
    clean = bi._CLEAN % {"remove": [target + "/pb_link"], "mkdir": [target + "/pb_link",
                                                                     target + "/pb_link/sub"]}
    subprocess.run([micropython_bin, "-c", clean], check=True, capture_output=True)
    assert [p.name for p in (tmp_path / "pb_link").iterdir()] == ["sub"]


def test_prompts_ask_only_for_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, bool]] = []
    answers = iter(["kitchen", "10.0.0.2", "wifi-secret"])

    def ask(prompt: str, *, secret: bool = False) -> str:
        asked.append((prompt, secret))
        return next(answers)

    monkeypatch.setattr(cmd_install, "_ask", ask)
    values: dict[str, object] = {}
    given = {"ssid": "home"}
    values.update(given)
    cmd_install._complete(values, given, interactive=True)
    assert values == {"ssid": "home", "conn_id": "kitchen", "host": "10.0.0.2",
                      "wifi_password": "wifi-secret"}
    assert [secret for _, secret in asked] == [False, False, True]  # the password: getpass
    asked.clear()
    values = {"conn_id": "a", "host": "b"}  # from the board's pb_settings.py
    cmd_install._complete(values, {}, interactive=True)
    assert asked == []
    with pytest.raises(CliError, match="no host given and none on the board"):
        cmd_install._complete({"conn_id": "a"}, {}, interactive=False)


def test_a_silent_mpremote_is_stopped(tmp_path: Path) -> None:
    script = tmp_path / "fake_mpremote.py"
    script.write_text("import sys, time\nprint('cp a :b', flush=True)\ntime.sleep(30)\n")
    port = tmp_path / "tty"
    port.write_text("")
    board = bi.Mpremote(str(port), timeout=1.0, command=[sys.executable, str(script)])
    seen: list[str] = []
    with pytest.raises(CliError, match=r"stopped answering \(mpremote took more than 1 s\)"):
        board.run(["fs", "cp", "a", ":b"], on_line=seen.append)
    assert seen == ["cp a :b"]


def test_settings_bytes_bom_and_not_utf8() -> None:
    """Review 2 finding 3: the probe reads bytes; a BOM is skipped and put back, bytes that
    are not UTF-8 name their line."""
    assert bi.decode_settings(b"\xef\xbb\xbfx = 1\n") == ("x = 1\n", True)
    assert bi.decode_settings(b"x = '\xc3\xa9'\n") == ("x = '\u00e9'\n", False)
    assert bi.settings_bytes("x = 1\n", True) == b"\xef\xbb\xbfx = 1\n"
    assert bi.settings_bytes("x = 1\n", False) == b"x = 1\n"
    with pytest.raises(bi.SettingsSyntaxError) as info:
        bi.decode_settings(b"\xef\xbb\xbfx = 1\n\n# caf\xe9\n")
    assert str(info.value) == "line 3: not UTF-8 (byte 0xe9)"


def test_the_boards_own_settings_file_is_checked_and_named() -> None:
    """pblink install: a bad value read from the board's pb_settings.py says where it came
    from and how to fix it; an application's own names are kept, named in one warning."""
    with pytest.raises(bi.UsageError) as info:
        bi.check_board_settings({"conn_id": "a", "timeout_ms": 199}, {})
    assert str(info.value) == ("pb_settings.py on the board: timeout_ms 199 is not an int "
                               "from 200 to 3600000; fix it with --set timeout_ms=...")
    assert bi.check_board_settings({"timeout_ms": 199}, {"timeout_ms": 1500}) == []
    # review 2 finding 9: install names the file's path and the line
    board = bi.parse_settings_text("conn_id = 'a'\n# x\ntimeout_ms = 5\ntimeout_ms = 10\n")
    assert board.lines == {"conn_id": 1, "timeout_ms": 4}
    with pytest.raises(bi.UsageError) as info:
        bi.check_board_settings(board.values, {}, path="/flash/pb_settings.py",
                                lines=board.lines)
    assert str(info.value) == ("/flash/pb_settings.py on the board: line 4: timeout_ms 10 is "
                               "not an int from 200 to 3600000; fix it with --set "
                               "timeout_ms=...")
    warnings = bi.check_board_settings({"conn_id": "a", "my_led": 3, "app_mode": "x"}, {})
    assert warnings == ["pb_settings.py on the board has names pb_link does not read, kept as "
                        "they are (an application's own settings?): app_mode, my_led"]
    warnings = bi.check_board_settings({"conn_id": "a"}, {}, [(2, "import my_calib"),
                                                              (3, "x = " + "1 + " * 30 + "1")])
    assert warnings == ["pb_settings.py on the board has lines that are not NAME = literal, kept "
                        "as they are (config.py checks their values on the board): line 2: "
                        "import my_calib; line 3: " + ("x = " + "1 + " * 30)[:57] + "..."]
