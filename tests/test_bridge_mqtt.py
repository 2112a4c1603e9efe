"""The ESP8266 MQTT client (esp_bridge/mqtt.py) under the MicroPython unix port.

Each test runs a MicroPython script (the SCRIPT below, one scenario per
test) against a real broker: the embedded amqtt and Mosquitto. pytest
watches from the outside with paho-mqtt, restarts or freezes the broker,
kills the MicroPython process, or puts a small TCP proxy or fake broker in
the path to create the faults a real network makes.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from conftest import ROOT, TEST_TIMEOUT, BrokerProcess, free_port, mosquitto_process
from test_bridge_support import run_mpy

from virtual_bench.bridge_rig import ESP_BRIDGE, MpyProcess, mpy_env

SCRIPT = r'''
import sys
import time

from mqtt import MQTTClient, MQTTError, put_len

# The client is a state machine (no asyncio): the owner's loop calls wait(ms)
# and step(). The helpers below are this script's loop; they and inflight(),
# pending(), wait_acked() are not the client's: the bridge never calls them,
# and every method costs the ESP8266 heap (docs/FIRMWARE.md). The client's
# state is one list, c._v, indexed by mqtt.py's const()s, which are not
# module attributes: pytest puts their values at the top of this script.


def inflight(c):
    return c._v[_FN]


def pending(c):
    # incoming messages the client holds (one at most: read in place)
    return 0 if c.get() is None else 1


inbox = []  # messages taken from the client (on its one topic): (payload, retain) copies


def turn(c, ms=10):
    # one turn of the loop, as the bridge's: wait, step, then take the message
    # the client holds (copied out and released: the client reads on)
    c.wait(ms)
    c.step()
    m = c.get()
    if m is not None:
        inbox.append((bytes(m), c.get(2)))
        c.release()


def run_until(c, cond, ms):
    t0 = time.ticks_ms()
    while not cond():
        if time.ticks_diff(time.ticks_ms(), t0) > ms:
            return False
        turn(c)
    return True


def sleep(c, ms):
    run_until(c, lambda: False, ms)


def connect(c, host, port, tls=False):
    # connect() and the steps to CONNACK: the session-present flag; raises the
    # attempt's MQTTError or OSError
    c.connect(host, port, tls)
    while c.connecting():
        turn(c)
    if not c.isconnected() and c.err is not None:
        raise c.err
    return c.present


def subscribe(c, topic, qos=1):
    c.subscribe(topic, qos)
    while c.isconnected() and c.suback < 0:
        turn(c)
    if not c.isconnected():
        raise OSError(107)
    if c.suback == 0x80:
        raise MQTTError("subscription refused")
    return c.suback


def publish(c, topic, msg, qos=0, retain=False):
    # as the bridge does: again after a step while the client cannot take it
    while True:
        r = c.publish(topic, msg, qos, retain)
        if r >= 0:
            return r
        turn(c)


def wait_acked(c, ms=30000):
    t0 = time.ticks_ms()
    while inflight(c):
        if not c.isconnected():
            raise OSError(107)
        if time.ticks_diff(time.ticks_ms(), t0) > ms:
            raise OSError(110)
        turn(c)


def next_msg(c, ms):
    # the next incoming (payload, retain); OSError(ETIMEDOUT) after ms
    t0 = time.ticks_ms()
    while True:
        if inbox:
            return inbox.pop(0)
        if time.ticks_diff(time.ticks_ms(), t0) > ms:
            raise OSError(110)
        turn(c)


scen = sys.argv[1]
port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
HOST = "127.0.0.1"


def out(*a):
    print(*a)


def varint():
    cases = [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"),
             (16384, b"\x80\x80\x01"), (2097151, b"\xff\xff\x7f"),
             (2097152, b"\x80\x80\x80\x01"), (268435455, b"\xff\xff\xff\x7f")]
    buf = bytearray(5)
    for n, enc in cases:
        i = put_len(buf, 0, n)
        assert bytes(buf[:i]) == enc, (n, bytes(buf[:i]))
    for bad in (-1, 268435456):
        try:
            put_len(buf, 0, bad)
            raise AssertionError(bad)
        except ValueError:
            pass
    assert MQTTError("", 4).args[0] == "refused: bad user name or password"
    assert MQTTError("", 5).args[0] == "refused: not authorised"
    assert MQTTError("", 9).args[0] == "refused: code 9"
    assert MQTTError("x", 9).code == 9 and MQTTError("bad CONNACK").args[0] == "bad CONNACK"
    out("VARINT OK")


def basic():
    c = MQTTClient("mp-basic", keepalive_s=2, response_ms=2000, clean_session=True)
    present = connect(c, HOST, port)
    out("CONNECTED", present)
    out("GRANTED", subscribe(c, "mp/basic/in", 1))
    publish(c, "mp/basic/in", b"zero", 0)
    publish(c, b"mp/basic/in", b"one", 1)
    publish(c, "mp/basic/in", b"B" * 1100, 1, True)
    publish(c, "mp/basic/out", b"out", 1)  # not subscribed: not delivered
    wait_acked(c)
    out("ACKED", inflight(c))
    got = []
    for _ in range(3):
        m, r = next_msg(c, 3000)
        got.append(len(m))
    out("GOT", sorted(got))
    for bad in ("", "x" * 16379):
        try:
            c.publish(bad, b"x")
            out("BAD TOPIC ACCEPTED")
        except ValueError:
            pass
    for bad in ("", "mp/basic/#", "mp/+/in", "x" * 1157):  # 1157: past the receive buffer
        try:
            c.subscribe(bad)
            out("BAD SUBSCRIPTION ACCEPTED")
        except ValueError:
            pass
    sleep(c, 3500)  # longer than 1.5 x keepalive: pings keep it up
    out("ALIVE", c.isconnected(), c.why)
    publish(c, "mp/basic/in", b"", 1, True)  # clear the retained message
    wait_acked(c)
    c.disconnect()
    out("CLOSED", c.isconnected())


def will():
    c = MQTTClient("mp-will", keepalive_s=60, will=("mp/will/status", b"offline", 1, True))
    connect(c, HOST, port)
    publish(c, "mp/will/status", b"online", 1, True)
    wait_acked(c)
    out("READY")
    while True:
        turn(c, 100)


def reconnect():
    c = MQTTClient("mp-rc", keepalive_s=2, response_ms=1000, clean_session=False)
    connect(c, HOST, port)
    subscribe(c, "mp/rc/x", 1)
    out("READY")
    run_until(c, lambda: not c.isconnected(), 20000)
    out("DOWN", c.why)
    t0 = time.ticks_ms()
    first = True
    while True:  # as the bridge does: reconnect, resubscribe, until it works
        try:
            connect(c, HOST, port)
            if first:
                out("RECONNECTED after", time.ticks_diff(time.ticks_ms(), t0))
                first = False
            subscribe(c, "mp/rc/x", 1)
            publish(c, "mp/rc/x", b"back", 1)
            m, r = next_msg(c, 3000)
            break
        except (OSError, MQTTError) as e:
            out("RETRY", repr(e), c.isconnected(), c.why)
            sleep(c, 200)
    out("BACK", m.decode())
    c.disconnect()


def retry():
    c = MQTTClient("mp-retry", keepalive_s=30, response_ms=800, retries=3, clean_session=True)
    connect(c, HOST, port)
    pid = publish(c, "mp/retry/x", b"r1", 1)
    out("PUBLISHED", pid)
    wait_acked(c, 5000)
    out("ACKED", inflight(c), c.isconnected())
    c.disconnect()


def resend():
    # QoS 1 publishes unacknowledged when the connection drops are resent after
    # the reconnect with DUP and their packet ids, in acceptance order (the
    # fake broker acknowledges only B; D takes B's place in the table)
    c = MQTTClient("mp-resend", keepalive_s=30, response_ms=5000, max_inflight=3)
    connect(c, HOST, port)
    for m in (b"A", b"B", b"C"):
        publish(c, "mp/r", m, 1)
    run_until(c, lambda: inflight(c) < 3, 5000)
    publish(c, "mp/r", b"D", 1)
    run_until(c, lambda: not c.isconnected(), 5000)
    out("DOWN", inflight(c))
    connect(c, HOST, port)
    wait_acked(c, 5000)
    out("RESENT", inflight(c), c.isconnected())
    c.disconnect()


def refused():
    user = sys.argv[3]
    pw = sys.argv[4]
    c = MQTTClient("mp-ref", user=user, password=pw, response_ms=3000, clean_session=True)
    try:
        connect(c, HOST, port)
        out("ACCEPTED")
        c.disconnect()
    except MQTTError as e:
        out("REFUSED", e.code, e.args[0])


def backpressure():
    n = int(sys.argv[3])
    c = MQTTClient("mp-bp", keepalive_s=2, response_ms=1500, clean_session=True)
    connect(c, HOST, port)
    subscribe(c, "mp/bp", 1)
    out("READY")
    most = 0
    t0 = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t0) < 4000:  # a slow consumer: take nothing
        most = max(most, pending(c))
        c.wait(50)
        c.step()
    out("PAUSED", most, c._v[_RS] == _R_HOLD, c.isconnected(), c.why)
    seq = []
    while len(seq) < n:
        m, r = next_msg(c, 5000)
        seq.append(int(m))
        most = max(most, pending(c))
    out("BP", len(seq), seq == list(range(n)), most, c.isconnected())
    c.disconnect()


def concurrent():
    c = MQTTClient("mp-cc", keepalive_s=30, response_ms=5000, clean_session=True)
    connect(c, HOST, port)
    subscribe(c, "mp/cc", 1)
    big = b"Z" * 300000  # many partial writes: the others wait their turn meanwhile
    publish(c, "mp/cc", big, 0)
    for name in ("bb", "c", "dddd"):
        publish(c, "mp/cc", b"from-" + name.encode(), 1)
    wait_acked(c)
    got = []
    for _ in range(3):
        m, r = next_msg(c, 5000)
        got.append(m.decode())
    sleep(c, 300)
    out("CONCURRENT", sorted(got), c.oversize, c.isconnected())
    c.disconnect()


def malformed():
    c = MQTTClient("mp-mal", keepalive_s=30, response_ms=1000, max_msg=1152)
    for i in range(4):
        connect(c, HOST, port)
        if i < 3:
            ok = run_until(c, lambda: not c.isconnected(), 3000)
            out("DROP", i, ok, c.why)
        else:
            subscribe(c, "mp/x", 1)
            m, r = next_msg(c, 3000)
            out("OVERSIZE", c.oversize, m.decode(), c.isconnected())
            sleep(c, 300)
            c.disconnect()


def forbidden():
    # MQTT 3.1.1 "MUST NOT"s refused where they enter, before anything is sent
    for args in (("mp-f", "", "pw", False), ("", "", "", False), ("", "u", "pw", False)):
        try:
            MQTTClient(args[0], args[1], args[2], clean_session=args[3])
            out("SESSION ACCEPTED", args)
        except ValueError as e:
            out("REFUSED", e)
    c = MQTTClient("", clean_session=True)  # allowed: the broker assigns an id
    try:
        c.configure("mp-f", "", "pw")
        out("CONFIGURE ACCEPTED")
    except ValueError as e:
        out("REFUSED", e)
    c = MQTTClient("mp-forbidden", keepalive_s=10, response_ms=3000, clean_session=True)
    connect(c, HOST, port)
    for topic in ("mp/f/+", "mp/#", "+"):
        try:
            c.publish(topic, b"x", 1)
            out("WILDCARD SENT", topic)
        except ValueError as e:
            out("REFUSED", e)
    try:
        c.subscribe("mp/f/q", 2)
        out("QOS2 SUBSCRIBED")
    except ValueError as e:
        out("REFUSED", e)
    try:
        c.subscribe("mp/f/#", 1)
        out("WILDCARD SUBSCRIBED")
    except ValueError as e:
        out("REFUSED", e)
    out("STILL CONNECTED", c.isconnected(), inflight(c))
    c.disconnect()
    # an in-flight QoS 1 publish left from before is not resent into a new clean session
    v = c._v
    v[_F] = 77
    v[_F + 1] = b"mp/f/stale"
    v[_F + 2] = b"stale"
    v[_F + 5] = 0
    v[_FN] = 1
    connect(c, HOST, port)
    out("CLEAN INFLIGHT", inflight(c))
    publish(c, "mp/f/fresh", b"fresh", 1)
    wait_acked(c)
    c.disconnect()
    out("FORBIDDEN DONE")


def longtopic():
    # the longest topics link_core.names allows: root 128, conn_id 64 characters
    base = "r" * 63 + "/" + "s" * 64 + "/" + "c" * 64
    down = base + "/down"  # 198 characters
    status = base + "/status"  # 200
    c = MQTTClient("mp-long", keepalive_s=10, response_ms=3000, clean_session=True,
                   will=(status, b"offline", 1, True))
    connect(c, HOST, port)
    subscribe(c, "mp/long/old", 1)  # still the broker's after the next subscribe()
    out("GRANTED", subscribe(c, down, 1))
    publish(c, status, b"online", 1, True)
    publish(c, "mp/long/old", b"old", 1)  # delivered, not taken: acknowledged, counted
    publish(c, down, b"d" * 1152, 1)
    publish(c, down, b"zero", 0)
    wait_acked(c)
    got = sorted(len(next_msg(c, 3000)[0]) for _ in range(2))
    sleep(c, 300)
    out("LONG", got, c.oversize, inflight(c), c.isconnected())
    out("READY")
    while True:
        turn(c, 100)


def presession():
    # a persistent session's queue comes right after CONNACK, before any
    # subscribe() on this connection: configure() names the topic taken
    c = MQTTClient("mp-pre", keepalive_s=10, response_ms=3000)
    if sys.argv[3] == "1":
        connect(c, HOST, port)
        subscribe(c, "mp/pre", 1)
        c.disconnect()
        out("SUBSCRIBED")
        return
    c.configure("mp-pre", keepalive_s=10, response_ms=3000, topic="mp/pre")
    connect(c, HOST, port)
    m, r = next_msg(c, 5000)
    out("PRE", m.decode(), c.oversize)
    c.disconnect()


def tls():
    c = MQTTClient("mp-tls", keepalive_s=10, response_ms=5000, clean_session=True)
    connect(c, "localhost", port, True)
    subscribe(c, "mp/tls", 1)
    publish(c, "mp/tls", b"secret", 1)
    m, r = next_msg(c, 5000)
    out("TLS", m.decode())
    c.disconnect()


globals()[scen]()
'''


def _script(tmp_path: Path) -> Path:
    # mqtt.py's const()s the script reads the client's state with
    consts = re.findall(r"^(_[A-Z0-9_]+) = const\((\w+)\)",
                        (ESP_BRIDGE / "mqtt.py").read_text(), re.M)
    f = tmp_path / "mqtt_scenarios.py"
    f.write_text("".join(f"{k} = {n}\n" for k, n in consts) + SCRIPT)
    return f


def start(micropython_bin: str, tmp_path: Path, *args: object) -> MpyProcess:
    argv = [micropython_bin, str(_script(tmp_path)), *[str(a) for a in args]]
    return MpyProcess(argv, mpy_env(ESP_BRIDGE, ROOT))


def finish(p: MpyProcess) -> str:
    rc = p.wait()
    out = p.output()
    assert rc == 0, out
    assert "Traceback" not in out, out
    return out


class Watcher:
    """A paho subscriber recording (topic, payload, qos, retain)."""

    def __init__(self, port: int, topic: str, client_id: str = "watcher") -> None:
        self.messages: list[tuple[str, bytes, int, bool]] = []
        self._cv = threading.Condition()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.c.on_message = self._on_message
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.c.subscribe(topic, 1)
        assert subscribed.wait(TEST_TIMEOUT), "paho subscription not acknowledged"

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        with self._cv:
            self.messages.append((msg.topic, msg.payload, msg.qos, bool(msg.retain)))
            self._cv.notify_all()

    def wait(self, pred: Callable[[tuple[str, bytes, int, bool]], bool],
             timeout: float = TEST_TIMEOUT) -> tuple[str, bytes, int, bool]:
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for m in self.messages:
                    if pred(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching message; got {self.messages[-10:]}")
                self._cv.wait(left)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def watcher_factory() -> Iterator[Callable[..., Watcher]]:
    made: list[Watcher] = []

    def make(port: int, topic: str, client_id: str = "watcher") -> Watcher:
        w = Watcher(port, topic, client_id)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def test_varint_and_reasons(micropython_bin: str, tmp_path: Path) -> None:
    out = finish(start(micropython_bin, tmp_path, "varint"))
    assert "VARINT OK" in out


def test_connect_publish_subscribe_both_qos(micropython_bin: str, tmp_path: Path,
                                            any_broker: BrokerProcess,
                                            watcher_factory: Callable[..., Watcher]) -> None:
    w = watcher_factory(any_broker.port, "mp/basic/#")
    out = finish(start(micropython_bin, tmp_path, "basic", any_broker.port))
    assert "CONNECTED False" in out  # clean session: no session present
    assert "GRANTED 1" in out
    assert "ACKED 0" in out
    assert "GOT [3, 4, 1100]" in out, out
    assert "BAD TOPIC ACCEPTED" not in out and "BAD SUBSCRIPTION ACCEPTED" not in out, out
    assert "ALIVE True" in out  # keepalive 2 s, 3.5 s idle: PINGREQ/PINGRESP kept it up
    assert "CLOSED False" in out
    q1 = w.wait(lambda m: m[1] == b"one")
    assert q1[0] == "mp/basic/in" and q1[2] == 1
    assert w.wait(lambda m: m[1] == b"zero")[0] == "mp/basic/in"
    assert w.wait(lambda m: m[1] == b"B" * 1100)[0] == "mp/basic/in"
    assert w.wait(lambda m: m[0] == "mp/basic/out")[1] == b"out"


def test_will_published_when_process_dies(micropython_bin: str, tmp_path: Path,
                                          any_broker: BrokerProcess,
                                          watcher_factory: Callable[..., Watcher]) -> None:
    w = watcher_factory(any_broker.port, "mp/will/status")
    with start(micropython_bin, tmp_path, "will", any_broker.port) as p:
        p.wait_for("READY")
        w.wait(lambda m: m[1] == b"online")
        p.proc.send_signal(signal.SIGKILL)  # the socket dies with the process
        p.proc.wait()
    m = w.wait(lambda m: m[1] == b"offline")
    assert m[2] == 1


def test_reconnect_after_broker_restart(micropython_bin: str, tmp_path: Path,
                                        any_broker: BrokerProcess) -> None:
    with start(micropython_bin, tmp_path, "reconnect", any_broker.port) as p:
        p.wait_for("READY")
        any_broker.restart()
        down = p.wait_for("DOWN")
        assert "read" in down or "write" in down, down
        p.wait_for("RECONNECTED")
        assert p.wait_for("BACK") == "BACK back"
        assert p.wait() == 0


def test_dead_broker_detected_by_unanswered_ping(micropython_bin: str, tmp_path: Path,
                                                 any_broker: BrokerProcess) -> None:
    assert any_broker.proc is not None
    with start(micropython_bin, tmp_path, "reconnect", any_broker.port) as p:
        p.wait_for("READY")
        any_broker.proc.send_signal(signal.SIGSTOP)  # silent: the socket stays open
        try:
            down = p.wait_for("DOWN", timeout=10)
        finally:
            any_broker.proc.send_signal(signal.SIGCONT)
        assert "no PINGRESP" in down, down
        p.wait_for("RECONNECTED")
        p.wait_for("BACK")


class PubackSwallower:
    """TCP proxy to the broker that drops the first PUBACK going to the client
    and records every PUBLISH the client sends (first byte, packet id)."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.port = free_port()
        self.publishes: list[tuple[int, int]] = []
        self.dropped = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        assert self._ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        srv = await asyncio.start_server(self._conn, "127.0.0.1", self.port)
        self._ready.set()
        async with srv:
            await srv.serve_forever()

    @staticmethod
    async def _packet(r: asyncio.StreamReader) -> bytes:
        head = await r.readexactly(1)
        n, shift, raw = 0, 0, b""
        while True:
            b = await r.readexactly(1)
            raw += b
            n |= (b[0] & 0x7F) << shift
            shift += 7
            if not b[0] & 0x80:
                break
        return head + raw + await r.readexactly(n)

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, up: bool) -> None:
        try:
            while True:
                pkt = await self._packet(r)
                kind = pkt[0] & 0xF0
                if up and kind == 0x30:
                    i = 1
                    while pkt[i] & 0x80:
                        i += 1
                    tl = (pkt[i + 1] << 8) | pkt[i + 2]
                    pid = (pkt[i + 3 + tl] << 8) | pkt[i + 4 + tl]
                    self.publishes.append((pkt[0], pid))
                if not up and kind == 0x40 and not self.dropped:
                    self.dropped += 1
                    continue
                w.write(pkt)
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    async def _conn(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        br, bw = await asyncio.open_connection("127.0.0.1", self.broker_port)
        await asyncio.gather(self._pump(cr, bw, True), self._pump(br, cw, False))


def test_qos1_retried_with_dup_when_puback_lost(micropython_bin: str, tmp_path: Path,
                                                any_broker: BrokerProcess,
                                                watcher_factory: Callable[..., Watcher]) -> None:
    w = watcher_factory(any_broker.port, "mp/retry/#")
    proxy = PubackSwallower(any_broker.port)
    out = finish(start(micropython_bin, tmp_path, "retry", proxy.port))
    assert "ACKED 0 True" in out, out  # acknowledged, on the same connection
    assert proxy.dropped == 1
    assert len(proxy.publishes) == 2, proxy.publishes
    (first, pid1), (second, pid2) = proxy.publishes
    assert first == 0x32 and second == 0x3A  # QoS 1, then QoS 1 with DUP
    assert pid1 == pid2
    assert w.wait(lambda m: m[0] == "mp/retry/x")[1] == b"r1"


@pytest.fixture
def secured_mosquitto(tmp_path: Path) -> Iterator[BrokerProcess]:
    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        pytest.skip("mosquitto_passwd is not installed")
    pw_file = tmp_path / "passwd"
    subprocess.run([passwd, "-c", "-b", str(pw_file), "dev1", "s3cret"], check=True,
                   capture_output=True)
    pw_file.chmod(0o644)
    conf = [f"password_file {pw_file}", *_stay_root()]
    broker = mosquitto_process(tmp_path, conf_lines=conf)
    # the conftest config says allow_anonymous true first: override it
    conf_path = tmp_path / "mosquitto-test.conf"
    broker.start = _with_conf(broker, conf_path, "allow_anonymous false")  # type: ignore[method-assign]
    broker.start()
    yield broker
    broker.stop()


def _stay_root() -> list[str]:
    """Started as root, Mosquitto drops to its own user, which cannot read
    pytest's private tmp_path (password, key files): 'user root' keeps it."""
    return ["user root"] if os.geteuid() == 0 else []


def _with_conf(broker: BrokerProcess, conf_path: Path, line: str) -> Callable[[], None]:
    original = BrokerProcess.start

    def start() -> None:
        text = conf_path.read_text().replace("allow_anonymous true", line)
        conf_path.write_text(text)
        original(broker)

    return start


@pytest.mark.mosquitto
def test_refused_credentials_are_clear_errors(micropython_bin: str, tmp_path: Path,
                                              secured_mosquitto: BrokerProcess) -> None:
    port = secured_mosquitto.port
    ok = finish(start(micropython_bin, tmp_path, "refused", port, "dev1", "s3cret"))
    assert "ACCEPTED" in ok
    bad = finish(start(micropython_bin, tmp_path, "refused", port, "dev1", "wrong"))
    anon = finish(start(micropython_bin, tmp_path, "refused", port, "", ""))
    # Mosquitto 2 answers a wrong password with 5 (not authorised) on MQTT 3.1.1
    # and anonymous with 5; code 4 is mapped too (see test_varint_and_reasons)
    for out in (bad, anon):
        line = next(x for x in out.splitlines() if x.startswith("REFUSED"))
        code = int(line.split()[1])
        assert code in (4, 5), line
        assert line.endswith("refused: bad user name or password" if code == 4
                             else "refused: not authorised"), line


def test_backpressure_stops_reading(micropython_bin: str, tmp_path: Path,
                                    any_broker: BrokerProcess) -> None:
    n = 40
    with start(micropython_bin, tmp_path, "backpressure", any_broker.port, n) as p:
        p.wait_for("READY")
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bp-pub")
        pub.connect("127.0.0.1", any_broker.port)
        pub.loop_start()
        try:
            infos = [pub.publish("mp/bp", str(i), qos=1) for i in range(n)]
            for info in infos:
                info.wait_for_publish(TEST_TIMEOUT)
            paused = p.wait_for("PAUSED")
            # one message held in place, the socket not read meanwhile; pings
            # went on (keepalive 2 s, 4 s paused) so nothing was dropped
            assert paused == "PAUSED 1 True True ", paused
            assert p.wait_for("BP") == "BP 40 True 1 True"
        finally:
            pub.loop_stop()
            pub.disconnect()
        assert p.wait() == 0


def test_concurrent_publishers_do_not_mix_packets(micropython_bin: str, tmp_path: Path,
                                                  any_broker: BrokerProcess) -> None:
    out = finish(start(micropython_bin, tmp_path, "concurrent", any_broker.port))
    assert "CONCURRENT ['from-bb', 'from-c', 'from-dddd'] 1 True" in out, out


class FakeBroker:
    """Answers CONNECT, then misbehaves: one scenario per connection."""

    def __init__(self) -> None:
        self.port = free_port()
        self.n = 0
        self.pubacks: list[bytes] = []
        self._srv = socket.create_server(("127.0.0.1", self.port))
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    @staticmethod
    def _recv(s: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = s.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def _read_packet(self, s: socket.socket) -> bytes:
        head = self._recv(s, 1)
        n, shift, raw = 0, 0, b""
        while True:
            b = self._recv(s, 1)
            raw += b
            n |= (b[0] & 0x7F) << shift
            shift += 7
            if not b[0] & 0x80:
                break
        return head + raw + self._recv(s, n)

    def _run(self) -> None:
        while True:
            try:
                s, _ = self._srv.accept()
            except OSError:
                return
            with s:
                s.settimeout(5)
                self._read_packet(s)  # CONNECT
                s.sendall(b"\x20\x02\x00\x00")
                i = self.n
                self.n += 1
                try:
                    self._misbehave(i, s)
                except OSError:
                    pass

    def _misbehave(self, i: int, s: socket.socket) -> None:
        if i == 0:
            s.sendall(b"\xf0\x00")  # reserved packet type
        elif i == 1:
            # PUBLISH whose topic length runs past its remaining length
            s.sendall(b"\x30\x04\x00\x09ab")
        elif i == 2:
            s.sendall(b"\x30\xff\xff\xff\xff\x01")  # remaining length of 5 bytes
        else:
            sub = self._read_packet(s)  # SUBSCRIBE
            s.sendall(b"\x90\x03" + sub[2:4] + b"\x01")
            # dropped, acknowledged, counted: QoS 1 id 7 of 2000 bytes (past
            # max_msg); id 8 on another topic as long as the one taken; id 9 on
            # a topic of 3000 bytes (past the receive buffer)
            for body in (b"\x00\x04mp/x\x00\x07" + b"Z" * 2000, b"\x00\x04mp/y\x00\x08no",
                         b"\x0b\xb8" + b"t" * 3000 + b"\x00\x09no"):
                n = len(body)
                s.sendall(b"\x32" + (bytes([n]) if n < 128 else bytes([n & 0x7F | 0x80, n >> 7]))
                          + body)
            s.sendall(b"\x30\x08\x00\x04mp/xok")
            for _ in range(3):
                self.pubacks.append(self._read_packet(s))
        # wait for the client to hang up
        while s.recv(100):
            pass

    def close(self) -> None:
        self._srv.close()


def test_malformed_packets_drop_the_connection(micropython_bin: str, tmp_path: Path) -> None:
    fb = FakeBroker()
    try:
        out = finish(start(micropython_bin, tmp_path, "malformed", fb.port))
    finally:
        fb.close()
    lines = [x for x in out.splitlines() if x.startswith("DROP")]
    assert len(lines) == 3, out
    assert all(x.startswith(f"DROP {i} True malformed") for i, x in enumerate(lines)), lines
    # an oversized message is skipped and acknowledged; the connection stays up
    assert "OVERSIZE 3 ok True" in out, out
    assert fb.pubacks == [b"\x40\x02\x00" + bytes([i]) for i in (7, 8, 9)]


class ResendBroker(FakeBroker):
    """Records each PUBLISH as (connection, first byte, packet id, payload).
    Connection 0: reads four, acknowledges only the second, hangs up;
    connection 1: reads three and acknowledges them."""

    def __init__(self) -> None:
        self.publishes: list[tuple[int, int, int, bytes]] = []
        super().__init__()

    def _misbehave(self, i: int, s: socket.socket) -> None:
        for k in range(3 if i else 4):
            pkt = self._read_packet(s)
            j = 1
            while pkt[j] & 0x80:
                j += 1
            tl = (pkt[j + 1] << 8) | pkt[j + 2]
            pid = (pkt[j + 3 + tl] << 8) | pkt[j + 4 + tl]
            self.publishes.append((i, pkt[0], pid, pkt[j + 5 + tl:]))
            if i or k == 1:
                s.sendall(b"\x40\x02" + pid.to_bytes(2, "big"))
        if i == 0:
            return  # hang up
        while s.recv(100):
            pass


def test_qos1_resent_after_reconnect_in_acceptance_order(micropython_bin: str,
                                                         tmp_path: Path) -> None:
    fb = ResendBroker()
    try:
        out = finish(start(micropython_bin, tmp_path, "resend", fb.port))
    finally:
        fb.close()
    assert "DOWN 3" in out and "RESENT 0 True" in out, out
    first = [p for p in fb.publishes if p[0] == 0]
    again = [p for p in fb.publishes if p[0] == 1]
    assert [(p[1], p[3]) for p in first] == [(0x32, m) for m in (b"A", b"B", b"C", b"D")], first
    # A, C and D again, DUP set, same packet ids, oldest first
    assert [(p[1], p[3]) for p in again] == [(0x3A, m) for m in (b"A", b"C", b"D")], again
    assert [p[2] for p in again] == [first[0][2], first[2][2], first[3][2]], (first, again)
    assert len({p[2] for p in first}) == 4  # D's packet id is not B's


@pytest.fixture
def tls_mosquitto(tmp_path: Path) -> Iterator[BrokerProcess]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    key.chmod(0o644)
    broker = mosquitto_process(tmp_path, conf_lines=[f"certfile {cert}", f"keyfile {key}",
                                                         *_stay_root()])
    broker.start()
    yield broker
    broker.stop()


@pytest.mark.mosquitto
def test_forbidden_by_mqtt311_refused_at_entry(micropython_bin: str, tmp_path: Path,
                                               any_broker: BrokerProcess,
                                               watcher_factory: Callable[..., Watcher]) -> None:
    """Issue 9 part 5: what MQTT 3.1.1 forbids raises ValueError, never reaches the wire."""
    w = watcher_factory(any_broker.port, "mp/f/#")
    out = finish(start(micropython_bin, tmp_path, "forbidden", any_broker.port))
    assert "ACCEPTED" not in out and "WILDCARD SENT" not in out, out
    assert "QOS2 SUBSCRIBED" not in out, out
    assert out.count("REFUSED MQTT password without a user name") == 2, out
    assert "REFUSED empty MQTT client id with a persistent session" in out, out
    assert out.count("REFUSED wildcard in a PUBLISH topic") == 3, out
    assert "REFUSED subscription QoS 2" in out, out
    assert "REFUSED wildcard in a subscription" in out, out
    assert "STILL CONNECTED True 0" in out, out
    assert "CLEAN INFLIGHT 0" in out and "FORBIDDEN DONE" in out, out
    w.wait(lambda m: m[0] == "mp/f/fresh")
    time.sleep(0.3)
    assert [m[0] for m in w.messages] == ["mp/f/fresh"], w.messages  # no stale, no wildcard


def test_longest_topics_names_allows(micropython_bin: str, tmp_path: Path,
                                     any_broker: BrokerProcess,
                                     watcher_factory: Callable[..., Watcher]) -> None:
    """Topics of 198 and 200 characters (root 128, conn_id 64): the will, a QoS 1
    retained publish, the subscription; a message on another topic the broker
    still delivers is dropped, acknowledged and counted; the will on a kill."""
    status = "r" * 63 + "/" + "s" * 64 + "/" + "c" * 64 + "/status"
    w = watcher_factory(any_broker.port, status)
    with start(micropython_bin, tmp_path, "longtopic", any_broker.port) as p:
        assert p.wait_for("GRANTED") == "GRANTED 1"
        assert p.wait_for("LONG") == "LONG [4, 1152] 1 0 True"
        p.wait_for("READY")
        w.wait(lambda m: m[1] == b"online")
        p.proc.send_signal(signal.SIGKILL)
        p.proc.wait()
    assert w.wait(lambda m: m[1] == b"offline")[0] == status
    assert "Traceback" not in p.output(), p.output()


def test_session_backlog_before_subscribe_taken(micropython_bin: str, tmp_path: Path,
                                                any_broker: BrokerProcess) -> None:
    """A message queued for the persistent session while the client was away
    reaches it before it subscribes again: taken on the topic configure() names."""
    assert "SUBSCRIBED" in finish(start(micropython_bin, tmp_path, "presession",
                                        any_broker.port, 1))
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="pre-pub")
    pub.connect("127.0.0.1", any_broker.port)
    pub.loop_start()
    try:
        pub.publish("mp/pre", b"queued", qos=1).wait_for_publish(TEST_TIMEOUT)
    finally:
        pub.loop_stop()
        pub.disconnect()
    out = finish(start(micropython_bin, tmp_path, "presession", any_broker.port, 2))
    assert "PRE queued 0" in out, out


def test_tls_connection(micropython_bin: str, tmp_path: Path,
                        tls_mosquitto: BrokerProcess) -> None:
    out = finish(start(micropython_bin, tmp_path, "tls", tls_mosquitto.port))
    assert "TLS secret" in out


def test_script_runs_under_the_unix_port(micropython_bin: str, tmp_path: Path) -> None:
    """The client module imports with nothing but MicroPython's own modules."""
    r = run_mpy(micropython_bin, "import mqtt\nprint(mqtt.MSG_MAX, mqtt.TOPIC_MAX)\n",
                tmp_path, ESP_BRIDGE)
    assert r.stdout.split() == ["1152", "16378"], r.stdout + r.stderr

