"""The demo server app server_apps.s_app, in process and as `python -m server_apps.s_app`."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, TEST_TIMEOUT, BrokerProcess, free_port

from server_apps import s_app
from virtual_bench.device_double import DeviceDouble

T = 300


def device_for(broker: BrokerProcess, conn_id: str) -> DeviceDouble:
    return DeviceDouble(conn_id, broker.host, broker.port, timeout_ms=T, reconnect_min=0.1,
                        reconnect_max=0.5, connect_timeout=2.0)


def test_reply_for() -> None:
    assert s_app.reply_for('[1, 2, 3]\n', 7) == "[1, 2, 3, 7]"
    assert s_app.reply_for('["a", 0, 0]', 1) == '["a", 0, 0, 1]'
    for bad in ("nope", "[1, 2]", '{"a": 1}', "[1, 2, 3, 4]", ""):
        assert s_app.reply_for(bad, 1) is None


async def exchange(dev: DeviceDouble, tx: int, rx: int) -> list[Any]:
    await dev.write(json.dumps([dev.conn_id, tx, rx]))
    line = await dev.readline()
    assert line.endswith("\n")
    reply: list[Any] = json.loads(line)
    return reply


async def test_serve_answers_each_device_and_survives_a_restart(
    any_broker: BrokerProcess, tmp_path: Path
) -> None:
    ids = ["1", "2"]
    kwargs: dict[str, Any] = {"ids": ids, "state_dir": tmp_path, "timeout_ms": T}
    async with asyncio.timeout(TEST_TIMEOUT):
        async with device_for(any_broker, "1") as d1, device_for(any_broker, "2") as d2:
            stop, ready = asyncio.Event(), asyncio.Event()
            server = asyncio.create_task(
                s_app.serve(any_broker.host, any_broker.port, stop=stop, ready=ready, **kwargs)
            )
            await ready.wait()
            for n in range(1, 4):
                for dev in (d1, d2):
                    assert await exchange(dev, n, n - 1) == [dev.conn_id, n, n - 1, n]
            stop.set()
            await server
            state = json.loads((tmp_path / "pblink.server.json").read_text())
            assert state["clean"] is True and set(state["conns"]) == set(ids)
            # Lines written while the server is away wait in the device, then are answered.
            pending = asyncio.create_task(exchange(d1, 4, 3))
            stop, ready = asyncio.Event(), asyncio.Event()
            server = asyncio.create_task(
                s_app.serve(any_broker.host, any_broker.port, stop=stop, ready=ready, **kwargs)
            )
            await ready.wait()
            assert await pending == ["1", 4, 3, 1]  # the server's own counter restarted
            assert await exchange(d2, 4, 3) == ["2", 4, 3, 1]
            assert await exchange(d1, 5, 4) == ["1", 5, 4, 2]
            stop.set()
            await server


async def test_serve_skips_lines_that_are_not_the_demo_format(
    amqtt_broker: BrokerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), device_for(amqtt_broker, "3") as dev:
        stop, ready = asyncio.Event(), asyncio.Event()
        server = asyncio.create_task(s_app.serve(
            amqtt_broker.host, amqtt_broker.port, ids=["3"], state_dir=None, timeout_ms=T,
            stop=stop, ready=ready,
        ))
        await ready.wait()
        await dev.write("not json")
        assert await exchange(dev, 1, 0) == ["3", 1, 0, 1]
        stop.set()
        await server
    assert any("not a [conn_id, tx_count, rx_count] list" in r.getMessage() for r in caplog.records)


def test_main_reports_unreachable_broker(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert s_app.main(["--port", str(port), "--host", "127.0.0.1", "--state-dir", ""]) == 3
    assert f"cannot reach MQTT broker 127.0.0.1:{port}" in capsys.readouterr().err


def test_main_rejects_bad_conn_id_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--host", "127.0.0.1", "--port", str(free_port()), "--ids", "1", "no/slash",
            "--state-dir", ""]
    assert s_app.main(argv) == 2  # not 3: the broker is never tried
    assert "conn_id 'no/slash'" in capsys.readouterr().err


def test_module_runs_and_stops_cleanly_on_sigterm(
    amqtt_broker: BrokerProcess, tmp_path: Path
) -> None:
    argv = [sys.executable, "-m", "server_apps.s_app", "--host", amqtt_broker.host,
            "--port", str(amqtt_broker.port), "--ids", "5", "--state-dir", str(tmp_path),
            "--timeout-ms", str(T)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        async def talk() -> list[Any]:
            async with asyncio.timeout(TEST_TIMEOUT), device_for(amqtt_broker, "5") as dev:
                return [await exchange(dev, n, n - 1) for n in (1, 2)]

        assert asyncio.run(talk()) == [["5", 1, 0, 1], ["5", 2, 1, 2]]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=TEST_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    assert '5 <- ["5", 1, 0]' in text and '5 -> ["5", 1, 0, 1]' in text
    assert json.loads((tmp_path / "pblink.server.json").read_text())["clean"] is True


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        s_app.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--root", "--user", "--password", "--ids",
                   "--state-dir", "--timeout-ms", "-v"):
        assert option in out
