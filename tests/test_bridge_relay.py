"""The whole bridge (esp_bridge/main.py) with a scripted Pyboard and a real broker.

The ESP8266 process is started exactly as the virtual bench starts it:
``MICROPYPATH=<fake hw dir>:esp_bridge:<repo> micropython esp_bridge/main.py``.
The fake ``machine`` module of test_bridge_support starts sim_pyboard, which
plays the Pyboard over the fake bus: it syncs, sends the ``C`` config, prints
every control message it gets (``PB U``, ``PB B refused: ...``) and sends or
counts lines. pytest plays the server application with paho-mqtt: it answers
``h`` heartbeats, counts frames on ``up`` and publishes frames on ``down``.

The memory test runs under ``micropython -X heapsize=...`` (docs/FIRMWARE.md
explains the figure) through connect, 1,000 relayed frames each way and a
broker restart, and prints the peak heap.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from conftest import ROOT, TEST_TIMEOUT, BrokerProcess, free_port
from test_bridge_support import ESP_BRIDGE, MpyProcess, compile_tree, make_hw_dir, mpy_env
from test_broker_mosquitto import shipped_mosquitto  # noqa: F401  (fixture)

# Memory gate (docs/FIRMWARE.md "Memory budget"): the ESP8266 has a 38 KiB
# MicroPython heap; the bridge may use ESP_BUDGET of it at run time (the rest
# is slack for fragmentation and the REPL). The unix port is 64-bit, its
# objects up to twice as large, and it holds in its heap what the ESP8266
# keeps in flash: the bytecode of the frozen modules (and, here, the fake
# hardware and the scripted Pyboard). So the test heap is
#     N = C_unix + 2 x ESP_BUDGET
# with C_unix measured: the heap in use after importing everything.
ESP_BUDGET = 24 * 1024
IMPORTS = "import asyncio, machine, network, esp, sim_pyboard, bridge, wifi, mqtt, responder"

FAST = {
    "keepalive_ms": 500,
    "wifi_connect_ms": 1000,
    "wifi_stable_ms": 200,
    "reconnect_min_ms": 200,
    "reconnect_max_ms": 1000,
    "mqtt_keepalive_s": 4,
    "mqtt_response_ms": 1500,
}


def config(port: int, conn_id: str = "dev1", timeout_ms: int = 1500, report_s: int = 0,
           user: str = "", password: str = "", tuning: dict | None = None,
           host: str = "127.0.0.1") -> list:
    return [conn_id, port, host, timeout_ms, report_s, "ssid", "wifi-pw", user, password,
            "pblink", False, FAST if tuning is None else tuning]


def import_cost(micropython_bin: str, mpy_dir: Path) -> int:
    """Bytes of heap in use once every module of the test run is imported."""
    code = (f"import gc, sys\nsys.path.insert(0, '.frozen')\n{IMPORTS}\n"
            "gc.collect()\nprint(gc.mem_alloc())")
    r = subprocess.run([micropython_bin, "-c", code], env=mpy_env(mpy_dir, frozen=False),
                       capture_output=True, text=True, timeout=TEST_TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    return int(r.stdout.split()[-1])


def start_bridge(micropython_bin: str, tmp_path: Path, cfg: list, up: int = 0,
                 heapsize: str | None = None, mpy_dir: Path | None = None,
                 **env: str) -> MpyProcess:
    """main.py as the bench starts it; with mpy_dir, from precompiled modules."""
    hw = make_hw_dir(tmp_path)
    argv = [micropython_bin] + (["-X", f"heapsize={heapsize}"] if heapsize else [])
    argv.append(str((mpy_dir or ESP_BRIDGE) / "main.py"))
    path = (mpy_dir,) if mpy_dir else (hw, ESP_BRIDGE, ROOT)
    e = mpy_env(*path, frozen=False, PBLINK_SIM_PYBOARD="1",
                PBLINK_SIM_CONFIG=json.dumps(cfg), PBLINK_SIM_UP=str(up), **env)
    return MpyProcess(argv, e)


class Server:
    """The server application's side, reduced to what the bridge needs."""

    def __init__(self, port: int, conn_id: str = "dev1", root: str = "pblink",
                 user: str | None = None, password: str | None = None) -> None:
        self.base = f"{root}/{conn_id}"
        self.answer = True  # answer 'h' with self.reply
        self.reply = b"h"
        self.up: list[bytes] = []
        self.status: list[tuple[bytes, bool]] = []
        self._cv = threading.Condition()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"srv-{free_port()}")
        self.c.on_message = self._on_message
        self.c.on_connect = self._on_connect
        if user is not None:
            self.c.username_pw_set(user, password)
        self.c.reconnect_delay_set(0.1, 0.5)
        self._subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: self._subscribed.set()
        self.c.connect("127.0.0.1", port, keepalive=5)
        self.c.loop_start()
        assert self._subscribed.wait(TEST_TIMEOUT)

    def _on_connect(self, c: paho.Client, *_a: object) -> None:
        c.subscribe([(f"{self.base}/up", 1), (f"{self.base}/status", 1)])

    def _on_message(self, c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        with self._cv:
            if msg.topic.endswith("/status"):
                self.status.append((msg.payload, bool(msg.retain)))
            elif msg.payload == b"h":
                if self.answer:
                    c.publish(f"{self.base}/down", self.reply, qos=0)
            else:
                self.up.append(msg.payload)
            self._cv.notify_all()

    def wait(self, pred, timeout: float = TEST_TIMEOUT, what: str = "",
             proc: MpyProcess | None = None) -> None:
        deadline = time.monotonic() + timeout
        with self._cv:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = "" if proc is None else "\noutput:\n" + proc.output()
                    raise AssertionError(f"timed out waiting for {what}; status={self.status[-5:]} "
                                         f"up={len(self.up)}{tail}")
                self._cv.wait(left)

    def send(self, frame: bytes, qos: int) -> paho.MQTTMessageInfo:
        return self.c.publish(f"{self.base}/down", frame, qos=qos)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def server_factory() -> Iterator:
    made: list[Server] = []

    def make(port: int, **kw: str) -> Server:
        s = Server(port, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def _indices(frames: list[bytes]) -> list[int]:
    out = []
    for f in frames:
        line = f.rsplit(b"|", 1)[1]
        out.append(int(line.split()[1]))
    return out


@pytest.mark.slow
def test_relay_1000_each_way_and_broker_restart_within_heap(
        micropython_bin: str, mpy_cross_bin: str, tmp_path: Path,
        mosquitto_broker: BrokerProcess, server_factory) -> None:
    """Memory gate: connect, 1,000 frames up, 1,000 down, a broker restart."""
    n = 1000
    broker = mosquitto_broker
    mpy_dir = compile_tree(mpy_cross_bin, make_hw_dir(tmp_path), tmp_path / "mpy")
    cost = import_cost(micropython_bin, mpy_dir)
    heap = os.environ.get("PBLINK_BRIDGE_HEAPSIZE") or str(cost + 2 * ESP_BUDGET)
    srv = server_factory(broker.port)
    with start_bridge(micropython_bin, tmp_path, config(broker.port, report_s=1), up=n,
                      heapsize=heap, mpy_dir=mpy_dir) as p:
        p.wait_for("PB SYNCED")
        p.wait_for("PB U")  # the server answered 'h': reachable
        assert srv.status[-1][0] == b"online"
        srv.wait(lambda: len(srv.up) >= n, timeout=60, what="1000 frames up", proc=p)
        assert sorted(_indices(srv.up)) == list(range(1, n + 1))
        assert _indices(srv.up) == list(range(1, n + 1))  # in order
        long = [f for f in srv.up if len(f) > 1000]
        assert len(long) == n // 50  # the 1,000-byte lines crossed in 9 chunks each
        # down: 1,000 frames, q at QoS 1 and u at QoS 0, paced by what arrived
        sent = 0
        done = 0
        while sent < n:
            batch = min(100, n - sent)
            for i in range(sent, sent + batch):
                if i % 2:
                    srv.send(f"q|5e55f00d|{i}|{i}|down {i}".encode(), 1)
                else:
                    srv.send(f"u|5e55f00d|down {i}".encode(), 1)
            sent += batch
            if sent - done > 300:
                done = int(p.wait_for("PB DOWN", timeout=30).split()[2])
        line = p.wait_for(f"PB DOWN {n}", timeout=60)
        assert line == f"PB DOWN {n}"
        # broker restart: the bridge notices, says D, reconnects, says U again
        online_before = sum(m == b"online" for m, _ in srv.status)
        broker.restart()
        p.wait_for("PB D", timeout=30)
        p.wait_for("PB U", timeout=30)
        srv.wait(lambda: sum(m == b"online" for m, _ in srv.status) > online_before,
                 what="status online again")
        p.wait_for("PB R [2,", timeout=30)  # reports count the second connection
        # finish: the scripted Pyboard prints its figures and exits
        deadline = time.monotonic() + 30
        while p.proc.poll() is None and time.monotonic() < deadline:
            srv.send(b"u|5e55f00d|END", 1)
            time.sleep(0.3)
        done_line = p.wait_for("PB DONE")
        assert p.wait() == 0, p.output()
        reports = [x for x in p.lines if x.startswith("PB R ")]
    figures = dict(kv.split("=") for kv in done_line.split()[2:])
    if os.environ.get("PBLINK_SIM_MEMLOG"):  # manual profiling aid
        print("\n".join(x for x in p.lines if x.startswith("PB MEM")))
    live = int(figures["live_peak"])
    print(f"\n[bridge memory] import cost C_unix = {cost} B; heap N = {heap} B")
    print(f"[bridge memory] micropython -X heapsize={heap} esp_bridge/main.py: {done_line}")
    print(f"[bridge memory] run-time live peak above C_unix: {live - cost} B (64-bit)")
    print(f"[bridge memory] last report [connects, report_no, mem_free]: {reports[-1]}")
    mem_info = [x for x in p.lines if x.startswith(("stack:", "GC:", "No. of", "max"))]
    print("[bridge memory] micropython.mem_info() at the end: " + " | ".join(mem_info))
    assert int(figures["up"]) == n and int(figures["down"]) >= n
    connects = json.loads(reports[-1][5:])[0]
    assert connects >= 2  # the reconnect after the restart
    assert "Traceback" not in p.output()


def test_status_retained_and_will_on_crash(micropython_bin: str, tmp_path: Path,
                                           any_broker: BrokerProcess, server_factory) -> None:
    srv = server_factory(any_broker.port)
    with start_bridge(micropython_bin, tmp_path, config(any_broker.port)) as p:
        p.wait_for("PB U")
        srv.wait(lambda: bool(srv.status) and srv.status[-1][0] == b"online", what="online")
        late = server_factory(any_broker.port)  # a new subscriber gets the retained status
        late.wait(lambda: (b"online", True) in late.status, what="retained online")
        p.proc.kill()
        p.proc.wait()
    srv.wait(lambda: srv.status[-1][0] == b"offline", what="will: offline")


def test_server_liveness_gives_u_and_d(micropython_bin: str, tmp_path: Path,
                                       any_broker: BrokerProcess, server_factory) -> None:
    srv = server_factory(any_broker.port)
    srv.answer = False
    with start_bridge(micropython_bin, tmp_path, config(any_broker.port, timeout_ms=800)) as p:
        p.wait_for("PB SYNCED")
        p.wait_for("PB D")  # told at config time: nothing heard from the server yet
        time.sleep(1.5)
        assert "PB U" not in p.lines  # broker up, server silent: still D
        srv.answer = True
        p.wait_for("PB U")
        srv.answer = False
        p.wait_for("PB D", timeout=5)  # silent for timeout_ms
        srv.answer = True
        p.wait_for("PB U")


def test_only_an_exact_heartbeat_counts_as_the_server(
        micropython_bin: str, tmp_path: Path, any_broker: BrokerProcess, server_factory) -> None:
    """PROTOCOL.md 4.4: 'hello' on down is no heartbeat: an E diagnostic, and still D."""
    srv = server_factory(any_broker.port)
    srv.reply = b"hello"
    with start_bridge(micropython_bin, tmp_path, config(any_broker.port, timeout_ms=800)) as p:
        p.wait_for("PB D")
        line = p.wait_for("PB E malformed frame on down dropped", timeout=10)
        assert "hello" in line, line
        time.sleep(1.0)
        assert "PB U" not in p.lines  # the server's 'hello' answers prove nothing
        srv.reply = b"h\n"  # as mosquitto_pub -s sends it: a heartbeat
        p.wait_for("PB U")


def test_unanswered_device_gets_a_diagnostic(
        micropython_bin: str, tmp_path: Path, any_broker: BrokerProcess, server_factory) -> None:
    """PROTOCOL.md 4.4: nothing on down within 2 x timeout_ms of the connection: E names causes."""
    srv = server_factory(any_broker.port)
    srv.answer = False  # no server application serves this conn_id
    with start_bridge(micropython_bin, tmp_path, config(any_broker.port, timeout_ms=800)) as p:
        p.wait_for("PB D")
        # 2 x timeout_ms after the broker connection, plus slack for a loaded machine
        line = p.wait_for("PB D no server application answers conn_id dev1", timeout=8)
        for cause in ("pblink server --ids", "topic root", "ACL"):
            assert cause in line, line
        time.sleep(1.0)
        told = [x for x in p.lines if x.startswith("PB D no server application")]
        assert len(told) == 1, told  # once per connection
        assert "PB U" not in p.lines


BACKLOG = 300  # frames queued for the device during the outage (issue 9 part 3)
BACKLOG_SIZE = 900  # bytes each


@pytest.fixture(params=["amqtt", "mosquitto", "shipped mosquitto"])
def backlog_broker(request: pytest.FixtureRequest) -> tuple[BrokerProcess, dict, dict]:
    """(broker, server credentials, device credentials as config() keywords)."""
    if request.param == "shipped mosquitto":  # max_inflight_messages 1000: all at once
        from test_broker_mosquitto import USERS
        broker = request.getfixturevalue("shipped_mosquitto")
        return (broker, {"user": "pblink.server", "password": USERS["pblink.server"]},
                {"user": "dev1", "password": USERS["dev1"]})
    name = "amqtt_broker" if request.param == "amqtt" else "mosquitto_broker"
    return request.getfixturevalue(name), {}, {}


@pytest.mark.slow
def test_backlog_after_an_outage_drains_in_order_without_a_reconnect(
        micropython_bin: str, tmp_path: Path, backlog_broker: tuple[BrokerProcess, dict, dict],
        server_factory) -> None:
    """A broker delivering a backlog faster than the link drains it is not a dead broker.

    WiFi cut, 300 q frames of 900 bytes published on down (QoS 1, queued by the
    broker for the bridge's persistent session), WiFi back: the bridge stays
    connected (its mqtt_response_ms is 1.5 s here, far less than the drain
    time) and hands every frame to the Pyboard, in order.
    """
    any_broker, srv_login, dev_login = backlog_broker
    srv = server_factory(any_broker.port, **srv_login)
    flag = tmp_path / "wifi-down"
    with start_bridge(micropython_bin, tmp_path, config(any_broker.port, **dev_login),
                      PBLINK_FAKE_WIFI_DOWN=str(flag)) as p:
        p.wait_for("PB U")
        flag.write_text("")
        p.wait_for("PB D", timeout=5)
        time.sleep(0.5)  # the broker has noticed the closed socket
        infos = []
        for i in range(1, BACKLOG + 1):
            head = f"q|0badcafe|{i}|{i}|bl {i} "
            infos.append(srv.send((head + "x" * (BACKLOG_SIZE - len(head))).encode(), 1))
        for info in infos:
            info.wait_for_publish(TEST_TIMEOUT)
        mark = len(p.lines)
        t0 = time.monotonic()
        flag.unlink()
        p.wait_for(f"PB BL {BACKLOG}", timeout=120)
        drain_s = time.monotonic() - t0
        after = p.lines[mark:]
        assert not [x for x in after if x.startswith("PB BL GAP")], after
        lost = [x for x in after if "broker connection lost" in x or x.startswith("PB E broker")]
        assert not lost, f"the bridge dropped the connection during the backlog: {lost}"
        # the server counts as reachable from the first frame on: U, and no D while draining
        told = [x for x in after if x in ("PB U", "PB D")]
        shown = [x for x in after if x[:4] != "PB K"]
        assert told and told[0] == "PB U" and "PB D" not in told, shown
    which = any_broker.name + (" (shipped config)" if dev_login else "")
    print(f"\n[backlog] {which}: {BACKLOG} x {BACKLOG_SIZE} B drained in {drain_s:.1f} s "
          f"({BACKLOG * BACKLOG_SIZE / drain_s / 1024:.1f} KiB/s)")


def test_wifi_outage_gives_d_then_u(micropython_bin: str, tmp_path: Path,
                                    mosquitto_broker: BrokerProcess, server_factory) -> None:
    srv = server_factory(mosquitto_broker.port)
    flag = tmp_path / "wifi-down"
    with start_bridge(micropython_bin, tmp_path, config(mosquitto_broker.port),
                      PBLINK_FAKE_WIFI_DOWN=str(flag)) as p:
        p.wait_for("PB U")
        flag.write_text("")
        p.wait_for("PB D", timeout=5)
        p.expect("PB E broker connection lost: WiFi lost")
        flag.unlink()
        p.wait_for("PB U", timeout=20)
        srv.wait(lambda: srv.status[-1][0] == b"online", what="online again")


def test_first_failures_reported_w_and_b(micropython_bin: str, tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    flag = tmp_path / "wifi-down"
    flag.write_text("")
    with start_bridge(micropython_bin, tmp_path, config(port),
                      PBLINK_FAKE_WIFI_DOWN=str(flag)) as p:
        p.wait_for("PB W")
        p.wait_for("PB E WiFi: no connection")
        flag.unlink()
        b = p.wait_for("PB B ")
        assert "ECONNREFUSED" in b or "111" in b, b
        # it keeps trying, with backoff, and reports each failure as 'E' only
        p.wait_for("PB E broker 127.0.0.1")
        p.wait_for("PB E broker 127.0.0.1")
        assert sum(x.startswith("PB B") for x in p.lines) == 1
        assert sum(x.startswith("PB W") for x in p.lines) == 1


@pytest.mark.mosquitto
def test_refused_credentials_reported_as_b(micropython_bin: str, tmp_path: Path) -> None:
    import subprocess

    from conftest import mosquitto_process, require_tool
    from test_bridge_mqtt import _stay_root

    passwd = require_tool("mosquitto_passwd")
    pw = tmp_path / "passwd"
    subprocess.run([passwd, "-c", "-b", str(pw), "dev1", "right"], check=True, capture_output=True)
    broker = mosquitto_process(tmp_path, conf_lines=[f"password_file {pw}", *_stay_root()])
    conf = tmp_path / "mosquitto-test.conf"
    conf.write_text(conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    broker.start()
    try:
        with start_bridge(micropython_bin, tmp_path,
                          config(broker.port, user="dev1", password="wrong")) as p:
            assert p.wait_for("PB B ") == "PB B refused: not authorised"
    finally:
        broker.stop()


def test_frame_before_config_and_bad_config_answered_with_e(
        micropython_bin: str, tmp_path: Path, amqtt_broker: BrokerProcess) -> None:
    cfg = config(amqtt_broker.port)
    with start_bridge(micropython_bin, tmp_path, cfg, PBLINK_SIM_EARLY="1") as p:
        p.wait_for("PB E no config yet: frame dropped")
        p.wait_for("PB D")  # the config after it was taken
    bad = config(amqtt_broker.port, conn_id="no/slash")
    with start_bridge(micropython_bin, tmp_path, bad) as p:
        line = p.wait_for("PB E bad config")
        assert "no/slash" in line
    odd = config(amqtt_broker.port, tuning={"keepalive_ms": 500, "shiny_new_key": 1})
    with start_bridge(micropython_bin, tmp_path, odd) as p:
        p.wait_for("PB E unknown tuning keys ignored: shiny_new_key")
    bad_t = config(amqtt_broker.port, tuning={"keepalive_ms": "fast"})
    with start_bridge(micropython_bin, tmp_path, bad_t) as p:
        assert "keepalive_ms" in p.wait_for("PB E bad config")


def test_keepalive_and_reports_reach_the_pyboard(micropython_bin: str, tmp_path: Path,
                                                 amqtt_broker: BrokerProcess) -> None:
    with start_bridge(micropython_bin, tmp_path, config(amqtt_broker.port, report_s=1)) as p:
        p.wait_for("PB K 1")
        t0 = time.monotonic()
        p.wait_for("PB K 5")
        per_k = (time.monotonic() - t0) / 4
        assert 0.25 < per_k < 1.5, per_k  # keepalive_ms 500
        r1 = p.wait_for("PB R ")
        r2 = p.wait_for("PB R ")
        a, b = json.loads(r1[5:]), json.loads(r2[5:])
        # [connects, report_no, mem_free]
        assert a[0] == 1 and b[1] == a[1] + 1 and b[2] > 0, (a, b)
