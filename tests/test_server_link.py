"""server_apps.LinkServer against real brokers, with virtual_bench.device_double as the device.

Every test runs with short link timeouts (T ms) and a deadline of TEST_TIMEOUT;
most run once per broker (any_broker: embedded amqtt and Mosquitto).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    TEST_TIMEOUT,
    BrokerProcess,
    MqttProbe,
    amqtt_process,
    free_port,
    mosquitto_process,
    require_tool,
)

from server_apps import (
    BrokerUnreachableError,
    LinkAuthError,
    LinkClosedError,
    LinkServer,
    MQTTv5,
)
from server_apps.state import ServerState, StateStore
from virtual_bench.device_double import DeviceDouble

T = 300  # timeout_ms on both ends


def server_for(broker: BrokerProcess, **kw: Any) -> LinkServer:
    kw.setdefault("timeout_ms", T)
    kw.setdefault("connect_timeout", 5.0)
    return LinkServer(broker.host, broker.port, **kw)


def device_for(broker: BrokerProcess, conn_id: str = "1", **kw: Any) -> DeviceDouble:
    kw.setdefault("timeout_ms", T)
    kw.setdefault("reconnect_min", 0.1)
    kw.setdefault("reconnect_max", 0.5)
    kw.setdefault("connect_timeout", 2.0)
    return DeviceDouble(conn_id, broker.host, broker.port, **kw)


async def collect(read: Callable[[], Awaitable[str]], n: int, into: list[str]) -> list[str]:
    while len(into) < n:
        into.append(await read())
    return into


async def produce(
    write: Callable[..., Awaitable[None]], lines: list[str], wait: bool = False
) -> None:
    for line in lines:
        await write(line, wait=wait)


async def until(pred: Callable[[], bool], what: str) -> None:
    """Poll ``pred`` every 10 ms for up to TEST_TIMEOUT seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TEST_TIMEOUT
    while True:
        if pred():
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def lines(prefix: str, n: int, start: int = 0) -> list[str]:
    return [f"[{prefix!r}, {i}]" for i in range(start, start + n)]


def nl(items: list[str]) -> list[str]:
    return [x + "\n" for x in items]


# -- the basics ------------------------------------------------------------------


async def test_lines_both_ways_qos_and_wait(any_broker: BrokerProcess) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), server_for(any_broker) as server:
        conn = await server.connection("1")
        async with device_for(any_broker) as dev:
            await dev.wait_server()
            await conn.wait_online()
            # qos=True, wait=True: one at a time, each acknowledged before the next starts
            for line in lines("up", 10):
                await dev.write(line)
            assert [await conn.readline() for _ in range(10)] == nl(lines("up", 10))
            for line in lines("down", 10):
                await conn.write(line + "\n")  # one trailing newline is allowed
            assert [await dev.readline() for _ in range(10)] == nl(lines("down", 10))
            # wait=False pipelines up to the window; order and exactly-once still hold
            got: list[str] = []
            await asyncio.gather(
                produce(conn.write, lines("pipe", 60)), collect(dev.readline, 60, got)
            )
            assert got == nl(lines("pipe", 60))
            got = []
            await asyncio.gather(
                produce(dev.write, lines("pipe-up", 60)), collect(conn.readline, 60, got)
            )
            assert got == nl(lines("pipe-up", 60))
            await conn.drain()
            assert conn.in_flight == 0
            # '|', UTF-8 and a MAX_LINE line travel unchanged; qos=False too
            odd = ["a|b||c", "ünïcödé € 🙂", "x" * 1024, ""]
            for line in odd:
                await conn.write(line)
                await dev.write(line)
            assert [await dev.readline() for _ in odd] == nl(odd)
            assert [await conn.readline() for _ in odd] == nl(odd)
            await conn.write("unreliable down", qos=False)
            await dev.write("unreliable up", qos=False)
            assert await dev.readline() == "unreliable down\n"
            assert await conn.readline() == "unreliable up\n"
            assert server.stats["malformed"] == 0


async def test_async_for_and_close(amqtt_broker: BrokerProcess) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        server = server_for(amqtt_broker)
        async with server:
            conn = await server.connection("1")
            async with device_for(amqtt_broker) as dev:
                for line in ("a", "b", "c"):
                    await dev.write(line)
                got = []
                async for line in conn:
                    got.append(line)
                    if len(got) == 3:
                        break
                assert got == ["a\n", "b\n", "c\n"]
                reader = asyncio.create_task(conn.readline())
                await asyncio.sleep(0.05)
        with pytest.raises(LinkClosedError):
            await reader
        with pytest.raises(LinkClosedError):
            await conn.write("after close")
        assert [line async for line in conn] == []
        await server.close()  # idempotent


# -- outages -----------------------------------------------------------------------


@pytest.mark.parametrize("silent", [False, True], ids=["socket-closed", "silent"])
async def test_device_offline_then_back(any_broker: BrokerProcess, silent: bool) -> None:
    """A WiFi outage mid-stream both ways: writes pause, nothing is lost or duplicated."""
    n = 40
    async with asyncio.timeout(TEST_TIMEOUT), server_for(any_broker) as server:
        conn = await server.connection("1")
        async with device_for(any_broker) as dev:
            await dev.wait_server()
            up: list[str] = []
            down: list[str] = []
            tasks = [
                asyncio.create_task(produce(dev.write, lines("up", n))),
                asyncio.create_task(produce(conn.write, lines("down", n))),
                asyncio.create_task(collect(conn.readline, n, up)),
                asyncio.create_task(collect(dev.readline, n, down)),
            ]
            await until(lambda: len(up) >= 10 and len(down) >= 10, "10 lines each way")
            await dev.go_offline(silent=silent)
            # The will (socket closed) or 2 x timeout_ms of silence (silent; amqtt never
            # sends the will for a silent client) tells the server.
            await asyncio.wait_for(conn.wait_offline(), 4 * T / 1000 + 1)
            paused_up, paused_down = len(up), len(down)
            await asyncio.sleep(3 * T / 1000)
            assert len(down) == paused_down  # nothing reaches an offline device
            assert len(up) <= paused_up + 16  # at most what was already on its way
            assert not dev.server_ok
            await dev.go_online()
            await asyncio.gather(*tasks)
            assert up == nl(lines("up", n))
            assert down == nl(lines("down", n))
            # Both ends see each other again (waited for: on a loaded machine a
            # 2 x timeout_ms gap in heartbeats may flip the view for a moment).
            await until(lambda: conn.online and dev.server_ok, "both ends online again")


def stop_broker(broker: BrokerProcess) -> None:
    """Mosquitto: a clean stop. amqtt: killed (its SIGTERM shutdown can hang until
    BrokerProcess.stop() kills it after 10 s, when QoS 1 messages are in flight or a
    client connects while it stops)."""
    if broker.name == "amqtt" and broker.proc is not None:
        broker.proc.kill()
        broker.proc.wait()
        broker.proc = None
    else:
        broker.stop()


def restart_broker(broker: BrokerProcess) -> None:
    stop_broker(broker)
    broker.start()


async def test_broker_restart_mid_stream(any_broker: BrokerProcess) -> None:
    n = 60
    async with asyncio.timeout(TEST_TIMEOUT), server_for(any_broker) as server:
        conn = await server.connection("1")
        async with device_for(any_broker) as dev:
            await dev.wait_server()
            up: list[str] = []
            down: list[str] = []
            tasks = [
                asyncio.create_task(produce(dev.write, lines("up", n))),
                asyncio.create_task(produce(conn.write, lines("down", n))),
                asyncio.create_task(collect(conn.readline, n, up)),
                asyncio.create_task(collect(dev.readline, n, down)),
            ]
            await until(lambda: len(up) >= 15 and len(down) >= 15, "15 lines each way")
            await asyncio.to_thread(restart_broker, any_broker)
            await asyncio.gather(*tasks)
            assert up == nl(lines("up", n))
            assert down == nl(lines("down", n))
            assert server.connected and dev.mqtt_connected
            assert dev.stats["connects"] >= 2


async def test_writes_pause_while_broker_is_down(amqtt_broker: BrokerProcess) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), server_for(amqtt_broker) as server:
        conn = await server.connection("1")
        async with device_for(amqtt_broker) as dev:
            await dev.wait_server()
            await asyncio.to_thread(stop_broker, amqtt_broker)
            # A reconnect attempt may race the broker's shutdown: wait until both
            # the broker link and the device are seen down.
            await until(lambda: not server.connected and not conn.online, "the server to notice")
            write = asyncio.create_task(conn.write("while down"))
            await asyncio.sleep(0.3)
            assert not write.done() and conn.in_flight == 0  # paused, not queued in paho
            await asyncio.to_thread(amqtt_broker.start)
            await write
            assert await dev.readline() == "while down\n"


# -- the server application restarts ---------------------------------------------------


async def test_server_restart_via_state_file(any_broker: BrokerProcess, tmp_path: Path) -> None:
    """Clean stop and start mid-stream both ways: every line exactly once, in order."""
    n = 60
    state = tmp_path / "server-state.json"
    async with asyncio.timeout(TEST_TIMEOUT), device_for(any_broker) as dev:
        up: list[str] = []
        down: list[str] = []
        dev_tasks = [
            asyncio.create_task(produce(dev.write, lines("up", n))),
            asyncio.create_task(collect(dev.readline, n, down)),
        ]
        async with server_for(any_broker, state_path=state) as server:
            conn = await server.connection("1")
            reading = asyncio.create_task(collect(conn.readline, 20, up))
            await produce(conn.write, lines("down", 30))  # some of these stay unacked
            await reading
            first_session = conn.session
        assert state.exists()
        assert '"clean":true' in state.read_text()
        await until(lambda: not dev.server_ok, "the device to see the server gone")
        async with server_for(any_broker, state_path=state) as server:
            assert '"clean":false' in state.read_text()
            conn = await server.connection("1")
            assert conn.session == first_session  # the sender session continues
            await asyncio.gather(
                produce(conn.write, lines("down", n - 30, start=30)),
                collect(conn.readline, n, up),
                *dev_tasks,
            )
            assert up == nl(lines("up", n))
            assert down == nl(lines("down", n))
            await conn.drain()


async def test_server_crash_keeps_receive_state(
    any_broker: BrokerProcess, tmp_path: Path
) -> None:
    """abort() (no final write) mid-stream: acknowledged lines are neither lost nor repeated."""
    n = 50
    state = tmp_path / "server-state.json"
    async with asyncio.timeout(TEST_TIMEOUT), device_for(any_broker) as dev:
        down: list[str] = []
        up: list[str] = []
        dev_tasks = [
            asyncio.create_task(produce(dev.write, lines("up", n))),
            asyncio.create_task(collect(dev.readline, 20, down)),
        ]
        server = server_for(any_broker, state_path=state)
        await server.start()
        conn = await server.connection("1")
        await produce(conn.write, lines("down", 10))
        await collect(conn.readline, 20, up)
        await conn.drain()
        await asyncio.sleep(0.1)  # the read of line 20 reaches the disk
        first_session = conn.session
        await server.abort()
        assert '"clean":false' in state.read_text()
        async with server_for(any_broker, state_path=state) as server:
            conn = await server.connection("1")
            assert conn.session != first_session  # after a crash: a new sender session
            await asyncio.gather(
                produce(conn.write, lines("down", 10, start=10)),
                collect(conn.readline, n, up),
                *dev_tasks,
            )
            assert up == nl(lines("up", n))
            assert down == nl(lines("down", 20))


async def test_a_batch_takes_only_the_conn_ids_that_changed(
    amqtt_broker: BrokerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group commit takes anew, and names to the store (``Store.save(state,
    changed)``), only the conn_ids with something new: an idle device costs a
    busy one's batches nothing; a clean exit takes every claimed one."""
    saves: list[tuple[bool, set[str]]] = []
    save = StateStore.save

    def recording_save(store: StateStore, state: ServerState, changed: Collection[str]) -> None:
        saves.append((state.clean, set(changed)))
        save(store, state, changed)

    monkeypatch.setattr(StateStore, "save", recording_save)
    path = tmp_path / "server-state.json"
    async with asyncio.timeout(TEST_TIMEOUT):
        async with server_for(amqtt_broker, state_path=path, fsync=False) as server:
            busy = await server.connection("1")
            await server.connection("2")
            # the start marks the file dirty; each claim writes its own entry
            assert saves == [(False, set()), (False, {"1"}), (False, {"2"})]
            del saves[:]
            async with device_for(amqtt_broker, "1") as dev:
                await dev.wait_server()
                for line in lines("up", 5):
                    await dev.write(line)
                assert [await busy.readline() for _ in range(5)] == nl(lines("up", 5))
            await until(lambda: len(saves) > 0, "a batch")
            assert {frozenset(changed) for _, changed in saves} == {frozenset({"1"})}, saves
        assert saves[-1] == (True, {"1", "2"})
    doc = json.loads(path.read_text())
    assert set(doc["conns"]) == {"1", "2"} and "tx" in doc["conns"]["2"]
    assert doc["conns"]["1"]["rx"]["sessions"][0][1] == 6  # ids 1 to 5 received: 6 is next


# -- several devices, names and lines ---------------------------------------------------


async def test_two_devices_on_one_server(any_broker: BrokerProcess) -> None:
    n = 30
    ids = ("1", "dev_B-2")
    async with asyncio.timeout(TEST_TIMEOUT), server_for(any_broker) as server:
        conns = [await server.connection(i) for i in ids]
        async with device_for(any_broker, ids[0]) as d1, device_for(any_broker, ids[1]) as d2:
            devs = (d1, d2)
            results: dict[str, list[str]] = {}
            jobs = []
            for conn_id, conn, dev in zip(ids, conns, devs, strict=True):
                results[f"up-{conn_id}"] = []
                results[f"down-{conn_id}"] = []
                jobs += [
                    produce(dev.write, lines(f"up-{conn_id}", n)),
                    produce(conn.write, lines(f"down-{conn_id}", n)),
                    collect(conn.readline, n, results[f"up-{conn_id}"]),
                    collect(dev.readline, n, results[f"down-{conn_id}"]),
                ]
            await asyncio.gather(*jobs)
            for key, got in results.items():
                assert got == nl(lines(key, n)), key
            assert await server.connection("1") is conns[0]
            assert set(server.connections) == set(ids)


BAD_IDS = ["", "a/b", "+", "#", "a.b", "a b", "é", "x" * 65, "nul\0", "new\nline", 7]


async def test_invalid_conn_id_refused(amqtt_broker: BrokerProcess) -> None:
    async with server_for(amqtt_broker) as server:
        for bad in BAD_IDS:
            with pytest.raises(ValueError, match="conn_id") as info:
                await server.connection(bad)  # type: ignore[arg-type]
            message = str(info.value)
            assert repr(bad)[:12] in message, message  # names the conn_id ...
            assert "A-Z a-z 0-9 _ -" in message  # ... and the rule
            with pytest.raises(ValueError, match="conn_id"):
                DeviceDouble(bad, amqtt_broker.host, amqtt_broker.port)  # type: ignore[arg-type]
        assert server.connections == {}
        for good in ("1", "A-z_09", "x" * 64):
            assert (await server.connection(good)).conn_id == good


async def test_bad_lines_refused_before_sending(amqtt_broker: BrokerProcess) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), server_for(amqtt_broker) as server:
        conn = await server.connection("1")
        async with device_for(amqtt_broker) as dev:
            await dev.wait_server()
            bad: list[tuple[str | bytes, str]] = [
                ("two\nlines", "newline"),
                ("trailing\n\n", "newline"),
                ("x" * 1025, "MAX_LINE"),
                ("€" * 342, "MAX_LINE"),  # 1026 bytes UTF-8
                (b"\xff\xfe", "UTF-8"),
                ("lone \ud800 surrogate", "UTF-8"),
            ]
            for line, why in bad:
                for qos in (True, False):
                    with pytest.raises(ValueError, match=why):
                        await conn.write(line, qos=qos)
                    with pytest.raises(ValueError, match=why):
                        await dev.write(line, qos=qos)
            assert conn.in_flight == 0 and dev.in_flight == 0
            await conn.write(b"fine bytes\n")
            await dev.write("fine str")
            assert await dev.readline() == "fine bytes\n"  # nothing bad arrived before it
            assert await conn.readline() == "fine str\n"
            assert conn.stats["tx_qos"] == 1 and not conn.stats.get("tx_unreliable")


# -- connection errors -------------------------------------------------------------------


async def test_unreachable_broker_is_a_clear_error() -> None:
    port = free_port()
    server = LinkServer("127.0.0.1", port, connect_timeout=2.0)
    with pytest.raises(BrokerUnreachableError, match=f"127.0.0.1:{port}") as info:
        await server.__aenter__()
    assert isinstance(info.value, ConnectionError)
    with pytest.raises(LinkClosedError):
        await server.connection("1")


@pytest.fixture
def mosquitto_with_passwords(tmp_path: Path) -> Any:
    require_tool("mosquitto_passwd")
    # Mosquitto started as root drops to the mosquitto user: it must read these files.
    folder = Path(tempfile.mkdtemp(prefix="pblink-server-test-"))
    os.chmod(folder, 0o755)
    passwd = folder / "passwd"
    import subprocess

    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwd), "srv", "right-pw"], check=True
    )
    os.chmod(passwd, 0o644)
    broker = mosquitto_process(
        folder, conf_lines=[f"password_file {passwd}", "allow_anonymous false"]
    )
    os.chmod(folder / "mosquitto-test.conf", 0o644)
    broker.start()
    yield broker
    broker.stop()
    shutil.rmtree(folder, ignore_errors=True)


async def test_wrong_password_mosquitto(mosquitto_with_passwords: BrokerProcess) -> None:
    broker = mosquitto_with_passwords
    where = f"{broker.host}:{broker.port}"
    for user, password in (("srv", "wrong-pw"), ("nobody", "x"), (None, None)):
        server = server_for(broker, username=user, password=password)
        with pytest.raises(LinkAuthError, match=where) as info:
            await server.__aenter__()
        message = str(info.value)
        assert "not authori" in message or "bad user name or password" in message
        assert isinstance(info.value, ConnectionError)
    async with server_for(broker, username="srv", password="right-pw") as server:
        assert server.connected


async def test_wrong_password_amqtt(tmp_path: Path) -> None:
    from broker.credentials import write_amqtt_users

    passwd = tmp_path / "amqtt-passwd"
    write_amqtt_users(passwd, {"srv": "right-pw"})
    broker = amqtt_process(tmp_path, extra=["--password-file", str(passwd)])
    broker.start()
    try:
        with pytest.raises(LinkAuthError, match=f"{broker.host}:{broker.port}"):
            await server_for(broker, username="srv", password="wrong").__aenter__()
        async with server_for(broker, username="srv", password="right-pw") as server:
            assert server.connected
    finally:
        broker.stop()


async def test_mqtt5_session(mosquitto_broker: BrokerProcess) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), server_for(
        mosquitto_broker, protocol=MQTTv5
    ) as server:
        conn = await server.connection("1")
        async with device_for(mosquitto_broker) as dev:
            await dev.write("v5 up")
            assert await conn.readline() == "v5 up\n"
            await conn.write("v5 down")
            assert await dev.readline() == "v5 down\n"


async def test_mqtt5_refused_by_a_311_only_broker(amqtt_broker: BrokerProcess) -> None:
    server = server_for(amqtt_broker, protocol=MQTTv5, connect_timeout=1.0)
    with pytest.raises(BrokerUnreachableError, match="MQTT 5"):
        await server.__aenter__()


# -- hostile input, liveness, flow control ------------------------------------------------


async def test_malformed_frames_logged_and_dropped(
    any_broker: BrokerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = [
        b"",
        b"\xff\xfe\x00",
        b"z|junk",
        b"hh",
        b"q|NOTHEX!|1|1|x",
        b"q|0123abcd|99999|1|too big an id",
        b"q|0123abcd|1|2|base after id",
        b"q|0123abcd|1|1|\xff not utf-8",
        b"a|0123abcd",
        b"u|0123abcd",
        b"q|0123abcd|1|1|" + b"y" * 1025,
    ]
    n = 40
    caplog.set_level(logging.WARNING, logger="pblink.server")
    async with asyncio.timeout(TEST_TIMEOUT), server_for(any_broker) as server:
        conn = await server.connection("1")
        async with device_for(any_broker) as dev:
            await dev.wait_server()
            up: list[str] = []
            writer = asyncio.create_task(produce(dev.write, lines("up", n)))
            reader = asyncio.create_task(collect(conn.readline, n, up))
            await until(lambda: len(up) >= 10, "10 lines")
            probe = MqttProbe(any_broker.port).connect()
            try:
                for payload in garbage:
                    await asyncio.to_thread(probe.publish, conn.up_topic, payload)
                await asyncio.to_thread(probe.publish, conn.status_topic, b"maybe")
            finally:
                probe.close()
            await asyncio.gather(writer, reader)
            assert up == nl(lines("up", n))
            await until(lambda: server.stats["malformed"] == len(garbage), "every frame counted")
            # The status payload travels separately from the up frames: wait for it too.
            await until(lambda: any("ignored status payload" in r.getMessage()
                                    for r in caplog.records), "the status payload logged")
            assert conn.online
    messages = [r.getMessage() for r in caplog.records]
    assert sum("malformed frame" in m for m in messages) == len(garbage)


async def test_unclaimed_conn_id_is_not_answered(any_broker: BrokerProcess) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), server_for(any_broker) as server:
        async with device_for(any_broker, "7") as dev:
            await dev.wait_connected()
            write = asyncio.create_task(dev.write("held by the device"))
            await asyncio.sleep(3 * T / 1000)
            assert not dev.server_ok  # no answer to its heartbeats: the bridge says D
            assert not write.done()
            conn = await server.connection("7")
            await asyncio.wait_for(dev.wait_server(), 2 * T / 1000 + 1)
            await write
            assert await conn.readline() == "held by the device\n"
            assert server.stats["unclaimed"] >= 1


async def test_full_read_queue_backpressures_device(amqtt_broker: BrokerProcess) -> None:
    n = 40
    async with asyncio.timeout(TEST_TIMEOUT), server_for(amqtt_broker, queue_size=4) as server:
        conn = await server.connection("1")
        async with device_for(amqtt_broker) as dev:
            writer = asyncio.create_task(produce(dev.write, lines("up", n)))
            await asyncio.sleep(4 * T / 1000)
            assert not writer.done()  # the device's window is full of unacknowledged lines
            assert dev.in_flight == dev.window
            assert len(conn._lines) + len(conn._held) <= 4 + 16
            up = await collect(conn.readline, n, [])
            await writer
            assert up == nl(lines("up", n))


async def test_device_restart_gets_new_session(any_broker: BrokerProcess) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), server_for(any_broker) as server:
        conn = await server.connection("1")
        async with device_for(any_broker) as dev:
            for line in lines("before", 5):
                await dev.write(line)
            await dev.drain()  # a reboot loses the lines the board has not had acknowledged
            old = dev.session
            await dev.restart()
            assert dev.session != old
            for line in lines("after", 5):
                await dev.write(line)  # ids start at 1 again: not taken for duplicates
            got = [await conn.readline() for _ in range(10)]
            assert got == nl(lines("before", 5) + lines("after", 5))
            await conn.write("to the rebooted board")
            assert await dev.readline() == "to the rebooted board\n"


@pytest.fixture
async def aserver(amqtt_broker: BrokerProcess) -> AsyncIterator[LinkServer]:
    async with server_for(amqtt_broker) as server:
        yield server


async def test_server_answers_heartbeats(aserver: LinkServer, amqtt_broker: BrokerProcess) -> None:
    await aserver.connection("1")
    async with device_for(amqtt_broker) as dev:
        await asyncio.wait_for(dev.wait_server(), 2 * T / 1000 + 1)
        await asyncio.sleep(4 * T / 1000)  # idle: heartbeats alone keep both ends up
        assert dev.server_ok
        assert aserver.connections["1"].online
