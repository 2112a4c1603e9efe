"""The README's two example applications run as printed.

The server example (a LinkServer echoing every line) is run as its own
process against a device double; the Pyboard example (an AppBase subclass
echoing every line) runs on the virtual bench against a LinkServer here.
Only the broker address is changed in the server example.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TEST_TIMEOUT, BrokerProcess

from server_apps import LinkServer
from virtual_bench.device_double import DeviceDouble
from virtual_bench.harness import Bench

WAIT = max(TEST_TIMEOUT, 30.0)


def readme_block(after: str) -> str:
    """The first ```python block that follows the line starting with `after`."""
    text = (ROOT / "README.md").read_text()
    start = text.index(after)
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match, f"no python block after {after!r} in README.md"
    return match.group(1)


async def test_server_example_echoes_a_device(amqtt_broker: BrokerProcess) -> None:
    code = readme_block("A server application")
    assert 'LinkServer("localhost", 1883)' in code
    code = code.replace('LinkServer("localhost", 1883)',
                        f'LinkServer("127.0.0.1", {amqtt_broker.port}, state_path=None)')
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, cwd=ROOT)
    try:
        async with DeviceDouble("1", "127.0.0.1", amqtt_broker.port, timeout_ms=500) as dev:
            await asyncio.wait_for(dev.wait_server(), WAIT)
            for n in range(3):
                await dev.write(f"ping {n}")
            got = [await asyncio.wait_for(dev.readline(), WAIT) for _ in range(3)]
        assert got == ["ping 0\n", "ping 1\n", "ping 2\n"]
    finally:
        proc.terminate()
        await proc.wait()


@pytest.mark.slow
async def test_pyboard_example_echoes_the_server(amqtt_broker: BrokerProcess,
                                                 tmp_path: Path) -> None:
    code_dir = tmp_path / "pb_code"
    code_dir.mkdir()
    (code_dir / "readme_app.py").write_text(readme_block("A Pyboard application"))
    settings = {"timeout_ms": 1000, "boot_wait_ms": 300, "exchange_timeout_ms": 400,
                "bridge_tuning": {"wifi_stable_ms": 100, "reconnect_min_ms": 200}}
    async with LinkServer("127.0.0.1", amqtt_broker.port, timeout_ms=1000) as server:
        conn = await server.connection("1")
        bench = Bench(("127.0.0.1", amqtt_broker.port), conn_id="1", settings=settings,
                      pyboard_module="readme_app", pyboard_paths=[code_dir],
                      workdir=tmp_path / "bench")
        async with bench:
            await asyncio.wait_for(conn.wait_online(), WAIT)
            for n in range(3):
                await conn.write(f"hello {n}")
            got = [await asyncio.wait_for(conn.readline(), WAIT) for _ in range(3)]
    assert got == ["hello 0\n", "hello 1\n", "hello 2\n"]
