"""Misconfigured devices get a diagnostic within seconds, at both ends (issue 9 part 4).

Every way a device's frames can fail to reach a server application: no server
serves its conn_id, another topic root, a server on another broker, an ACL that
drops the device's publishes. The device double follows the bridge's rules
(link_core.liveness.ServerWatch): ``stats["unanswered"]`` counts the diagnostic
the bridge sends as a reasoned ``D`` (tests/test_bridge_relay.py checks the
bridge itself, tests/test_pyboard_link.py that AppBase runs server_ok(False)).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, TEST_TIMEOUT, BrokerProcess, amqtt_process
from test_broker_mosquitto import USERS, shipped_mosquitto  # noqa: F401  (fixture)

from broker.credentials import write_amqtt_users
from pblink.cmd_tail import QuietWatch
from server_apps import s_app
from virtual_bench.device_double import DeviceDouble

T = 300  # timeout_ms: the diagnostic is due 2 x T after the broker connection
BOUND = 2 * T / 1000 + 3.0  # seconds, with slack for a loaded machine


def device(broker: BrokerProcess, conn_id: str, **kw: Any) -> DeviceDouble:
    return DeviceDouble(conn_id, broker.host, broker.port, timeout_ms=T, reconnect_min=0.1,
                        reconnect_max=0.5, connect_timeout=2.0, **kw)


@contextlib.asynccontextmanager
async def demo_server(broker: BrokerProcess, tmp_path: Path, **kw: Any) -> AsyncIterator[None]:
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(s_app.serve(broker.host, broker.port, stop=stop, ready=ready,
                                           state_dir=tmp_path, timeout_ms=T, **kw))
    await asyncio.wait_for(ready.wait(), TEST_TIMEOUT)
    try:
        yield
    finally:
        stop.set()
        await task


async def diagnosed(dev: DeviceDouble) -> None:
    """The device's 'no server answers' diagnostic came within BOUND of its connection."""
    await asyncio.wait_for(dev.wait_connected(), TEST_TIMEOUT)
    t0 = time.monotonic()
    while not dev.stats["unanswered"]:
        assert time.monotonic() - t0 < BOUND, "no diagnostic within 2 x timeout_ms"
        await asyncio.sleep(0.05)
    assert not dev.server_ok


def unserved_logs(caplog: pytest.LogCaptureFixture, conn_id: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.getMessage().startswith(f"device {conn_id} is online")]


async def test_unserved_conn_id_is_diagnosed_and_served_once_asked(
    any_broker: BrokerProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """HARDWARE.md bring-up: install with --conn-id kitchen, then pblink server (--ids 1-4)."""
    caplog.set_level(logging.WARNING, logger="pblink.server")
    async with asyncio.timeout(TEST_TIMEOUT), device(any_broker, "kitchen") as dev:
        async with demo_server(any_broker, tmp_path / "a"):  # the default ids 1 2 3 4
            await diagnosed(dev)
            await asyncio.sleep(3 * T / 1000)  # more frames: still one log line
            logs = unserved_logs(caplog, "kitchen")
            assert len(logs) == 1, logs
            assert "serve it with `pblink server --ids ... kitchen`" in logs[0]
        # As the guide now says: serve the conn_id you installed with.
        async with demo_server(any_broker, tmp_path / "b", ids=["kitchen"]):
            await asyncio.wait_for(dev.wait_server(True), BOUND)
            await dev.write('["kitchen", 1, 0]')
            assert await dev.readline() == '["kitchen", 1, 0, 1]\n'


async def test_other_root_is_diagnosed(any_broker: BrokerProcess, tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pblink.server")
    async with asyncio.timeout(TEST_TIMEOUT), device(any_broker, "1", root="site7") as dev:
        async with demo_server(any_broker, tmp_path):
            await diagnosed(dev)
            assert not unserved_logs(caplog, "1")  # the server cannot see another root


async def test_server_on_another_broker_is_diagnosed(
    amqtt_broker: BrokerProcess, mosquitto_broker: BrokerProcess, tmp_path: Path
) -> None:
    for dev_broker, srv_broker in ((amqtt_broker, mosquitto_broker),
                                   (mosquitto_broker, amqtt_broker)):
        async with asyncio.timeout(TEST_TIMEOUT), device(dev_broker, "1") as dev:
            async with demo_server(srv_broker, tmp_path / dev_broker.name):
                await diagnosed(dev)


@pytest.fixture
def amqtt_acl(tmp_path: Path) -> Iterator[BrokerProcess]:
    passwd = tmp_path / "amqtt.passwd"
    write_amqtt_users(passwd, USERS)
    broker = amqtt_process(tmp_path, extra=["--password-file", str(passwd), "--acl"])
    broker.start()
    yield broker
    broker.stop()


@pytest.mark.mosquitto
async def test_acl_dropping_the_device_is_diagnosed_mosquitto(
    shipped_mosquitto: BrokerProcess, tmp_path: Path,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """conn_id 2 with device 1's credentials: Mosquitto accepts and drops every publish."""
    caplog.set_level(logging.WARNING, logger="pblink.server")
    srv = {"username": "pblink.server", "password": USERS["pblink.server"]}
    async with asyncio.timeout(TEST_TIMEOUT), \
            device(shipped_mosquitto, "dev2", username="dev1", password=USERS["dev1"]) as dev:
        async with demo_server(shipped_mosquitto, tmp_path, ids=["dev2"], **srv):
            await diagnosed(dev)
            assert not unserved_logs(caplog, "dev2")
        # the right credentials: served
        async with device(shipped_mosquitto, "dev1", username="dev1",
                          password=USERS["dev1"]) as good:
            async with demo_server(shipped_mosquitto, tmp_path, ids=["dev1"], **srv):
                await asyncio.wait_for(good.wait_server(True), BOUND)


async def test_acl_refusing_the_device_is_diagnosed_amqtt(
    amqtt_acl: BrokerProcess, tmp_path: Path
) -> None:
    """The embedded broker with --acl refuses the CONNECT (its will is outside the subtree)."""
    async with asyncio.timeout(TEST_TIMEOUT), \
            device(amqtt_acl, "dev2", username="dev1", password=USERS["dev1"]) as dev:
        t0 = time.monotonic()
        while dev.last_refusal is None:
            assert time.monotonic() - t0 < BOUND, "no refusal"
            await asyncio.sleep(0.05)
        assert "not authori" in dev.last_refusal
        assert not dev.server_ok


def test_quiet_watch_says_so_once_per_spell() -> None:
    q = QuietWatch(10.0, now=100.0)
    assert not q.due(109.9)
    assert q.due(110.0)
    assert not q.due(200.0)  # once per quiet spell
    q.heard(201.0)
    assert not q.due(210.0)
    assert q.due(211.0)


def test_tail_says_when_it_has_seen_nothing(amqtt_broker: BrokerProcess) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pblink", "tail", "kitchen", "--host", amqtt_broker.host,
         "--port", str(amqtt_broker.port), "--timeout", "11.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=TEST_TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "nothing on pblink/kitchen/# for 10 s" in proc.stderr, proc.stderr
    assert "conn_id kitchen" in proc.stderr and proc.stderr.count("nothing on") == 1
