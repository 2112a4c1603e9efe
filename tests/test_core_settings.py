"""The settings table, link_core/schema.py: one home for every device setting.

Each reader derives from it: link_core.control (the boards' checks, the
bridge's config), pyboard/pb_link (config.py, AppBase), pblink install, the
server's timeout check, the CLI's --timeout-ms and the docs table. A bad value
gets the same one-line error in each; a row added to the table reaches each.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from test_install_virtual_board import HW_MACHINE, HW_PYB

from link_core import control, names
from link_core import schema as raw
from pblink import board_install, settings
from pblink.common import LINK_TIMEOUT_MS, CliError
from pblink.testing import TEST_SETTINGS
from server_apps import LinkServer
from virtual_bench.demo import RUN_SETTINGS
from virtual_bench.harness import BENCH_SETTINGS

TYPES = {"int", "str", "bool", "dict", "host", "id", "root", "choice"}
DEVICE_DIRS = ("esp_bridge", "link_core", "pyboard/pb_link")
CONST = re.compile(r"^_([A-Z0-9_]+) = const\((\d+)\)", re.M)

# (name, a value its row refuses): one of each kind of rule
BAD = [("timeout_ms", 10), ("timeout_ms", 3_600_001), ("port", 0), ("port", "1883"),
       ("host", "mqtt://h"), ("host", ""), ("report_s", -1), ("ssid", "s" * 33),
       ("tls", 1), ("topic_root", "a/+"), ("conn_id", "a.b"), ("bridge_tuning", [])]


def error(name: str, value: Any) -> str:
    with pytest.raises(ValueError) as info:
        settings.check_setting(name, value)
    return str(info.value)


def test_table_is_well_formed() -> None:
    assert len(raw.SETTINGS) % raw.COLUMNS == 0, (
        f"link_core/schema.py: {len(raw.SETTINGS)} cells is not a whole number of rows of "
        f"{raw.COLUMNS} (a row lacks or has an extra cell)")
    assert raw.COLUMNS == len(settings.Setting._fields) - 1, (
        "schema.COLUMNS and pblink.settings.Setting disagree on the columns")
    every = [s.name for s in settings.SETTINGS]
    assert len(set(every)) == len(every), f"a name has two rows: {sorted(every)}"
    for index, s in enumerate(settings.SETTINGS):
        assert s.type in TYPES, f"{s.name}: type {s.type!r} is not one of {sorted(TYPES)}"
        if index < raw.CONFIG_ENTRIES:
            assert s.use == "link", (f"{s.name}: row {index} is a C message entry (rows 0 to "
                                     f"{raw.CONFIG_ENTRIES - 1}) but its use is {s.use!r}")
        else:
            assert s.use in ("tuning", "bridge", "board"), (
                f"{s.name}: row {index} after the C message entries has use {s.use!r}, not "
                "'tuning', 'bridge' or 'board' (a C message entry goes before row "
                f"{raw.CONFIG_ENTRIES}: see docs/ARCHITECTURE.md 'A new setting')")
        assert len(s.help) > 10, f"{s.name}: no #: help comment above its row"
        default = {} if s.type == "dict" and s.default is None else s.default
        try:
            assert settings.check_setting(s.name, default) == default
        except ValueError as e:
            raise AssertionError(f"{s.name}: default {default!r} breaks its own row: {e}") from e
        if s.type == "int":
            assert s.low <= s.default <= s.high, (
                f"{s.name}: default {s.default} is outside low {s.low} .. high {s.high}")
        if s.type == "dict" and s.low is not None:
            assert s.low in {r.use for r in settings.SETTINGS}, (
                f"{s.name}: its keys are the rows of use {s.low!r}, but no row has that use")
    for k in range(0, len(raw.ORDERED), 2):
        low, high = raw.ORDERED[k:k + 2]
        assert low in settings.BY_NAME and high in settings.BY_NAME, (
            f"schema.ORDERED pair ({low}, {high}) names a setting the table lacks")
        assert settings.BY_NAME[low].default <= settings.BY_NAME[high].default, (
            f"schema.ORDERED: the default of {high} is below the default of {low}")
    assert settings.BY_NAME["conn_id"].high == names._CONN_ID_MAX, "conn_id: not names._CONN_ID_MAX"
    assert settings.BY_NAME["topic_root"].high == names._ROOT_MAX, "topic_root: not names._ROOT_MAX"


# (bridge_tuning, its one-line error): each key is checked by its "bridge" row
BAD_BRIDGE = [
    ({"keepalive_ms": "x"}, "keepalive_ms 'x' is not an int from 100 to 60000"),
    ({"keepalive_ms": 99}, "keepalive_ms 99 is not an int from 100 to 60000"),
    ({"mqtt_retries": True}, "mqtt_retries True is not an int from 0 to 10"),
    ({"reconnect_min_ms": 5000, "reconnect_max_ms": 4000},
     "reconnect_max_ms 4000 is below reconnect_min_ms 5000"),
    ({"reconnect_min_ms": 40000}, "reconnect_max_ms 30000 is below reconnect_min_ms 40000"),
]


@pytest.mark.parametrize(("tuning", "message"), BAD_BRIDGE)
def test_bridge_tuning_keys_are_rows_of_the_table(tuning: dict[str, Any], message: str) -> None:
    """The same one-line text from check_setting, the C message and pblink install."""
    assert error("bridge_tuning", tuning) == message
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        control.check_config(config_with("bridge_tuning", tuning))
    with pytest.raises(CliError, match=f"^{re.escape(message)}$"):
        board_install.validate_settings({"bridge_tuning": tuning}, complete=False)


def test_bridge_tuning_refuses_an_unknown_key_and_fills_the_defaults() -> None:
    message = error("bridge_tuning", {"shiny_new_key": 1})
    assert message.startswith("bridge_tuning key 'shiny_new_key' is not one of keepalive_ms, ")
    assert "\n" not in message
    full = control.group("bridge", {"keepalive_ms": 500})
    assert list(full) == list(settings.BRIDGE_KEYS)
    assert full["keepalive_ms"] == 500 and full["mqtt_retries"] == settings.BY_NAME[
        "mqtt_retries"].default
    # the tuple form (the ESP8266 bridge's): the same values, appended in the rows' order
    head: list[Any] = ["x"]
    assert control.group("bridge", {"keepalive_ms": 500}, head) is head
    assert head == ["x", *(full[k] for k in settings.BRIDGE_KEYS)]
    # the bridge keys are not names of pb_settings.py
    assert "keepalive_ms" not in settings.NAMES and "keepalive_ms" in settings.BRIDGE_KEYS
    with pytest.raises(Exception, match=r"keepalive_ms: pb_link/config\.py reads no such setting"):
        board_install.parse_set_option("keepalive_ms=500", board_install.SETTING_NAMES)


def test_lowest_timeout_is_twice_the_bridge_tick() -> None:
    tick = re.search(r"^_TICK_MS = const\((\d+)\)", (ROOT / "esp_bridge/bridge.py").read_text(),
                     re.M)
    assert tick
    assert settings.int_range("timeout_ms")[0] == 2 * int(tick.group(1))


def test_link_timing_defaults_are_the_tables() -> None:
    """The link's timing constants (link_core/i2c_tools.py: PollPolicy's and the
    scripted boards' defaults) are the schema's defaults of the same settings,
    not a second opinion."""
    from link_core import i2c_tools

    for name in ("boot_wait_ms", "idle_poll_ms", "active_poll_ms", "idle_after_ms",
                 "exchange_timeout_ms", "keepalive_timeout_ms", "sync_timeout_ms"):
        assert getattr(i2c_tools, name.upper()) == settings.BY_NAME[name].default, name


def test_device_indices_are_the_tables() -> None:
    """`_TIMEOUT_MS = const(3)` in device code is the C message index of timeout_ms,
    its row; `_COL_USE = const(5)` the column `use`. The bridge names every entry."""
    entries = settings.NAMES[:raw.CONFIG_ENTRIES]
    found: dict[str, set[str]] = {}
    for folder in DEVICE_DIRS:
        for path in sorted((ROOT / folder).glob("*.py")):
            for const_name, number in CONST.findall(path.read_text()):
                name = const_name.lower()
                where = f"{path.relative_to(ROOT)}: _{const_name} = const({number})"
                if name.startswith("col_"):
                    assert settings.Setting._fields.index(name[4:]) == int(number), where
                elif name in entries:
                    assert entries.index(name) == int(number), where
                    found.setdefault(folder, set()).add(name)
    assert found["esp_bridge"] == set(entries)
    assert "timeout_ms" in found["pyboard/pb_link"] and "report_s" in found["link_core"]


def test_bridge_names_every_tuning_value() -> None:
    """esp_bridge/bridge.py's Bridge.cfg tuple: after the config's entries and its
    four topics (from _BRIDGE_TUNING), at _TUNING the "bridge" rows' values in the
    table's order (control.group(..., out)), each named by a const."""
    consts = {n.lower(): int(v) for n, v in CONST.findall(
        (ROOT / "esp_bridge/bridge.py").read_text())}
    topics = [consts[f"t_{leaf}"] for leaf in ("up", "down", "status", "report")]
    assert topics == list(range(consts["bridge_tuning"], consts["bridge_tuning"] + 4))
    assert consts["tuning"] == topics[-1] + 1
    for i, key in enumerate(settings.BRIDGE_KEYS):
        assert consts.get(key) == consts["tuning"] + i, key


def config_with(name: str, value: Any) -> list[Any]:
    cfg: list[Any] = ["pyb1", 1883, "h", 1500, 10, "", "", "", "", "pblink", False, {}]
    cfg[settings.NAMES.index(name)] = value
    return cfg


@pytest.mark.parametrize(("name", "value"), BAD)
def test_a_bad_value_gets_one_error_on_the_host(name: str, value: Any) -> None:
    message = error(name, value)
    assert "\n" not in message and (name in message or "topic root" in message)
    with pytest.raises(ValueError) as info:  # the config message (boards, bridge)
        control.check_config(config_with(name, value))
    assert str(info.value) == message
    with pytest.raises(CliError) as cli:  # pblink install (an empty host: "is required")
        board_install.validate_settings({"conn_id": "a", "host": "h", name: value},
                                        complete=False)
    assert str(cli.value) == message
    if name in ("timeout_ms", "host", "port"):  # the server application
        with pytest.raises(ValueError) as server:
            LinkServer(**{name: value})
        assert str(server.value) == message


def test_server_applies_the_login_rule() -> None:
    with pytest.raises(ValueError) as info:
        control.check_login("", "pw")
    with pytest.raises(ValueError) as server:
        LinkServer(password="pw")
    assert str(server.value) == str(info.value) and "mqtt_user is empty" in str(info.value)


def test_timeout_option_has_the_tables_range() -> None:
    import argparse

    low, high = settings.int_range("timeout_ms")
    assert LINK_TIMEOUT_MS(str(low)) == low and LINK_TIMEOUT_MS(str(high)) == high
    for text in (str(low - 1), str(high + 1), "fast"):
        shown = text if text != "fast" else "'fast'"
        with pytest.raises(argparse.ArgumentTypeError,
                           match=f"^timeout_ms {shown} is not an int from {low} to {high}$"):
            LINK_TIMEOUT_MS(text)


BOARD_CHECKS = r"""
import json
from link_core import control
from pb_link import app_base
cases = json.loads(%r)
out = []
for name, value, cfg in cases:
    got = []
    try:
        app_base.config_message(cfg[0], cfg[1:11] + [{"bridge_tuning": cfg[11]}])
    except ValueError as e:
        got.append(str(e))
    try:
        control.decode_config(b"C" + json.dumps(cfg).encode())
    except ValueError as e:
        got.append(str(e))
    out.append(got)
try:
    app_base._tuning({"boot_wait_ms": -5})
except ValueError as e:
    out.append([str(e)])
print("RESULT", json.dumps(out))
"""


def board_tree(tmp_path: Path) -> Path:
    """link_core and pb_link with `machine`/`pyb` stand-ins, for MICROPYPATH."""
    for rel in ("link_core", "pyboard/pb_link"):
        shutil.copytree(ROOT / rel, tmp_path / Path(rel).name)
    (tmp_path / "machine.py").write_text(HW_MACHINE)
    (tmp_path / "pyb.py").write_text(HW_PYB)
    return tmp_path


def run_board(micropython_bin: str, tree: Path, code: str, cwd: Path) -> Any:
    done = subprocess.run([micropython_bin, "-c", code], capture_output=True, text=True,
                          cwd=cwd, env=dict(os.environ, MICROPYPATH=f"{tree}:.frozen"), timeout=60)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout + done.stderr
    return json.loads(lines[0][len("RESULT "):])


def test_a_bad_value_gets_the_same_error_on_the_boards(micropython_bin: str,
                                                       tmp_path: Path) -> None:
    """Under MicroPython: AppBase's config message (the Pyboard) and the bridge's decode."""
    json_safe = [(n, v) for n, v in BAD if n != "bridge_tuning"]
    cases = [(n, v, config_with(n, v)) for n, v in json_safe]
    cases.append(("bridge_tuning", [], config_with("bridge_tuning", [])))
    tree = board_tree(tmp_path / "tree")
    got = run_board(micropython_bin, tree, BOARD_CHECKS % json.dumps(cases), tmp_path)
    for (name, value, _cfg), messages in zip(cases, got, strict=False):
        assert messages == [error(name, value)] * 2, (name, value, messages)
    assert got[-1] == [error("boot_wait_ms", -5)]


def test_bench_settings_obey_the_table() -> None:
    """The bench's and the test kit's pb_settings: known names, valid values."""
    for table in (BENCH_SETTINGS, TEST_SETTINGS, RUN_SETTINGS):
        for name, value in table.items():  # bridge_tuning: each key by its row
            assert name in settings.NAMES, f"{name}: not a name of pb_settings.py"
            assert settings.check_setting(name, value) == value


def test_docs_table_is_the_tables() -> None:
    text = (ROOT / "docs/PYBOARD.md").read_text()
    start = "<!-- settings table: python -m pblink.settings -->\n"
    table = text[text.index(start) + len(start):text.index("<!-- end of settings table -->")]
    assert table == settings.markdown_table(), "regenerate: python -m pblink.settings"
    printed = subprocess.run([sys.executable, "-m", "pblink.settings"], capture_output=True,
                             text=True, check=True, cwd=ROOT).stdout
    assert printed == table
    low, high = settings.int_range("timeout_ms")
    assert f"timeout_ms {low}–{high:,}" in (ROOT / "docs/PROTOCOL.md").read_text()


NEW_ROW = '''    #: a setting that only this test adds
    "test_new_ms", "int", 7, 1, 99, "tuning",
)
'''

HOST_CHECKS = r"""
import json
from pblink import board_install, settings
from pblink.common import CliError
out = {"names": "test_new_ms" in settings.NAMES,
       "install": "test_new_ms" in board_install.SETTING_NAMES,
       "set": board_install.parse_set_option("test_new_ms=5", board_install.SETTING_NAMES),
       "docs": [ln for ln in settings.markdown_table().splitlines() if "test_new_ms" in ln]}
try:
    board_install.validate_settings({"conn_id": "a", "host": "h", "test_new_ms": 100})
except CliError as e:
    out["refused"] = str(e)
print("RESULT", json.dumps(out))
"""

PYBOARD_CHECKS = r"""
import json
from pb_link import app_base, config
print("RESULT", json.dumps([config.config[10], app_base._tuning({})["test_new_ms"]]))
"""


def test_a_new_row_reaches_every_reader(micropython_bin: str, tmp_path: Path) -> None:
    """One row added to a copy of link_core/schema.py, nothing else changed."""
    tree = board_tree(tmp_path / "tree")
    schema = tree / "link_core" / "schema.py"
    text = schema.read_text()
    assert text.endswith(")\n")
    schema.write_text(text[:-2] + NEW_ROW)
    done = subprocess.run([sys.executable, "-c", HOST_CHECKS], capture_output=True, text=True,
                          cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)), timeout=60)
    assert done.returncode == 0, done.stderr
    host = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert host["names"] and host["install"] and host["set"] == ["test_new_ms", 5]
    assert host["docs"] == ["| `test_new_ms` | int | `7` | 1 to 99 | `config[10]` | "
                            "a setting that only this test adds |"]
    assert host["refused"] == "test_new_ms 100 is not an int from 1 to 99"
    board = tmp_path / "board"  # the board's filesystem: pb_settings.py sets the new name
    board.mkdir()
    (board / "pb_settings.py").write_text("test_new_ms = 5\n")
    assert run_board(micropython_bin, tree, PYBOARD_CHECKS, board) == [{"test_new_ms": 5}, 7]


@pytest.mark.parametrize(("line", "message"), [
    ("i2c_mode = 'foo'", "pb_settings.py: i2c_mode 'foo' is not one of target, pyb"),
    ("verbose = 1", "pb_settings.py: verbose 1 is not a bool (True or False)"),
    ("timeout_ms = 199", "pb_settings.py: timeout_ms 199 is not an int from 200 to 3600000"),
    ("rx_queue = -1", "pb_settings.py: rx_queue -1 is not an int from 0 to 1024"),
])
def test_config_py_checks_a_hand_edited_pb_settings(micropython_bin: str, tmp_path: Path,
                                                     line: str, message: str) -> None:
    """Every value config.py reads, board-only ones too, is checked when it is read."""
    tree = board_tree(tmp_path / "tree")
    board = tmp_path / "board"
    board.mkdir()
    (board / "pb_settings.py").write_text(f"conn_id = 'b1'\n{line}\n")
    code = ("import json\ntry:\n    from pb_link import config\n    out = 'accepted'\n"
            "except ValueError as e:\n    out = str(e)\nprint('RESULT', json.dumps(out))\n")
    assert run_board(micropython_bin, tree, code, board) == message


def test_an_ipv6_host_with_an_ipv4_tail_is_accepted_everywhere(micropython_bin: str,
                                                                tmp_path: Path) -> None:
    """Review 2 finding 6: ::ffff:127.0.0.1 is an IPv6 address (the board's check too)."""
    good = ["::ffff:127.0.0.1", "::ffff:192.168.1.20", "fe80::1", "::1"]
    bad = ["h:1883", "1.2.3.4:1883", "mqtt://h"]
    for host in good:
        assert settings.check_setting("host", host) == host
    for host in bad:
        assert "is not a host name or IP address" in error("host", host)
    tree = board_tree(tmp_path / "tree")
    code = ("import json\nfrom link_core import control\nout = []\n"
            f"for h in {good + bad!r}:\n"
            "    try:\n        out.append(control.check_setting('host', h))\n"
            "    except ValueError as e:\n        out.append(str(e))\n"
            "print('RESULT', json.dumps(out))\n")
    got = run_board(micropython_bin, tree, code, tmp_path)
    assert got[:len(good)] == good
    assert got[len(good):] == [error("host", h) for h in bad]
