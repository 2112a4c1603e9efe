"""What queued up for a server application while it was away (issue 9 part 3).

The devices keep sending heartbeats while the server is stopped. A broker that
queues them (amqtt queues even QoS 0 messages for a persistent session)
delivers them all at once when the server comes back: they must not be
answered one by one (link_core.device_watch.DeviceWatch.answer_due), and the
lines written before the outage arrive exactly once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from conftest import TEST_TIMEOUT, BrokerProcess

from server_apps import LinkServer
from virtual_bench.device_double import DeviceDouble

T = 300
DEVICES = ("1", "2", "3")
OUTAGE_S = 4.0  # about 25 heartbeats per device (one per T/2)
WINDOW_S = 0.25  # after the first answer: at most WINDOW_S / (T/4) + 1 answers per device


class DownWatcher:
    """Every frame on <root>/+/down with its arrival time."""

    def __init__(self, broker: BrokerProcess) -> None:
        self.frames: list[tuple[float, str, bytes]] = []
        self._lock = threading.Lock()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="down-watcher")
        ready = threading.Event()
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_message = self._on_message
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        self.c.subscribe("pblink/+/down", 1)
        assert ready.wait(TEST_TIMEOUT)

    def _on_message(self, c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.frames.append((time.monotonic(), msg.topic, bytes(msg.payload)))

    def since(self, t0: float) -> list[tuple[float, str, bytes]]:
        with self._lock:
            return [f for f in self.frames if f[0] >= t0]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def server(broker: BrokerProcess, state: Path) -> LinkServer:
    return LinkServer(broker.host, broker.port, timeout_ms=T, state_path=state,
                      client_id="pblink.server-backlog", connect_timeout=5.0)


async def test_stale_heartbeats_are_not_answered_one_by_one(
    any_broker: BrokerProcess, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    watcher = DownWatcher(any_broker)
    devs = [DeviceDouble(c, any_broker.host, any_broker.port, timeout_ms=T, reconnect_min=0.1,
                         reconnect_max=0.5) for c in DEVICES]
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            for d in devs:
                await d.start()
            async with server(any_broker, state) as srv:
                conns = [await srv.connection(c) for c in DEVICES]
                for d in devs:
                    await d.wait_server(True)
                # lines the devices write just before the server goes: in flight
                for d in devs:
                    for i in range(5):
                        await d.write(f"{d.conn_id} before {i}", wait=False)
                got_before = {c.conn_id: [await c.readline() for _ in range(2)] for c in conns}
            for d in devs:
                await d.wait_server(False)
            await asyncio.sleep(OUTAGE_S)
            t0 = time.monotonic()
            async with server(any_broker, state) as srv:
                conns = [await srv.connection(c) for c in DEVICES]
                rest = {c.conn_id: [await c.readline() for _ in range(3)] for c in conns}
                for d in devs:
                    await d.wait_server(True)
                await asyncio.sleep(1.0)
                coalesced = sum(c.stats["heartbeats_coalesced"] for c in conns)
            frames = watcher.since(t0)
    finally:
        for d in devs:
            await d.close()
        watcher.close()
    for cid in DEVICES:  # every line exactly once, in order, across the outage
        assert [x.rstrip("\n") for x in got_before[cid] + rest[cid]] == [
            f"{cid} before {i}" for i in range(5)], (got_before[cid], rest[cid])
        beats = [f[0] for f in frames if f[1] == f"pblink/{cid}/down" and f[2] == b"h"]
        assert beats, f"device {cid}: no heartbeat answered after the restart"
        burst = [t for t in beats if t - beats[0] <= WINDOW_S]
        bound = int(WINDOW_S / (T / 4000)) + 1
        assert len(burst) <= bound, (
            f"device {cid}: {len(burst)} heartbeat answers within {WINDOW_S} s "
            f"(at most {bound}); {coalesced} stale ones coalesced")
    print(f"\n[backlog] {any_broker.name}: {coalesced} stale heartbeat(s) coalesced after a "
          f"{OUTAGE_S:g} s server outage with {len(DEVICES)} devices")
