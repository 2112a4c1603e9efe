"""The `pblink` command line: help, one-line errors and exit codes, tail, send, passwd, broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from conftest import (
    ROOT,
    TEST_TIMEOUT,
    BrokerProcess,
    MqttProbe,
    amqtt_process,
    free_port,
    wait_for_port,
)
from paho.mqtt.enums import CallbackAPIVersion

from broker.credentials import amqtt_users, write_amqtt_users
from pblink import cli
from pblink.cmd_tail import TailPrinter
from pblink.common import EXIT_REFUSED, EXIT_TIMEOUT, EXIT_UNREACHABLE, EXIT_USAGE

PBLINK = [sys.executable, "-m", "pblink"]


def pblink(*args: str, timeout: float = TEST_TIMEOUT, stdin: str | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PBLINK, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, input=stdin, env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pblink"), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def broker_args(broker: BrokerProcess) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(broker.port), "--connect-timeout", "5"]


# -- help -----------------------------------------------------------------------


def test_top_level_help_lists_every_command() -> None:
    proc = pblink("--help")
    assert proc.returncode == 0
    for name in cli.command_names():
        assert name in proc.stdout
    assert "exit status" in proc.stdout


@pytest.mark.parametrize("command", cli.command_names())
def test_help_of_every_command(command: str) -> None:
    proc = pblink(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert proc.stdout.startswith(f"usage: pblink {command}")
    assert "exit status: 0 " in proc.stdout
    # the codes listed are the ones this command can return: only the commands
    # that connect to a broker list "broker unreachable" (3)
    local = command in ("install", "flash", "build-firmware", "passwd", "broker", "bench")
    assert ("broker unreachable" in proc.stdout) != local, proc.stdout
    # only pblink install runs a tool with a time limit of its own
    assert ("timed out" in proc.stdout) == (not local or command == "install"), proc.stdout
    last = proc.stdout.strip().splitlines()[-2:]
    assert any(line.startswith("exit status: 0 ") for line in last), last  # at the end
    if command == "bench":  # its 3 is a missed goal
        assert "3 measured" in proc.stdout and "goal MISSED" in proc.stdout


@pytest.mark.parametrize(("command", "positional"),
                         [("server", []), ("install", ["a0"]), ("tail", ["dev1"])])
def test_unknown_option_is_named_by_its_command(command: str, positional: list[str]) -> None:
    proc = pblink(command, *positional, "--no-such-option")
    assert_one_line_error(proc, EXIT_USAGE, f"pblink {command}: error:",
                          "unrecognized arguments: --no-such-option", f"`pblink {command} --help`")


@pytest.mark.parametrize("argv", [["--no-such-option"], ["--no-such-option", "server"]])
def test_unknown_option_before_the_command_is_pblinks(argv: list[str]) -> None:
    proc = pblink(*argv)
    assert_one_line_error(proc, EXIT_USAGE, "pblink: error:",
                          "unrecognized arguments: --no-such-option", "`pblink --help`")


def test_verbosity_before_the_command_is_still_accepted() -> None:
    assert pblink("-vv", "send", "--help").returncode == 0


def test_broker_port_is_also_spelled_as_install_spells_it() -> None:
    from pblink.common import BrokerOptions

    args = cli.build_parser().parse_args(["tail", "dev1", "--broker-port", "1884"])
    assert BrokerOptions.from_args(args).port == 1884


def test_no_command_is_a_usage_error() -> None:
    proc = pblink()
    assert_one_line_error(proc, EXIT_USAGE, "pblink: error:", "COMMAND", "`pblink --help`")


# -- one-line errors --------------------------------------------------------------


@pytest.mark.parametrize("conn_id", ["bad/id", "a.b", "a b", "x" * 65, "+"])
def test_send_with_invalid_conn_id(conn_id: str) -> None:
    proc = pblink("send", conn_id, "hello", "--port", "1")
    assert_one_line_error(proc, EXIT_USAGE, "pblink send: error: conn_id", "A-Z a-z 0-9 _ -")


def test_tail_with_invalid_conn_id() -> None:
    assert_one_line_error(pblink("tail", "a#b", "--port", "1"), EXIT_USAGE, "conn_id 'a#b'")


def test_send_invalid_line() -> None:
    proc = pblink("send", "dev1", "x" * 1025, "--port", "1")
    assert_one_line_error(proc, EXIT_USAGE, "MAX_LINE")


@pytest.mark.parametrize("command", [["send", "dev1", "hello"], ["send", "dev1", "hi", "--no-qos"],
                                     ["tail", "dev1"]])
def test_dead_port_is_unreachable(command: list[str]) -> None:
    port = str(free_port())
    proc = pblink(*command, "--host", "127.0.0.1", "--port", port)
    assert_one_line_error(proc, EXIT_UNREACHABLE, f"cannot reach MQTT broker 127.0.0.1:{port}",
                          "refused")


def test_unknown_host_is_unreachable() -> None:
    proc = pblink("send", "dev1", "hi", "--host", "no-such-host.invalid", "--port", "1883")
    assert_one_line_error(proc, EXIT_UNREACHABLE, "unknown host 'no-such-host.invalid'")


@pytest.fixture
def amqtt_with_passwords(tmp_path: Path) -> BrokerProcess:
    passwd = tmp_path / "amqtt.passwd"
    write_amqtt_users(passwd, {"pblink.server": "server-pw", "dev1": "pw-1"})
    broker = amqtt_process(tmp_path, extra=["--password-file", str(passwd), "--acl"])
    broker.start()
    yield broker  # type: ignore[misc]
    broker.stop()


@pytest.mark.parametrize("login", [["--user", "pblink.server", "--password", "wrong"],
                                   ["--user", "nobody", "--password", "x"], []])
def test_refused_credentials(amqtt_with_passwords: BrokerProcess, login: list[str]) -> None:
    proc = pblink("send", "dev1", "hi", *broker_args(amqtt_with_passwords), *login)
    assert_one_line_error(proc, EXIT_REFUSED, "refused the connection", "not authorized")


def test_password_from_environment(amqtt_with_passwords: BrokerProcess) -> None:
    env = dict(os.environ, PBLINK_USER="pblink.server", PBLINK_PASSWORD="server-pw")
    proc = pblink("send", "dev1", "hi", "--no-qos", *broker_args(amqtt_with_passwords), env=env)
    assert proc.returncode == 0, proc.stderr


def test_tail_refused_subscription_under_acl(amqtt_with_passwords: BrokerProcess) -> None:
    """A device's credentials may not read another device (amqtt with --acl)."""
    proc = pblink("tail", "dev2", "--user", "dev1", "--password", "pw-1",
                  *broker_args(amqtt_with_passwords), "--timeout", "5")
    assert_one_line_error(proc, EXIT_REFUSED)


# -- tail -------------------------------------------------------------------------


def test_tail_prints_lines_and_status_of_a_device(any_broker: BrokerProcess) -> None:
    device = MqttProbe(any_broker.port, client_id="pblink-dev1").connect()
    other = MqttProbe(any_broker.port, client_id="pblink-dev2").connect()
    device.publish("pblink/dev1/status", b"online", retain=True)
    tail = subprocess.Popen(
        [*PBLINK, "tail", "dev1", *broker_args(any_broker), "--count", "1",
         "--timeout", str(TEST_TIMEOUT)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Until tail has subscribed nothing arrives: repeat the frames (the qos
        # line keeps its session and id, so tail prints it once).
        deadline = time.monotonic() + TEST_TIMEOUT
        while tail.poll() is None and time.monotonic() < deadline:
            other.publish("pblink/dev2/up", b"u|0badcafe|not dev1's")
            device.publish("pblink/dev1/up", b"h", qos=0)
            device.publish("pblink/dev1/up", b"q|0badcafe|1|1|hello | world")
            time.sleep(0.2)
        out, err = tail.communicate(timeout=TEST_TIMEOUT)
    finally:
        if tail.poll() is None:
            tail.kill()
        device.close()
        other.close()
    assert tail.returncode == 0, err
    # Other devices' traffic and heartbeats are not shown; status and the line once each.
    assert sorted(out.splitlines()) == ["status: online (retained)", "up: hello | world"]


def test_tail_stops_on_sigterm(amqtt_broker: BrokerProcess) -> None:
    tail = subprocess.Popen([*PBLINK, "-v", "tail", "dev1", *broker_args(amqtt_broker)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert tail.stderr is not None
        for line in tail.stderr:  # -v logs the subscription
            if "subscribed to pblink/dev1/up" in line:
                break
        tail.send_signal(signal.SIGTERM)
        assert tail.wait(timeout=TEST_TIMEOUT) == 0
    finally:
        if tail.poll() is None:
            tail.kill()
        tail.communicate()


def test_tail_count_not_reached_times_out(amqtt_broker: BrokerProcess) -> None:
    proc = pblink("tail", "dev1", *broker_args(amqtt_broker), "--count", "1", "--timeout", "0.5")
    assert_one_line_error(proc, EXIT_TIMEOUT, "0 of 1 line(s)")


def test_tail_printer_frames_mode() -> None:
    printer = TailPrinter("r/d/up", "r/d/down", "r/d/status", frames=True)
    assert printer.message("r/d/up", b"q|0badcafe|7|5|x") == ("up q 0badcafe #7 base 5: x", True)
    assert printer.message("r/d/up", b"q|0badcafe|7|5|x") == (
        "up q 0badcafe #7 base 5 (repeat): x", False)
    assert printer.message("r/d/down", b"a|0badcafe|7") == ("down a 0badcafe #7", False)
    assert printer.message("r/d/down", b"h") == ("down h", False)
    assert printer.message("r/d/down", b"u|0badcafe|y") == ("down u 0badcafe: y", True)
    assert printer.message("r/d/up", b"junk")[0] == "up: [malformed] junk"
    plain = TailPrinter("r/d/up", "r/d/down", "r/d/status")
    assert plain.message("r/d/up", b"junk") == (None, False)
    assert plain.message("r/d/status", b"offline") == ("status: offline", False)
    assert plain.message("r/d/status", b"offline") == (None, False)  # not a change


# -- send -------------------------------------------------------------------------


class FakeDevice:
    """A device's MQTT side: records frames on its down topic, acks qos frames if asked."""

    def __init__(self, port: int, conn_id: str = "dev1", ack: bool = True) -> None:
        self.frames: list[bytes] = []
        self.got = threading.Event()
        self.up = f"pblink/{conn_id}/up"
        self.ack = ack
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pblink-{conn_id}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        probe_ok = threading.Event()
        self.client.on_subscribe = lambda *a: probe_ok.set()
        self.client.subscribe(f"pblink/{conn_id}/down", 1)
        assert probe_ok.wait(TEST_TIMEOUT)
        self.client.publish(f"pblink/{conn_id}/status", b"online", qos=1, retain=True)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        self.frames.append(payload)
        self.got.set()
        if self.ack and payload.startswith(b"q|"):
            _, session, msg_id, _ = payload.split(b"|", 3)
            client.publish(self.up, b"a|" + session + b"|" + msg_id, qos=0)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_send_waits_for_the_ack(any_broker: BrokerProcess) -> None:
    device = FakeDevice(any_broker.port)
    try:
        proc = pblink("send", "dev1", "hello | there", *broker_args(any_broker), "-v")
    finally:
        device.close()
    assert proc.returncode == 0, proc.stderr
    assert "acknowledged" in proc.stderr
    qos = [f for f in device.frames if f.startswith(b"q|")]
    assert qos and qos[0].endswith(b"|1|1|hello | there")


def test_send_no_qos_sends_one_u_frame(any_broker: BrokerProcess) -> None:
    device = FakeDevice(any_broker.port)
    try:
        proc = pblink("send", "dev1", "quick", "--no-qos", *broker_args(any_broker))
        assert proc.returncode == 0, proc.stderr
        assert device.got.wait(TEST_TIMEOUT)
    finally:
        device.close()
    assert len(device.frames) == 1
    assert device.frames[0].startswith(b"u|") and device.frames[0].endswith(b"|quick")


def test_send_without_ack_times_out_after_retransmitting(amqtt_broker: BrokerProcess) -> None:
    device = FakeDevice(amqtt_broker.port, ack=False)
    try:
        proc = pblink("send", "dev1", "lost", *broker_args(amqtt_broker), "--timeout", "1",
                      "--retry-ms", "200")
    finally:
        device.close()
    assert_one_line_error(proc, EXIT_TIMEOUT, "no acknowledgement from device dev1 within 1 s",
                          "device status: online")
    assert len(device.frames) >= 2  # the first transmission and at least one retransmission
    assert len(set(device.frames)) == 1  # the same frame each time


# -- passwd -----------------------------------------------------------------------


def test_passwd_amqtt_from_stdin(tmp_path: Path) -> None:
    path = tmp_path / "amqtt.passwd"
    proc = pblink("passwd", "--amqtt", str(path), "--password-stdin", "dev1", stdin="pw-1\n")
    assert proc.returncode == 0, proc.stderr
    assert "device dev1: written to" in proc.stdout
    proc = pblink("passwd", "--server", "--amqtt", str(path), "--password", "s", "pblink.server")
    assert proc.returncode == 0, proc.stderr
    assert amqtt_users(path) == ["dev1", "pblink.server"]
    proc = pblink("passwd", "--delete", "--amqtt", str(path), "dev1")
    assert proc.returncode == 0 and amqtt_users(path) == ["pblink.server"]


def test_passwd_errors(tmp_path: Path) -> None:
    path = str(tmp_path / "f")
    assert_one_line_error(pblink("passwd", "dev1", "--password", "x"), EXIT_USAGE,
                          "--mosquitto FILE and/or --amqtt FILE")
    assert_one_line_error(pblink("passwd", "--amqtt", path, "--password", "x", "bad/name"),
                          EXIT_USAGE, "conn_id 'bad/name'")
    assert_one_line_error(pblink("passwd", "--amqtt", path, "dev1", stdin=""), EXIT_USAGE,
                          "no password")
    env = dict(os.environ, PATH=str(tmp_path))
    proc = subprocess.run([*PBLINK, "passwd", "--mosquitto", path, "--password", "x", "dev1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=TEST_TIMEOUT, env=env)
    assert_one_line_error(proc, 1, "mosquitto_passwd is not installed")


# -- broker -----------------------------------------------------------------------


def test_pblink_broker_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    with open(tmp_path / "broker.log", "wb") as log:
        proc = subprocess.Popen([*PBLINK, "broker", "--port", str(port)], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, TEST_TIMEOUT, exited=lambda: None if proc.poll() is None else
                          f"pblink broker exited with {proc.returncode}")
            MqttProbe(port).connect().close()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=TEST_TIMEOUT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert f"listening on 127.0.0.1:{port}" in (tmp_path / "broker.log").read_text()


def test_pblink_broker_port_in_use(amqtt_broker: BrokerProcess) -> None:
    proc = pblink("broker", "--port", str(amqtt_broker.port))
    assert_one_line_error(proc, 1, "cannot start the broker", "in use")


# -- server -----------------------------------------------------------------------


def test_pblink_server_unreachable_broker_is_one_line() -> None:
    proc = pblink("server", "--host", "127.0.0.1", "--port", str(free_port()), "--state-dir", "")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "cannot reach MQTT broker" in proc.stderr


def test_pblink_server_answers_a_device_and_stops_on_sigterm(
    amqtt_broker: BrokerProcess, tmp_path: Path
) -> None:
    device = FakeDevice(amqtt_broker.port)
    server = subprocess.Popen(
        [*PBLINK, "server", "--host", "127.0.0.1", "--port", str(amqtt_broker.port),
         "--ids", "dev1", "--state-dir", str(tmp_path), "--timeout-ms", "500"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + TEST_TIMEOUT
        # Repeat the frame until the server (once subscribed) acknowledges it.
        while time.monotonic() < deadline and not any(f.startswith(b"a|") for f in device.frames):
            assert server.poll() is None, server.communicate()[0]
            device.client.publish("pblink/dev1/up", b'q|0badcafe|1|1|["dev1", 1, 0]', qos=1)
            time.sleep(0.2)
        while time.monotonic() < deadline and not any(f.startswith(b"q|") for f in device.frames):
            time.sleep(0.05)
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=TEST_TIMEOUT)
    finally:
        if server.poll() is None:
            server.kill()
        device.close()
    assert b"a|0badcafe|1" in device.frames, (device.frames, out)
    replies = [f for f in device.frames if f.startswith(b"q|")]
    assert replies and replies[0].endswith(b'|["dev1", 1, 0, 1]'), (device.frames, out)
    assert server.returncode == 0, out
    assert "Traceback" not in out
