"""Shared fixtures: free ports, real broker processes, the MicroPython tools.

The helpers themselves live in virtual_bench (ports.py: free_port,
wait_for_port; brokers.py: BrokerProcess and its launchers), shared with the
bench and the benchmarks; the names stay importable from here.

Brokers are real processes on free loopback ports, so every test is hermetic:
the embedded amqtt broker always, Mosquitto when the binary is installed
(required when CI=true, skipped with a visible reason otherwise).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtual_bench import brokers
from virtual_bench.brokers import BrokerProcess
from virtual_bench.harness import micropython_binary
from virtual_bench.ports import WAIT_S, free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# One knob stretches every wait in the suite (slow machine: PBLINK_TEST_TIMEOUT=30).
TEST_TIMEOUT = WAIT_S


def require_tool(name: str) -> str:
    """Path of a system tool; fail in CI, skip elsewhere, when it is missing."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (apt-get install {name})"
    if IN_CI:
        pytest.fail(f"CI requires it: {message}", pytrace=False)
    pytest.skip(message)


__all__ = ["BrokerProcess", "free_port", "wait_for_port"]  # re-exported for the tests


def amqtt_process(
    workdir: Path, port: int | None = None, extra: list[str] | None = None
) -> BrokerProcess:
    return brokers.amqtt_process(workdir, port, extra or ())


def mosquitto_process(
    workdir: Path, port: int | None = None, conf_lines: list[str] | None = None
) -> BrokerProcess:
    return brokers.mosquitto_process(workdir, require_tool("mosquitto"), port, conf_lines or ())


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
    """The MicroPython every test starts: $PBLINK_MICROPYTHON, else the venv's unix port."""
    try:
        return micropython_binary()
    except FileNotFoundError as e:
        hint = "" if os.environ.get("PBLINK_MICROPYTHON") else ": run python3 dev.py setup"
        pytest.fail(f"{e}{hint}")


@pytest.fixture(scope="session")
def mpy_cross_bin() -> str:
    path = BIN / "mpy-cross"
    if not path.exists():
        pytest.fail("mpy-cross is missing: run python3 dev.py setup")
    return str(path)


class MqttProbe:
    """A paho-mqtt 3.1.1 test client (network thread): connect, subscribe, publish, collect.

    ``probe = MqttProbe(port, user="u", password="p").connect()`` raises
    ``ConnectionRefusedError`` with the CONNACK reason when the broker refuses;
    ``probe.reason`` keeps it. Received messages collect in ``probe.messages``
    as ``(topic, payload, retain)``; ``wait_for(n, topic=None)`` waits for them.
    """

    def __init__(self, port: int, *, client_id: str = "", user: str | None = None,
                 password: str | None = None, clean_session: bool = True,
                 will: tuple[str, bytes] | None = None, host: str = "127.0.0.1") -> None:
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.host, self.port = host, port
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=clean_session, protocol=mqtt.MQTTv311)
        if user is not None:
            self.client.username_pw_set(user, password)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.messages: list[tuple[str, bytes, bool]] = []
        self.reason = None
        self.session_present: bool | None = None
        self._cond = threading.Condition()
        self._subacks: dict[int, list] = {}
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.connected = False

    def _on_connect(self, client, userdata, flags, reason, props) -> None:
        with self._cond:
            self.reason = reason
            self.session_present = bool(flags.session_present)
            self.connected = not reason.is_failure
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason, props) -> None:
        with self._cond:
            self.connected = False
            self._cond.notify_all()

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, codes, props) -> None:
        with self._cond:
            self._subacks[mid] = list(codes)
            self._cond.notify_all()

    def _wait(self, pred, timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(pred, timeout):
                raise TimeoutError(f"MqttProbe: {what} within {timeout} s")

    def connect(self, timeout: float = TEST_TIMEOUT) -> MqttProbe:
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        self._wait(lambda: self.reason is not None, timeout, "no CONNACK")
        if self.reason.is_failure:
            self.close()
            raise ConnectionRefusedError(str(self.reason))
        return self

    def subscribe(self, topic: str, qos: int = 1, timeout: float = TEST_TIMEOUT) -> list:
        """The SUBACK reason codes (``code.is_failure`` for a refusal)."""
        _, mid = self.client.subscribe(topic, qos)
        self._wait(lambda: mid in self._subacks, timeout, f"no SUBACK for {topic}")
        return self._subacks[mid]

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                timeout: float = TEST_TIMEOUT) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout)

    def wait_for(self, count: int = 1, topic: str | None = None,
                 timeout: float = TEST_TIMEOUT) -> list[tuple[str, bytes, bool]]:
        def matching() -> list[tuple[str, bytes, bool]]:
            return [m for m in self.messages if topic is None or m[0] == topic]

        self._wait(lambda: len(matching()) >= count, timeout, f"{count} message(s) on {topic}")
        return matching()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
