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
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TEST_TIMEOUT, BrokerProcess, free_port
from test_broker_mosquitto import shipped_mosquitto  # noqa: F401  (fixture)

from virtual_bench.bridge_rig import (
    ESP_BUDGET,
    HEAP_ROOM,
    IMPORTS,
    Server,
    compile_tree,
    config,
    down_frame,
    import_cost,
    make_hw_dir,
    mpy_env,
    run_traffic,
    start_bridge,
)

# Memory gate (docs/FIRMWARE.md "Memory budget"), on the 64-bit unix port: the
# bridge's run-time live peak above the import cost C_unix may be at most
# 2 x ESP_BUDGET, measured at a heap of C_unix + HEAP_ROOM (the rule and why:
# virtual_bench/bridge_rig.py). The figure that counts for the device is the
# 32-bit frozen one: tests/test_bridge_heap32.py.


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


@pytest.mark.slow
def test_relay_1000_each_way_and_broker_restart_within_heap(
        micropython_bin: str, mpy_cross_bin: str, tmp_path: Path,
        mosquitto_broker: BrokerProcess) -> None:
    """Memory gate: connect, 1,000 frames up, 1,000 down, a broker restart."""
    n = 1000
    mpy_dir = compile_tree(mpy_cross_bin, make_hw_dir(tmp_path), tmp_path / "mpy")
    cost = import_cost(micropython_bin, mpy_dir)
    heap = os.environ.get("PBLINK_BRIDGE_HEAPSIZE") or str(cost + HEAP_ROOM)
    res = run_traffic(micropython_bin, tmp_path, mosquitto_broker.port, mosquitto_broker.restart,
                      n=n, heapsize=heap, mpy_dir=mpy_dir)
    lines = res["lines"]
    if os.environ.get("PBLINK_SIM_MEMLOG"):  # manual profiling aid
        print("\n".join(x for x in lines if x.startswith("PB MEM")))
    live = res["live_peak"]
    print(f"\n[bridge memory] import cost C_unix = {cost} B; heap N = {heap} B")
    print(f"[bridge memory] micropython -X heapsize={heap} esp_bridge/main.py: {res['done_line']}")
    print(f"[bridge memory] run-time live peak above C_unix: {live - cost} B (64-bit)")
    print(f"[bridge memory] last report [connects, report_no, mem_free]: {res['reports'][-1]}")
    mem_info = [x for x in lines if x.startswith(("stack:", "GC:", "No. of", "max"))]
    print("[bridge memory] micropython.mem_info() at the end: " + " | ".join(mem_info))
    assert res["up"] == n and res["down"] >= n
    assert res["reports"][-1][0] >= 2  # the reconnect after the restart
    assert live > cost  # the figures are the scripted Pyboard's real samples
    assert live - cost <= 2 * ESP_BUDGET, (
        f"the bridge's run-time live peak {live - cost} B (64-bit) is past 2 x {ESP_BUDGET} B")


def test_bridge_loads_only_the_device_end_rules(micropython_bin: str, mpy_cross_bin: str,
                                               tmp_path: Path) -> None:
    """The ESP8266 holds every imported module's functions and class dicts in RAM:
    the bridge loads link_core.liveness (device end) but not link_core.device_watch
    (the server's view of a device, which cost it 368 B of heap when it was part of liveness)."""
    mpy_dir = compile_tree(mpy_cross_bin, make_hw_dir(tmp_path), tmp_path / "mpy")
    code = ("import sys; sys.path.insert(0, '.frozen'); " + IMPORTS
            + "; print(' '.join(sorted(sys.modules)))")
    r = subprocess.run([micropython_bin, "-c", code], cwd=mpy_dir, capture_output=True,
                       text=True, timeout=30, env=mpy_env(mpy_dir, frozen=False))
    assert r.returncode == 0, r.stderr
    loaded = r.stdout.split()
    assert "bridge" in loaded and "link_core.liveness" in loaded, loaded
    assert "link_core.device_watch" not in loaded, loaded
    # nor asyncio: the bridge is one main loop over select.poll (docs/FIRMWARE.md)
    assert not [m for m in loaded if m == "asyncio" or m.startswith("asyncio.")], loaded


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


def test_reports_published_retained_on_the_report_topic(
        micropython_bin: str, tmp_path: Path, any_broker: BrokerProcess, server_factory) -> None:
    """PROTOCOL.md 4.1: each R report also goes to <root>/<id>/report, retained, so a
    reader (pblink monitor) sees [connects, report_no, mem_free, mem_errors] without the
    Pyboard."""
    srv = server_factory(any_broker.port)
    with start_bridge(micropython_bin, tmp_path, config(any_broker.port, report_s=1)) as p:
        p.wait_for("PB U")
        line = p.wait_for("PB R ", timeout=10)
        srv.wait(lambda: len(srv.reports) >= 2, what="two reports on MQTT")
        first = json.loads(srv.reports[0][0])
        assert len(first) == 4 and first[0] >= 1 and first[2] > 0 and first[3] >= 0
        numbers = [json.loads(m)[1] for m, _r in srv.reports]
        assert numbers == sorted(numbers) and json.loads(line[5:])[1] in numbers
        late = server_factory(any_broker.port)  # a new subscriber gets the latest, retained
        late.wait(lambda: any(r for _m, r in late.reports), what="retained report")
    assert "Traceback" not in p.output()


def test_longest_topic_root_and_conn_id(micropython_bin: str, tmp_path: Path,
                                        any_broker: BrokerProcess, server_factory) -> None:
    """link_core.names allows a topic root of 128 characters and a conn_id of 64:
    topics of up to 200 characters (<root>/<conn_id>/status). The bridge connects
    (its will on status), subscribes to down, relays frames both ways and publishes
    status and report on them."""
    root = "r" * 63 + "/" + "s" * 64  # 128 characters, two levels
    conn_id = "c" * 64
    n = 20
    srv = server_factory(any_broker.port, conn_id=conn_id, root=root)
    cfg = config(any_broker.port, conn_id=conn_id, report_s=1, root=root)
    with start_bridge(micropython_bin, tmp_path, cfg, up=n) as p:
        p.wait_for("PB U")  # 'h' up, 'h' down: the server answers on the 198-character down
        srv.wait(lambda: bool(srv.status) and srv.status[-1][0] == b"online", what="online",
                 proc=p)
        srv.wait(lambda: len(srv.up) >= n, what=f"{n} frames up", proc=p)
        srv.wait(lambda: bool(srv.reports), what="a report", proc=p)
        for i in range(100):
            srv.send(down_frame(i), 1)
        p.wait_for("PB DOWN 100")
        while p.proc.poll() is None and not any(x.startswith("PB DONE") for x in p.lines):
            srv.send(b"u|5e55f00d|END", 1)
            time.sleep(0.3)
        p.wait_for("PB DONE")
        assert p.wait() == 0
    assert "Traceback" not in p.output(), p.output()
    assert not [x for x in p.lines if x.startswith(("PB B", "PB E"))], p.output()


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
        assert "bridge_tuning key 'shiny_new_key' is not one of" in p.wait_for("PB E bad config")
    bad_t = config(amqtt_broker.port, tuning={"keepalive_ms": "fast"})
    with start_bridge(micropython_bin, tmp_path, bad_t) as p:
        assert p.wait_for("PB E bad config") == (
            "PB E bad config: keepalive_ms 'fast' is not an int from 100 to 60000")


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


def test_broker_that_drops_after_connack_is_reported_by_why(
        micropython_bin: str, tmp_path: Path) -> None:
    """A broker that accepts the CONNECT and closes at once: the bridge's ``B``
    names what the MQTT client saw (the read that found the socket closed), not
    the ENOTCONN of the status publish that came after it."""
    import socket
    import threading

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    stop = threading.Event()

    def serve() -> None:
        lsock.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = lsock.accept()
            except OSError:
                continue
            with c:
                c.settimeout(5)
                try:
                    c.recv(4096)  # CONNECT
                    c.sendall(b"\x20\x02\x00\x00")  # CONNACK, accepted
                except OSError:
                    pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with start_bridge(micropython_bin, tmp_path, config(lsock.getsockname()[1])) as p:
            b = p.wait_for("PB B ")
            assert "ENOTCONN" not in b and "107" not in b, b
            assert "read" in b or "write" in b, b
    finally:
        stop.set()
        t.join(5)
        lsock.close()
