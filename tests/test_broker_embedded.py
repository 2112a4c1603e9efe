"""The embedded amqtt broker: process runner, in-process API, passwords, confinement, queues."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    TEST_TIMEOUT,
    BrokerProcess,
    MqttProbe,
    amqtt_process,
    free_port,
)

from broker.credentials import write_amqtt_users
from broker.embedded import BrokerStartError, EmbeddedBroker, build_config
from broker.plugins import allowed

SERVER = "pblink.server"
USERS = {SERVER: "server-pw", "dev1": "pw-1", "dev2": "pw-2"}


def roundtrip(port: int, **login: str) -> None:
    """A subscriber and a publisher on `port` exchange one QoS 1 message."""
    sub = MqttProbe(port, **login).connect()
    pub = MqttProbe(port, **login).connect()
    try:
        assert not sub.subscribe("pblink/x/up")[0].is_failure
        pub.publish("pblink/x/up", b"u|0badcafe|hello")
        assert sub.wait_for(1)[0][:2] == ("pblink/x/up", b"u|0badcafe|hello")
    finally:
        sub.close()
        pub.close()


# -- the process: python -m broker.embedded ------------------------------------


def test_process_serves_restarts_and_stops_cleanly(amqtt_broker: BrokerProcess) -> None:
    roundtrip(amqtt_broker.port)
    amqtt_broker.restart()
    roundtrip(amqtt_broker.port)
    proc = amqtt_broker.proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=TEST_TIMEOUT) == 0
    log = amqtt_broker.log()
    assert "Traceback" not in log
    assert f"listening on 127.0.0.1:{amqtt_broker.port}" in log


def test_process_exits_zero_on_sigint(tmp_path: Path) -> None:
    broker = amqtt_process(tmp_path)
    broker.start()
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGINT)
    assert broker.proc.wait(timeout=TEST_TIMEOUT) == 0
    assert "Traceback" not in broker.log()


def test_process_port_in_use_is_a_one_line_error(amqtt_broker: BrokerProcess) -> None:
    argv = [sys.executable, "-m", "broker.embedded", "--port", str(amqtt_broker.port)]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=TEST_TIMEOUT)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"error: cannot start the broker on 127.0.0.1:{amqtt_broker.port}" in proc.stderr
    assert "in use" in proc.stderr


def test_process_with_password_file(tmp_path: Path) -> None:
    passwd = tmp_path / "amqtt.passwd"
    write_amqtt_users(passwd, USERS)
    broker = amqtt_process(tmp_path, extra=["--password-file", str(passwd)])
    broker.start()
    try:
        roundtrip(broker.port, user="dev1", password="pw-1")
        for login in ({"user": "dev1", "password": "wrong"}, {"user": "nobody", "password": "x"},
                      {}):
            with pytest.raises(ConnectionRefusedError, match="Not authorized"):
                MqttProbe(broker.port, **login).connect()
    finally:
        broker.stop()


def test_process_missing_password_file(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "broker.embedded", "--port", str(free_port()),
            "--password-file", str(tmp_path / "missing")]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=TEST_TIMEOUT)
    assert proc.returncode == 2  # a bad option, as `pblink broker` says it (broker/README.md)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: --password-file {tmp_path / 'missing'} does not exist"


def test_process_refuses_a_bad_password_line_and_root(tmp_path: Path) -> None:
    passwd = tmp_path / "amqtt.passwd"
    write_amqtt_users(passwd, USERS)
    with passwd.open("a") as out:
        out.write("dev9:notahash\n")
    for extra, message in (
        (["--password-file", str(passwd)],
         f"error: --password-file {passwd} line 4: user 'dev9': it has no hash"),
        (["--root", "a/#"], "error: topic root 'a/#' has the character '#' at position 2"),
    ):
        proc = subprocess.run([sys.executable, "-m", "broker.embedded", "--port",
                               str(free_port()), *extra], cwd=ROOT, capture_output=True,
                              text=True, timeout=TEST_TIMEOUT)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().startswith(message), proc.stderr


def test_process_refuses_acl_without_proven_server_users(tmp_path: Path) -> None:
    """--acl keys on user names, so it needs passwords and each server user among
    them; --server-user means nothing without --acl; a BOM would hide user 1."""
    passwd = tmp_path / "amqtt.passwd"
    write_amqtt_users(passwd, USERS)
    devices = tmp_path / "devices.passwd"
    write_amqtt_users(devices, {"dev1": "pw-1"})
    bom = tmp_path / "bom.passwd"
    bom.write_bytes(b"\xef\xbb\xbf" + passwd.read_bytes())
    add = "(add it with `pblink passwd --server --amqtt"
    for extra, message in (
        (["--acl"], "error: --acl needs --password-file: it confines each user by name"),
        (["--server-user", "srv"], "error: --server-user goes with --acl"),
        (["--password-file", str(passwd), "--server-user", SERVER],
         "error: --server-user goes with --acl"),
        (["--password-file", str(passwd), "--acl", "--server-user", "nobody"],
         f"error: --server-user 'nobody' is not a user in --password-file {passwd} "
         f"{add} {passwd} nobody`)"),
        (["--password-file", str(passwd), "--acl", "--server-user", SERVER, "--server-user",
          "other"], "error: --server-user 'other' is not a user in --password-file"),
        (["--password-file", str(devices), "--acl"],
         f"error: --acl: server user '{SERVER}' (the default; --server-user names others) is "
         f"not a user in --password-file {devices} {add} {devices} {SERVER}`)"),
        (["--password-file", str(bom)],
         f"error: --password-file {bom} line 1: starts with a UTF-8 byte order mark: "
         "save it without one"),
    ):
        proc = subprocess.run([sys.executable, "-m", "broker.embedded", "--port",
                               str(free_port()), *extra], cwd=ROOT, capture_output=True,
                              text=True, timeout=TEST_TIMEOUT)
        assert proc.returncode == 2, (extra, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.strip().startswith(message), proc.stderr


async def test_in_process_acl_needs_passwords_with_the_server_users(tmp_path: Path) -> None:
    """EmbeddedBroker refuses what `pblink broker` refuses: acl without passwords and
    server_users without acl at once, a server user missing from `users` at once and
    from a password file at start(); a file with a BOM at start()."""
    with pytest.raises(ValueError, match="acl=True needs users or password_file"):
        EmbeddedBroker("127.0.0.1", 0, acl=True)
    with pytest.raises(ValueError, match="server_users goes with acl=True"):
        EmbeddedBroker("127.0.0.1", 0, users=USERS, server_users=[SERVER])
    with pytest.raises(ValueError, match="users: server user 'nobody' is not one of its users"):
        EmbeddedBroker("127.0.0.1", 0, users=USERS, acl=True, server_users=["nobody"])
    with pytest.raises(ValueError, match=f"users: server user '{SERVER}' is not one"):
        EmbeddedBroker("127.0.0.1", 0, users={"dev1": "pw-1"}, acl=True)
    passwd = tmp_path / "amqtt.passwd"
    write_amqtt_users(passwd, USERS)
    with pytest.raises(BrokerStartError, match=f"password file {passwd}: server user 'nobody'"):
        async with EmbeddedBroker("127.0.0.1", 0, password_file=passwd, acl=True,
                                  server_users=["nobody"]):
            pass
    passwd.write_bytes(b"\xef\xbb\xbf" + passwd.read_bytes())
    with pytest.raises(BrokerStartError, match="line 1: starts with a UTF-8 byte order mark"):
        async with EmbeddedBroker("127.0.0.1", 0, password_file=passwd):
            pass


async def test_in_process_bad_password_file_and_root(tmp_path: Path) -> None:
    """The library refuses what the command line refuses: a bad root at once
    (ValueError), a password file with an unusable line at start()."""
    with pytest.raises(ValueError, match="topic root 'a/#'"):
        EmbeddedBroker("127.0.0.1", 0, root="a/#")
    passwd = tmp_path / "amqtt.passwd"
    write_amqtt_users(passwd, USERS)
    with passwd.open("a") as out:
        out.write("garbage line\n")
    with pytest.raises(BrokerStartError, match=r"amqtt.passwd line 4: it is not user:<hash>"):
        async with EmbeddedBroker("127.0.0.1", 0, password_file=passwd):
            pass


# -- in process: EmbeddedBroker ---------------------------------------------------


async def test_in_process_start_stop_restart_on_port_zero() -> None:
    broker = EmbeddedBroker("127.0.0.1", 0)
    async with broker:
        port = broker.port
        assert port > 0 and broker.running
        await asyncio.to_thread(roundtrip, port)
        await broker.restart()
        assert broker.port == port
        await asyncio.to_thread(roundtrip, port)
    assert not broker.running
    with pytest.raises(ConnectionRefusedError):
        await asyncio.to_thread(MqttProbe(port).connect, 2)


async def test_in_process_port_in_use() -> None:
    async with EmbeddedBroker("127.0.0.1", 0) as first:
        with pytest.raises(BrokerStartError, match="in use"):
            async with EmbeddedBroker("127.0.0.1", first.port):
                pass


async def test_in_process_users_accept_right_and_refuse_wrong_credentials() -> None:
    async with EmbeddedBroker("127.0.0.1", 0, users=USERS) as broker:
        await asyncio.to_thread(roundtrip, broker.port, user=SERVER, password="server-pw")
        with pytest.raises(ConnectionRefusedError):
            await asyncio.to_thread(MqttProbe(broker.port, user=SERVER, password="x").connect)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.to_thread(MqttProbe(broker.port).connect)


def test_config_shape() -> None:
    config = build_config("0.0.0.0", 1884, password_file="/p", acl=True, server_users=["s"])
    assert config["listeners"]["default"] == {"type": "tcp", "bind": "0.0.0.0:1884"}
    plugins = config["plugins"]
    assert plugins["amqtt.plugins.authentication.FileAuthPlugin"] == {"password_file": "/p"}
    assert plugins["broker.plugins.DeviceACLPlugin"]["server_users"] == ["s"]
    assert "broker.plugins.OpenAuthPlugin" not in plugins
    open_config = build_config("127.0.0.1", 1883)
    assert "broker.plugins.OpenAuthPlugin" in open_config["plugins"]
    assert "broker.plugins.DeviceACLPlugin" not in open_config["plugins"]


# -- per-device confinement (DeviceACLPlugin) --------------------------------------


@pytest.mark.parametrize(
    ("topic", "user", "ok"),
    [
        ("pblink/dev1/up", "dev1", True),
        ("pblink/dev1/#", "dev1", True),
        ("pblink/dev1", "dev1", True),
        ("pblink/dev2/up", "dev1", False),
        ("pblink/+/up", "dev1", False),
        ("pblink/#", "dev1", False),
        ("#", "dev1", False),
        ("other/dev1/up", "dev1", False),
        ("pblink/dev1/up", None, False),
        ("pblink/+/up", SERVER, True),
        ("pblink/#", SERVER, True),
        ("#", SERVER, False),
        ("$SYS/#", SERVER, False),
        ("site/pblink/dev1/up", "dev1", True),
    ],
)
def test_allowed_rules(topic: str, user: str | None, ok: bool) -> None:
    root = "site/pblink" if topic.startswith("site/") else "pblink"
    assert allowed(topic, user, root, frozenset({SERVER})) is ok


def _acl_checks(port: int) -> None:
    server = MqttProbe(port, client_id="pblink.server", user=SERVER, password="server-pw").connect()
    dev1 = MqttProbe(port, client_id="pblink-dev1", user="dev1", password="pw-1").connect()
    dev2 = MqttProbe(port, client_id="pblink-dev2", user="dev2", password="pw-2").connect()
    try:
        # The server reads every device; a device may not subscribe outside its subtree.
        assert not server.subscribe("pblink/+/up")[0].is_failure
        assert not dev2.subscribe("pblink/dev2/down")[0].is_failure
        for forbidden in ("pblink/dev2/down", "pblink/+/down", "pblink/#", "#"):
            assert dev1.subscribe(forbidden)[0].is_failure, forbidden
        assert not dev1.subscribe("pblink/dev1/#")[0].is_failure
        # dev1 writing into dev2's subtree is dropped; its own topic goes through.
        dev1.publish("pblink/dev2/down", b"u|0badcafe|forged")
        dev1.publish("pblink/dev2/up", b"u|0badcafe|forged")
        dev1.publish("pblink/dev1/up", b"u|0badcafe|mine")
        dev2.publish("pblink/dev2/up", b"u|0badcafe|dev2's")
        got = server.wait_for(2)
        assert sorted(m[:2] for m in got) == [("pblink/dev1/up", b"u|0badcafe|mine"),
                                               ("pblink/dev2/up", b"u|0badcafe|dev2's")]
        server.publish("pblink/dev2/down", b"u|0badcafe|for dev2")
        assert dev2.wait_for(1)[0][:2] == ("pblink/dev2/down", b"u|0badcafe|for dev2")
        assert dev2.messages == [m for m in dev2.messages if b"forged" not in m[1]]
        assert all(m[0].startswith("pblink/dev1/") for m in dev1.messages)
    finally:
        for probe in (server, dev1, dev2):
            probe.close()
    # amqtt does not check will topics: the plugin refuses them at CONNECT.
    with pytest.raises(ConnectionRefusedError):
        MqttProbe(port, client_id="pblink-dev1", user="dev1", password="pw-1",
                  will=("pblink/dev2/status", b"offline")).connect()
    MqttProbe(port, client_id="pblink-dev1", user="dev1", password="pw-1",
              will=("pblink/dev1/status", b"offline")).connect().close()
    # A device may not take another device's client id (and with it its session).
    with pytest.raises(ConnectionRefusedError):
        MqttProbe(port, client_id="pblink-dev2", user="dev1", password="pw-1").connect()


async def test_acl_confines_devices_in_process() -> None:
    async with EmbeddedBroker("127.0.0.1", 0, users=USERS, acl=True) as broker:
        await asyncio.to_thread(_acl_checks, broker.port)


def test_acl_confines_devices_process(tmp_path: Path) -> None:
    passwd = tmp_path / "amqtt.passwd"
    write_amqtt_users(passwd, USERS)
    broker = amqtt_process(tmp_path, extra=["--password-file", str(passwd), "--acl"])
    broker.start()
    try:
        _acl_checks(broker.port)
    finally:
        broker.stop()
    assert "Traceback" not in broker.log()


# -- offline queues (OpenAuthPlugin, QueueLimitPlugin) -------------------------------


async def test_offline_session_gets_queued_messages_without_passwords() -> None:
    """amqtt's own anonymous mode queues nothing; OpenAuthPlugin keeps sessions real."""
    async with EmbeddedBroker("127.0.0.1", 0, max_queued=5) as broker:

        def scenario() -> list[bytes]:
            device = MqttProbe(broker.port, client_id="pblink-dev1", clean_session=False)
            device.connect()
            device.subscribe("pblink/dev1/down")
            device.close()
            server = MqttProbe(broker.port, client_id="srv").connect()
            for i in range(8):
                server.publish("pblink/dev1/down", f"u|0badcafe|{i}".encode())
            server.close()
            again = MqttProbe(broker.port, client_id="pblink-dev1", clean_session=False)
            again.connect()
            try:
                assert again.session_present
                got = again.wait_for(5)
                # amqtt flags queued messages retain=1 (a known bug the bridge tolerates)
                return [payload for _, payload, _ in got]
            finally:
                again.close()

        payloads = await asyncio.to_thread(scenario)
        # At most max_queued kept, the oldest dropped first.
        assert payloads == [f"u|0badcafe|{i}".encode() for i in range(3, 8)]
