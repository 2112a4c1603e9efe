"""Tests of the sensor example under faults, with the pblink pytest plugin.

Run them with ``.venv/bin/pytest examples/sensor`` from the checkout (the
pytest that sees the plugin). The plugin runs these async tests with
pytest-asyncio itself: they carry its marker, so no asyncio_mode is needed.
"""

import re

import pytest

pytestmark = pytest.mark.pblink(board_app="sensor_app.py:Sensor",
                                server_app="sensor_server.py:app")


def alarms(lines):
    return [int(m.group(1)) for m in map(re.compile(r"^alarm (\d+)$").match, lines) if m]


async def test_alarm_arrives_exactly_once_across_an_esp8266_crash(pblink_bench):
    await pblink_bench.wait_server_received(r"^alarm 2$")
    await pblink_bench.crash_esp()  # SIGKILL: no warning, lines in flight are lost with it
    await pblink_bench.wait_server_received(r"^alarm 6$")
    await pblink_bench.wait_board_output(r"^server: alarm 6 noted$")

    got = alarms(pblink_bench.server_received())
    assert got == list(range(1, len(got) + 1))  # every alarm once, in order
    assert pblink_bench.esp_boots() >= 2  # the crash happened and the ESP8266 came back
    assert pblink_bench.link_downs() >= 1  # ... and the Pyboard saw the link go down
    readings = [ln for ln in pblink_bench.server_received() if ln.startswith("reading ")]
    assert readings  # qos=False lines arrive too, but some may be lost in the crash


async def test_every_noted_alarm_reaches_the_board_once(pblink_bench):
    await pblink_bench.wait_board_output(r"^server: alarm 3 noted$")
    await pblink_bench.cut_wifi(2.0)
    await pblink_bench.wait_board_output(r"^server: alarm 6 noted$")
    noted = [ln for ln in pblink_bench.board_output() if ln.startswith("server: alarm")]
    assert noted == [f"server: alarm {n} noted" for n in range(1, len(noted) + 1)]
