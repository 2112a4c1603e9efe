"""virtual_bench.device_double: what it puts on MQTT, its faults, and what one costs."""

from __future__ import annotations

import asyncio
import gc
import os
import tracemalloc

from conftest import TEST_TIMEOUT, BrokerProcess, MqttProbe

from server_apps import LinkServer
from virtual_bench.device_double import DeviceDouble, DeviceRestarted

T = 300


def double(broker: BrokerProcess, conn_id: str = "1", **kw: object) -> DeviceDouble:
    return DeviceDouble(conn_id, broker.host, broker.port, timeout_ms=T, reconnect_min=0.1,
                        reconnect_max=0.5, connect_timeout=2.0, **kw)  # type: ignore[arg-type]


async def test_wire_behaviour_seen_by_a_plain_client(any_broker: BrokerProcess) -> None:
    """Status online retained, will offline, heartbeats on up, frames on up, acks expected."""
    probe = MqttProbe(any_broker.port).connect()
    try:
        probe.subscribe("pblink/d1/#")
        async with asyncio.timeout(TEST_TIMEOUT), double(any_broker, "d1") as dev:
            await dev.wait_connected()
            await asyncio.sleep(2 * T / 1000)
            write = asyncio.create_task(dev.write("hello", qos=True))
            await asyncio.sleep(0.1)
            assert not write.done()  # no server: the write pauses (the bridge says D)
            # Play the server by hand: answer its heartbeat, then acknowledge its line.
            await asyncio.to_thread(probe.publish, "pblink/d1/down", b"h", 0)
            await asyncio.wait_for(write, 2)
            await until_seen(probe, "pblink/d1/up", f"q|{dev.session}|1|1|hello".encode())
            assert any(m == ("pblink/d1/up", b"h", False) for m in probe.messages)
            assert dev.in_flight == 1
            await asyncio.to_thread(probe.publish, "pblink/d1/down", f"a|{dev.session}|1", 0)
            await asyncio.wait_for(dev.drain(), 2)
            # A qos line from "the server" is delivered and acknowledged.
            await asyncio.to_thread(probe.publish, "pblink/d1/down", b"q|0badcafe|1|1|hi", 1)
            assert await dev.readline() == "hi\n"
            await until_seen(probe, "pblink/d1/up", b"a|0badcafe|1")
            status = [m for m in probe.messages if m[0] == "pblink/d1/status"]
            assert status and status[0][1] == b"online"
        # close() drops the socket without DISCONNECT: the will says offline
        await until_seen(probe, "pblink/d1/status", b"offline")
    finally:
        probe.close()


async def until_seen(probe: MqttProbe, topic: str, payload: bytes) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        while True:
            if any(m[0] == topic and m[1] == payload for m in probe.messages):
                return
            await asyncio.sleep(0.02)


async def test_restart_interrupts_waiting_calls(amqtt_broker: BrokerProcess) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), double(amqtt_broker) as dev:
        reader = asyncio.create_task(dev.readline())
        writer = asyncio.create_task(dev.write("never sent"))  # no server: it waits
        await asyncio.sleep(0.1)
        old = dev.session
        await dev.restart()
        for task in (reader, writer):
            try:
                await task
            except DeviceRestarted:
                pass
            else:  # pragma: no cover
                raise AssertionError("a call waiting across restart() must raise")
        assert dev.session != old and dev.in_flight == 0
        await dev.wait_connected()


async def test_footprint_of_many_doubles(mosquitto_broker: BrokerProcess) -> None:
    """About 17 KiB and one file descriptor per connected double (documented in its module)."""
    n = 100
    async with asyncio.timeout(TEST_TIMEOUT), LinkServer(
        mosquitto_broker.host, mosquitto_broker.port, timeout_ms=T
    ) as server:
        conns = [await server.connection(str(i)) for i in range(n)]
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            fds = len(os.listdir("/proc/self/fd"))
            devs = [double(mosquitto_broker, str(i)) for i in range(n)]
            for dev in devs:
                await dev.start()
            for dev in devs:
                await dev.wait_server()
            gc.collect()
            per_double = (tracemalloc.get_traced_memory()[0] - base) / n
            fds_per_double = (len(os.listdir("/proc/self/fd")) - fds) / n
        finally:
            tracemalloc.stop()
        assert per_double < 48 * 1024, f"{per_double / 1024:.1f} KiB per double"
        assert fds_per_double <= 1.5
        await asyncio.gather(*(dev.write(f"from {dev.conn_id}") for dev in devs))
        for conn in conns:
            assert await conn.readline() == f"from {conn.conn_id}\n"
        for dev in devs:
            await dev.close()
