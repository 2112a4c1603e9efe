"""Several `pblink server` processes on one broker (issue 9 part 2, PROTOCOL.md 4.3 and 4.5).

Real processes (``python -m server_apps.s_app``), real brokers, device doubles:

- a second process that would share an identity (client id, state file) with a
  running one refuses to start with one line that names ``--client-id``,
  whether it runs in the same folder (state-file lock) or another (probe);
- two processes that split the conn_ids, each with its own client id, in one
  folder, through three rounds of start, five qos lines each way per device,
  stop, in several start/stop orders: every device gets each reply exactly
  once and in order, and each process's state file is its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, TEST_TIMEOUT, BrokerProcess

from virtual_bench.device_double import DeviceDouble

T = 300
LINES = 5


def start_server(broker: BrokerProcess, cwd: Path, *args: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "server_apps.s_app", "--host", broker.host,
            "--port", str(broker.port), "--timeout-ms", str(T), *args]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def wait_serving(proc: subprocess.Popen[bytes], what: str) -> list[str]:
    """Read the server's log until it serves (or exits); return the lines read."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + TEST_TIMEOUT
    while time.monotonic() < deadline:
        raw = proc.stdout.readline()
        if not raw:
            break
        line = raw.decode(errors="replace").rstrip()
        seen.append(line)
        if "demo server on" in line:
            return seen
    raise AssertionError(f"{what} did not start:\n" + "\n".join(seen))


def stop_server(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=TEST_TIMEOUT)
    assert proc.returncode == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


def device_for(broker: BrokerProcess, conn_id: str) -> DeviceDouble:
    return DeviceDouble(conn_id, broker.host, broker.port, timeout_ms=T, reconnect_min=0.1,
                        reconnect_max=0.5, connect_timeout=2.0)


def refused(proc: subprocess.Popen[bytes]) -> str:
    out, _ = proc.communicate(timeout=TEST_TIMEOUT)
    text = out.decode(errors="replace").strip()
    assert proc.returncode == 1, text
    # pblink's one-line error (pblink.common: "pblink server: error: ...")
    errors = [x for x in text.splitlines() if x.startswith("pblink server: error: ")]
    assert len(errors) == 1 and "Traceback" not in text, text
    return errors[0]


@pytest.mark.parametrize("where", ["same folder", "another folder"])
def test_a_second_process_with_the_same_identity_refuses(
    any_broker: BrokerProcess, tmp_path: Path, where: str
) -> None:
    first_dir = tmp_path / "a"
    second_dir = first_dir if where == "same folder" else tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir(exist_ok=True)
    first = start_server(any_broker, first_dir, "--ids", "1")
    try:
        wait_serving(first, "the first server")
        line = refused(start_server(any_broker, second_dir, "--ids", "2"))
        assert "--client-id" in line, line
        if where == "same folder":
            assert "in use by another running server process" in line, line
            assert "pblink.server.json" in line, line
        else:
            assert "as client id 'pblink.server'" in line, line
            assert "its state file follows the client id" in line, line

        async def first_still_serves() -> list[Any]:
            async with asyncio.timeout(TEST_TIMEOUT), device_for(any_broker, "1") as dev:
                await dev.write(json.dumps(["1", 1, 0]))
                return list(json.loads(await dev.readline()))

        assert asyncio.run(first_still_serves()) == ["1", 1, 0, 1]
        out = stop_server(first)
        assert "lost MQTT broker" not in out  # nobody took its client id over
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # The lock dies with its holder: the same identity starts again at once.
    again = start_server(any_broker, second_dir, "--ids", "2")
    wait_serving(again, "the restarted server")
    stop_server(again)


ORDERS = [  # (start order, stop order) per round, over three rounds
    [("ab", "ab"), ("ba", "ab"), ("ab", "ba")],
    [("ba", "ba"), ("ab", "ba"), ("ba", "ab")],
]


@pytest.mark.parametrize("orders", ORDERS, ids=["order1", "order2"])
def test_two_processes_split_the_conn_ids_and_lose_nothing(
    any_broker: BrokerProcess, tmp_path: Path, orders: list[tuple[str, str]]
) -> None:
    ids = {"a": "1", "b": "2"}

    async def scenario() -> None:
        async with asyncio.timeout(3 * TEST_TIMEOUT), \
                device_for(any_broker, "1") as d1, device_for(any_broker, "2") as d2:
            devs = {"1": d1, "2": d2}
            sent = {"1": 0, "2": 0}
            for rnd, (start, stop) in enumerate(orders, 1):
                procs: dict[str, subprocess.Popen[bytes]] = {}
                try:
                    for name in start:
                        procs[name] = start_server(
                            any_broker, tmp_path, "--ids", ids[name],
                            "--client-id", f"pblink.server-{name}")
                        await asyncio.to_thread(wait_serving, procs[name], f"server {name}")

                    async def exchange(dev: DeviceDouble) -> list[list[Any]]:
                        writes = []
                        for _ in range(LINES):
                            sent[dev.conn_id] += 1
                            writes.append(json.dumps([dev.conn_id, sent[dev.conn_id], 0]))
                        for line in writes:
                            await dev.write(line, qos=True, wait=False)
                        return [json.loads(await dev.readline()) for _ in range(LINES)]

                    got = await asyncio.gather(*(exchange(d) for d in devs.values()))
                    for dev, replies in zip(devs.values(), got, strict=True):
                        first = sent[dev.conn_id] - LINES + 1
                        assert [r[:2] for r in replies] == [
                            [dev.conn_id, n] for n in range(first, first + LINES)
                        ], f"round {rnd}, device {dev.conn_id}: {replies}"
                        assert [r[3] for r in replies] == list(range(1, LINES + 1))
                    for name in stop:
                        await asyncio.to_thread(stop_server, procs.pop(name))
                finally:
                    for proc in procs.values():
                        proc.kill()
                        proc.wait()
                await asyncio.sleep(2 * T / 1000)
            # Nothing more arrives: no reply was delivered twice.
            await asyncio.sleep(1.0)
            for dev in devs.values():
                assert not dev._lines, f"device {dev.conn_id} got extra lines: {dev._lines}"

    asyncio.run(scenario())
    for name, conn_id in ids.items():
        state = json.loads((tmp_path / ".pblink-state" / f"pblink.server-{name}.json").read_text())
        assert state["clean"] is True and set(state["conns"]) == {conn_id}, state


@pytest.mark.mosquitto
async def test_a_client_id_fight_that_slips_past_the_probe_is_named_in_the_log(
    mosquitto_broker: BrokerProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Probe off (or two starts in the same half second): the kicking is logged with its cause.

    Mosquitto closes the older connection of a client id each time the other
    process reconnects (the embedded amqtt broker kicks only once).
    """
    from test_server_link import until

    from server_apps import LinkServer

    caplog.set_level(logging.WARNING, logger="pblink.server")
    kw: dict[str, Any] = {"client_id": "pblink.server-twin", "identity_probe_s": 0,
                          "timeout_ms": T, "connect_timeout": 5.0}
    broker = mosquitto_broker

    def hinted() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if "another client may be connected as client id 'pblink.server-twin'"
                in r.getMessage()]

    async with asyncio.timeout(TEST_TIMEOUT):
        async with LinkServer(broker.host, broker.port, state_path=tmp_path / "a.json", **kw):
            async with LinkServer(broker.host, broker.port, state_path=tmp_path / "b.json",
                                  **kw):
                await until(lambda: bool(hinted()), "the hint in the log")
    assert "--client-id" in hinted()[0] and "\n" not in hinted()[0]


async def test_two_processes_serving_one_conn_id_is_an_error_in_the_log(
    any_broker: BrokerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """Two server processes with their own client ids both serving conn_id 1 (the
    README's `pblink server` beside `pblink demo --broker`): the device gets both
    processes' lines. Each process sees the device acknowledge lines of a session
    it did not send and says so once, as an error naming what to change."""
    from server_apps import LinkServer
    from server_apps.link_server import FOREIGN_ACK_SPAN

    caplog.set_level(logging.ERROR, logger="pblink.server")
    kw: dict[str, Any] = {"timeout_ms": T, "identity_probe_s": 0}
    async with asyncio.timeout(TEST_TIMEOUT + 20), \
            LinkServer(any_broker.host, any_broker.port, client_id="pblink.server-a", **kw) as a, \
            LinkServer(any_broker.host, any_broker.port, client_id="pblink.server-b", **kw) as b, \
            device_for(any_broker, "1") as dev:
        conns = [await a.connection("1"), await b.connection("1")]
        span_s = FOREIGN_ACK_SPAN * T / 1000
        deadline = time.monotonic() + span_s + 10
        n = 0
        while time.monotonic() < deadline:
            n += 1
            await asyncio.gather(*(c.write(f"from {i} line {n}") for i, c in enumerate(conns)))
            while True:  # the device reads both processes' lines
                try:
                    await asyncio.wait_for(dev.readline(), 0.05)
                except TimeoutError:
                    break
            errors = [r.getMessage() for r in caplog.records if "another server process" in
                      r.getMessage()]
            if len(errors) >= 2:
                break
            await asyncio.sleep(0.1)
    assert len(errors) == 2, errors  # each process once
    assert all("conn_id '1'" in e and "--ids" in e for e in errors), errors
