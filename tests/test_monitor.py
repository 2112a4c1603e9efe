"""`pblink monitor`: the fleet's judgements without sockets (pblink/monitor_state.py),
the web routes over real HTTP (pblink/monitor_web.py), and the page in a real
headless chromium driven by Playwright while a bench device loses its WiFi."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import IN_CI, ROOT, amqtt_process, free_port, require_tool

from pblink.monitor_state import Fleet

T = 1000.0  # an arbitrary clock origin, seconds


def test_fleet_judges_online_from_status_and_traffic() -> None:
    f = Fleet("site/pblink", timeout_ms=1000)
    assert f.subscriptions() == ["site/pblink/+/up", "site/pblink/+/down",
                                 "site/pblink/+/status", "site/pblink/+/report"]
    assert f.on_message("site/pblink/1/status", b"online", T) == "1"
    row = f.devices["1"]
    assert row.online and row.since == T and row.why == "status online"
    # silence: offline after 2 x timeout without a frame on up
    assert f.tick(T + 1.9) == []
    assert f.tick(T + 2.1) == ["1"] and not row.online and row.since == T + 2.1
    assert f.tick(T + 5) == []  # judged once
    f.on_message("site/pblink/1/up", b"h", T + 6)
    assert row.online and row.since == T + 6 and row.why == "traffic on up"
    f.on_message("site/pblink/1/status", b"offline", T + 6.5)
    assert not row.online and row.since == T + 6.5


def test_fleet_counts_lines_acks_repeats_and_server_reachability() -> None:
    f = Fleet(timeout_ms=1500)
    f.on_message("pblink/dev-2/up", b"q|3fa2c901|1|1|first", T)
    f.on_message("pblink/dev-2/up", b"q|3fa2c901|1|1|first", T + 0.5)  # retransmission
    f.on_message("pblink/dev-2/up", b"u|3fa2c901|loose", T + 0.6)
    f.on_message("pblink/dev-2/down", b"a|3fa2c901|1", T + 0.7)
    f.on_message("pblink/dev-2/down", b"q|0badf00d|4|4|reply|with|bars", T + 0.8)
    f.on_message("pblink/dev-2/up", b"q|3FA2C901|1|1|bad session", T + 0.9)  # malformed
    f.on_message("pblink/dev-2/other", b"q|3fa2c901|2|2|not a leaf", T + 0.9)
    f.on_message("elsewhere/1/up", b"h", T + 0.9)
    assert list(f.devices) == ["dev-2"]
    row = f.snapshot(T + 1)[0]
    assert row["up_last_line"] == "loose" and row["up_lines"] == 2 and row["up_repeats"] == 1
    assert row["down_last_line"] == "reply|with|bars"
    # the ack on down acknowledges an up line (the server app's); none for down lines yet
    assert row["up_acked"] == 1 and row["down_acked"] == 0
    f.on_message("pblink/dev-2/up", b"a|0badf00d|4", T + 0.95)  # the device acks the reply
    assert f.snapshot(T + 1)[0]["down_acked"] == 1 and f.snapshot(T + 1)[0]["up_acked"] == 1
    assert row["up_rate"] == pytest.approx(0.2) and row["malformed"] == 1
    assert row["server_reachable"] is True and row["online"]
    # nothing on down for 1.5 s while the device is online: unreachable
    assert f.snapshot(T + 0.8 + 1.6)[0]["server_reachable"] is False
    f.on_message("pblink/dev-2/status", b"offline", T + 2.5)
    # the device offline: nothing can be told about its server app
    assert f.snapshot(T + 2.6)[0]["server_reachable"] is None
    assert f.snapshot(T + 11)[0]["up_rate"] == 0.0  # out of the 10 s window
    assert row["report"] is None  # none published yet
    f.on_message("pblink/dev-2/report", b"[3,17,21504]", T + 2)
    f.on_message("pblink/dev-2/report", b"[3,-1,0]", T + 3)  # malformed: kept the last good
    row = f.snapshot(T + 3)[0]
    assert row["report"] == [3, 17, 21504] and row["report_t"] == T + 2 and row["malformed"] == 2
    assert json.dumps(f.snapshot(T))  # JSON-ready


def test_tools_client_ids_can_never_be_a_devices() -> None:
    """The devices connect as pblink-<conn_id> (PROTOCOL.md 4.2); a tool with such an id
    would take over a device's session. A conn_id has no '.', the tools' ids do."""
    from link_core.names import client_id
    from pblink.common import random_client_id

    for tool in ("monitor", "tail", "send", "probe"):
        cid = random_client_id(tool)
        assert cid.startswith(f"pblink.{tool}-")
        assert not cid.startswith(client_id("x")[:-1])  # not in the devices' "pblink-"
    sources = "".join(p.read_text() for p in (ROOT / "pblink").glob("*.py"))
    assert not re.search(r"random_client_id\(\"pblink", sources)


def test_fleet_sorts_numeric_conn_ids_numerically() -> None:
    f = Fleet()
    for c in ("10", "b", "2", "a"):
        f.on_message(f"pblink/{c}/status", b"online", T)
    assert [r["conn_id"] for r in f.snapshot(T)] == ["2", "10", "a", "b"]


async def test_web_routes_serve_the_page_the_json_and_events() -> None:
    import aiohttp
    from aiohttp import web

    from pblink.monitor_web import MonitorHub, make_app

    clock = [T]
    hub = MonitorHub(Fleet(), clock=lambda: clock[0], title="t <1>")
    runner = web.AppRunner(make_app(hub))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/") as r:
                page = await r.text()
                assert r.status == 200 and "t &lt;1&gt;" in page and 'EventSource("events")' in page
                assert "http://" not in page and "https://" not in page  # nothing from elsewhere
            hub.message("pblink/1/up", b"q|3fa2c901|1|1|hello")
            async with http.get(f"http://127.0.0.1:{port}/api/devices") as r:
                snap = await r.json()
                assert snap["devices"][0]["up_last_line"] == "hello"
            async with http.get(f"http://127.0.0.1:{port}/events") as r:
                assert r.headers["Content-Type"] == "text/event-stream"
                first = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
                assert first.startswith(b"event: devices\ndata: ")
                hub.message("pblink/2/status", b"online")  # a change is pushed at once
                second = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
                ids = [d["conn_id"] for d in json.loads(second.split(b"data: ", 1)[1])["devices"]]
                assert ids == ["1", "2"]
    finally:
        await runner.cleanup()


def test_monitor_listens_on_ipv6_in_brackets(tmp_path: Path) -> None:
    """--listen '[::1]:0': the brackets are the address's, not the host's; the banner's URL
    has them back (a browser needs them)."""
    import socket
    import urllib.request

    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    broker = amqtt_process(tmp_path)
    broker.start()
    mon = subprocess.Popen([sys.executable, "-m", "pblink", "monitor", "--broker",
                            f"127.0.0.1:{broker.port}", "--listen", "[::1]:0"], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert mon.stdout is not None
        banner = mon.stdout.readline()
        m = re.search(r"http://\[::1\]:(\d+)/", banner)
        assert m, (banner, mon.stderr.read() if mon.poll() is not None else "")
        with urllib.request.urlopen(f"http://[::1]:{m.group(1)}/api/devices", timeout=10) as r:
            assert json.load(r)["devices"] == []
    finally:
        mon.terminate()
        mon.wait(10)
        broker.stop()


def test_monitor_cli_errors_are_one_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    r = subprocess.run([sys.executable, "-m", "pblink", "monitor", "--port", str(port),
                        "--connect-timeout", "2"], capture_output=True, text=True, cwd=ROOT,
                       timeout=60)
    assert r.returncode == 3, r.stderr
    assert r.stderr.strip().count("\n") == 0 and f"127.0.0.1:{port}" in r.stderr.replace(
        "localhost", "127.0.0.1")
    r = subprocess.run([sys.executable, "-m", "pblink", "monitor", "--listen", "nohost"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "HOST:PORT" in r.stderr


def test_monitor_only_subscribes_and_never_publishes(tmp_path: Path) -> None:
    """Against a Mosquitto that logs every packet: the monitor subscribes, sees a
    device's frames (so it did receive them), and publishes nothing, no ack."""
    import time
    import urllib.request

    import paho.mqtt.client as paho
    from conftest import mosquitto_process

    broker = mosquitto_process(tmp_path, conf_lines=["log_dest stdout", "log_type all"])
    broker.start()
    http_port = free_port()
    mon = subprocess.Popen([sys.executable, "-m", "pblink", "monitor", "--port", str(broker.port),
                            "--listen", f"127.0.0.1:{http_port}"], cwd=ROOT,
                           stdout=subprocess.PIPE, text=True)
    device = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="pblink-5")
    try:
        assert mon.stdout is not None and "pblink monitor: http://" in mon.stdout.readline()
        device.connect("127.0.0.1", broker.port)
        device.loop_start()
        device.publish("pblink/5/status", b"online", qos=1, retain=True).wait_for_publish(5)
        device.publish("pblink/5/up", b"q|3fa2c901|1|1|watch me", qos=1).wait_for_publish(5)
        url = f"http://127.0.0.1:{http_port}/api/devices"
        deadline = time.monotonic() + 15
        seen: list = []
        while time.monotonic() < deadline and not seen:
            with urllib.request.urlopen(url, timeout=5) as r:
                seen = [d for d in json.load(r)["devices"] if d["up_last_line"] == "watch me"]
            time.sleep(0.1)
        assert seen, "the monitor never showed the device's line"
    finally:
        device.loop_stop()
        device.disconnect()
        mon.terminate()
        mon.wait(10)
        broker.stop()
    log = broker.log()
    assert "Received SUBSCRIBE from pblink.monitor-" in log
    assert "Received PUBLISH from pblink-5" in log  # the log does show publishes
    assert "Received PUBLISH from pblink.monitor-" not in log


def _chromium() -> str:
    path = require_tool("chromium")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("CI requires playwright (pip, from pyproject's test extras)")
        pytest.skip("playwright is not installed (pip install playwright)")
    return path


@pytest.mark.slow
async def test_status_page_in_chromium_follows_a_wifi_cut(tmp_path: Path) -> None:
    """A bench device with the demo server app; the page, in headless chromium, shows
    it online with its server reachable, its lines and its report; its WiFi is cut: the row goes
    offline; WiFi back: online again. The page only updates through its events."""
    chromium = _chromium()
    from playwright.async_api import async_playwright

    from virtual_bench.demo import DEMO_SETTINGS
    from virtual_bench.harness import Lab

    settings = dict(DEMO_SETTINGS, demo_period_ms=300, timeout_ms=1500, topic_root="pblink",
                    report_s=1)
    lab = Lab(devices=1, workdir=tmp_path / "lab", settings=settings,
              server_args=["--ids", "1", "--timeout-ms", "1500", "--root", "pblink",
                           "--client-id", "pblink.server-test", "--state-dir", "state"])
    await lab.start()
    monitor = None
    try:
        host, port = lab.broker_address
        http_port = free_port()
        monitor = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pblink", "monitor", "--host", host, "--port", str(port),
            "--listen", f"127.0.0.1:{http_port}", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        assert monitor.stdout is not None
        banner = (await asyncio.wait_for(monitor.stdout.readline(), 30)).decode()
        assert f"http://127.0.0.1:{http_port}/" in banner, banner
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, headless=True,
                                               args=["--no-sandbox"])
            page = await browser.new_page()
            await page.goto(f"http://127.0.0.1:{http_port}/")
            row = '#dev-1[data-online="true"][data-server="true"]'
            await page.wait_for_selector(row, timeout=60_000)
            # the demo's lines flow both ways: [conn_id, tx, rx] up, [.., server_count] down
            await page.wait_for_function(
                "document.querySelector('#dev-1 td.line.up').textContent.startsWith('[\"1\"')",
                timeout=30_000)
            assert "online" in await page.inner_text("#dev-1 td.state")
            # the bridge's R report, from its retained report topic
            await page.wait_for_function(
                "document.querySelector('#dev-1 td.report').textContent.includes('mem_free')",
                timeout=30_000)
            await page.screenshot(path=str(tmp_path / "online.png"))
            await lab.benches[0].cut_wifi(None)
            await page.wait_for_selector('#dev-1[data-online="false"]', timeout=20_000)
            assert "offline" in await page.inner_text("#dev-1 td.state")
            await page.screenshot(path=str(tmp_path / "offline.png"))
            await lab.benches[0].restore_wifi()
            await page.wait_for_selector(row, timeout=60_000)
            await browser.close()
    finally:
        if monitor is not None and monitor.returncode is None:
            monitor.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(monitor.wait(), 10)
        await lab.stop()
    assert monitor.returncode == 0  # a clean stop on SIGTERM
