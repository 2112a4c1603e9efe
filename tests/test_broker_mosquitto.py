"""Mosquitto with the shipped broker/mosquitto/ config, password file and ACL.

The test runs a temporary copy of the shipped mosquitto.conf in which only the
listener and the file paths are rewritten (the shipped file stays the one
source of truth). Mosquitto started as root drops to the user `mosquitto`, so
the copy lives in a world-readable temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BrokerProcess, MqttProbe, free_port, require_tool

from broker import MOSQUITTO_ACL, MOSQUITTO_CONF, MOSQUITTO_PASSWD
from broker.credentials import add_mosquitto_user, mosquitto_users

pytestmark = pytest.mark.mosquitto

SERVER = "pblink.server"
USERS = {SERVER: "server-pw", "dev1": "pw-1", "dev2": "pw-2"}


def conf_for_test(conf: str, port: int, folder: Path) -> str:
    """The shipped config with the listener and every path moved into `folder`."""
    rewrites = [
        (r"^listener 1883$", f"listener {port} 127.0.0.1"),
        (r"^persistence_location /mosquitto/data/$", f"persistence_location {folder}/data/"),
        (r"^password_file /mosquitto/config/passwd$", f"password_file {folder}/passwd"),
        (r"^acl_file /mosquitto/config/acl$", f"acl_file {folder}/acl"),
        (r"^log_dest file /mosquitto/log/mosquitto.log$",
         f"log_dest file {folder}/log/mosquitto.log"),
    ]
    for pattern, replacement in rewrites:
        conf, count = re.subn(pattern, replacement, conf, flags=re.MULTILINE)
        assert count == 1, f"shipped mosquitto.conf has no line matching {pattern}"
    # Nothing else may point into the container's folders.
    active = [line for line in conf.splitlines() if line and not line.startswith("#")]
    assert not [line for line in active if "/mosquitto/" in line]
    return conf


@pytest.fixture
def shipped_mosquitto(tmp_path: Path) -> Iterator[BrokerProcess]:
    binary = require_tool("mosquitto")
    require_tool("mosquitto_passwd")
    folder = Path(tempfile.mkdtemp(prefix="pblink-mosquitto-"))
    try:
        os.chmod(folder, 0o755)
        for writable in ("data", "log"):  # the mosquitto user writes its database and log here
            (folder / writable).mkdir()
            os.chmod(folder / writable, 0o777)
        shutil.copy(MOSQUITTO_ACL, folder / "acl")
        shutil.copy(MOSQUITTO_PASSWD, folder / "passwd")  # the shipped (empty) one
        for user, password in USERS.items():
            add_mosquitto_user(folder / "passwd", user, password)
        for name in ("acl", "passwd"):
            os.chmod(folder / name, 0o644)
        port = free_port()
        conf = folder / "mosquitto.conf"
        conf.write_text(conf_for_test(MOSQUITTO_CONF.read_text(), port, folder))
        os.chmod(conf, 0o644)
        broker = BrokerProcess("mosquitto", [binary, "-c", str(conf)], port, tmp_path)
        broker.start()
        yield broker
        broker.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def folder_of(broker: BrokerProcess) -> str:
    return str(Path(broker.argv[-1]).parent)


def login(user: str, **kwargs: object) -> dict[str, object]:
    return {"client_id": f"pblink-{user}", "user": user, "password": USERS[user], **kwargs}


def test_shipped_password_file_is_empty() -> None:
    assert mosquitto_users(MOSQUITTO_PASSWD) == []


def test_shipped_conf_accepts_right_and_refuses_wrong_credentials(
    shipped_mosquitto: BrokerProcess,
) -> None:
    port = shipped_mosquitto.port
    probe = MqttProbe(port, **login("dev1")).connect()  # type: ignore[arg-type]
    probe.close()
    for bad in ({"user": "dev1", "password": "wrong"}, {"user": "nobody", "password": "x"}, {}):
        with pytest.raises(ConnectionRefusedError):
            MqttProbe(port, **bad).connect()  # type: ignore[arg-type]
    # The file log works (the mosquitto user can write it); stdout may still be buffered.
    log = (Path(folder_of(shipped_mosquitto)) / "log" / "mosquitto.log").read_text()
    assert "mosquitto version 2" in log
    assert "Error" not in log + shipped_mosquitto.log()


def test_shipped_acl_confines_each_device_to_its_subtree(shipped_mosquitto: BrokerProcess) -> None:
    port = shipped_mosquitto.port
    server = MqttProbe(port, client_id="pblink.server", user=SERVER,
                       password=USERS[SERVER]).connect()
    dev1 = MqttProbe(port, **login("dev1")).connect()  # type: ignore[arg-type]
    dev2 = MqttProbe(port, **login("dev2")).connect()  # type: ignore[arg-type]
    try:
        for topic in ("pblink/+/up", "pblink/+/status"):
            assert not server.subscribe(topic)[0].is_failure
        assert not dev2.subscribe("pblink/dev2/#")[0].is_failure
        # Mosquitto grants these SUBACKs but must deliver nothing of dev2's to dev1.
        for topic in ("pblink/dev2/down", "pblink/+/down", "pblink/+/status", "pblink/#", "#"):
            dev1.subscribe(topic)
        dev2.publish("pblink/dev2/status", b"online", retain=True)
        server.publish("pblink/dev2/down", b"u|0badcafe|for dev2")
        # dev1's writes into dev2's subtree are dropped.
        dev1.publish("pblink/dev2/down", b"u|0badcafe|forged")
        dev1.publish("pblink/dev2/up", b"u|0badcafe|forged")
        dev1.publish("pblink/dev1/up", b"u|0badcafe|from dev1")
        dev2.publish("pblink/dev2/up", b"u|0badcafe|from dev2")
        # Markers: once they arrive, everything published before them has been routed.
        server.publish("pblink/dev1/down", b"u|0badcafe|marker")
        dev1.wait_for(1, topic="pblink/dev1/down")
        server.wait_for(1, topic="pblink/dev1/up")
        server.wait_for(1, topic="pblink/dev2/up")
        server.wait_for(1, topic="pblink/dev2/status")
        assert sorted(m[:2] for m in server.messages if m[0].endswith("/up")) == [
            ("pblink/dev1/up", b"u|0badcafe|from dev1"),
            ("pblink/dev2/up", b"u|0badcafe|from dev2"),
        ]
        dev2.wait_for(1, topic="pblink/dev2/down")
        assert [m[1] for m in dev2.messages if m[0] == "pblink/dev2/down"] == [
            b"u|0badcafe|for dev2"]
        assert all(topic.startswith("pblink/dev1/") for topic, _, _ in dev1.messages), dev1.messages
    finally:
        for probe in (server, dev1, dev2):
            probe.close()


def test_shipped_conf_persists_queued_frames_across_a_restart(
    shipped_mosquitto: BrokerProcess,
) -> None:
    port = shipped_mosquitto.port
    device = MqttProbe(port, clean_session=False, **login("dev1")).connect()  # type: ignore[arg-type]
    device.subscribe("pblink/dev1/down")
    device.close()
    server = MqttProbe(port, client_id="pblink.server", user=SERVER,
                       password=USERS[SERVER]).connect()
    server.publish("pblink/dev1/down", b"q|0badcafe|1|1|kept")
    server.close()
    shipped_mosquitto.restart()  # SIGTERM: Mosquitto saves its database, then starts from it
    device = MqttProbe(port, clean_session=False, **login("dev1")).connect()  # type: ignore[arg-type]
    try:
        assert device.session_present
        assert device.wait_for(1)[0][:2] == ("pblink/dev1/down", b"q|0badcafe|1|1|kept")
    finally:
        device.close()
