# link_core.liveness cases (PROTOCOL.md 4.4), run under CPython and MicroPython:
#   MICROPYPATH=<repo> micropython tests/vectors/liveness_cases.py
#   pytest tests/test_core_liveness.py  (each case under CPython, all under MicroPython)
# Prints "FAIL <case>: <error>" per failure, then "ALL <n> CASES PASSED" (exit 0)
# or "<k> OF <n> CASES FAILED" (exit 1).

import sys

from link_core import endpoint, frames, liveness
from link_core.clock import ticks_add
from link_core.device_watch import DeviceWatch
from link_core.liveness import IS_BAD, IS_DATA, IS_HEARTBEAT, ServerWatch

TICKS_MAX = 2**30 - 1  # MicroPython ticks wrap at 2**30 (link_core.clock)

S = "3fa2c901"


def case_qos_of_every_kind():
    sender = endpoint.Sender(S)
    assert liveness.mqtt_level(sender.send("x", 0)) == 1
    assert liveness.mqtt_level(sender.unreliable("x")) == 0
    assert liveness.mqtt_level(frames.encode_ack(S, 1)) == 0
    assert liveness.HEARTBEAT == b"h" and frames.HEARTBEAT == b"h"
    assert liveness.mqtt_level(frames.HEARTBEAT) == 0
    assert liveness.mqtt_level(b"") == 0
    assert liveness.mqtt_level(bytearray(b"q|" + S.encode() + b"|1|1|x")) == 1
    assert liveness.mqtt_level(memoryview(b"q|x")) == 1


def case_classify_strict():
    assert liveness.classify_down(b"h") == IS_HEARTBEAT
    assert liveness.classify_down(b"h\n") == IS_HEARTBEAT
    for bad in (b"hello", b"h|", b"hh", b"h\n\n", b"", b"\n", b"x|" + S.encode() + b"|1",
                b"q", b"q|", b"q|3FA2C901|1|1|x", b"q|3fa2c90|1|1|x", b"q3fa2c901|1|1|x",
                b"u|3fa2c901x", b"a|3fa2c901", b"H"):
        assert liveness.classify_down(bad) == IS_BAD, bad
    for good in (b"q|3fa2c901|1|1|x", b"u|3fa2c901|", b"a|3fa2c901|17", b"u|3fa2c901|a\n"):
        assert liveness.classify_down(good) == IS_DATA, good
    assert liveness.classify_down(bytearray(b"a|3fa2c901|17")) == IS_DATA
    assert liveness.classify_down(memoryview(b"h")) == IS_HEARTBEAT


def case_classify_agrees_with_decode():
    # Whatever frames.decode accepts, classify_down does not call IS_BAD.
    for f in (b"h", b"q|3fa2c901|0|65535|wrapped", b"u|3fa2c901|a|b\n", b"a|3fa2c901|0"):
        frames.decode(f)
        assert liveness.classify_down(f) != IS_BAD


class _S:
    def __init__(self, room, idle):
        self.room = room
        self.empty = idle

    def can_send(self):
        return self.room

    def idle(self):
        return self.empty


def case_may_write():
    for reachable in (False, True):
        for room in (False, True):
            for idle in (False, True):
                s = _S(room, idle)
                assert endpoint.may_write(reachable, s, False, True) == reachable
                assert endpoint.may_write(reachable, s, False, False) == reachable
                assert endpoint.may_write(reachable, s, True, False) == (reachable and room)
                assert endpoint.may_write(reachable, s, True, True) == (
                    reachable and room and idle
                )
    real = endpoint.Sender(S, 2)
    assert endpoint.may_write(True, real, True, True)
    real.send("a", 0)
    assert not endpoint.may_write(True, real, True, True)
    assert endpoint.may_write(True, real, True, False)
    real.send("b", 0)
    assert not endpoint.may_write(True, real, True, False)
    assert endpoint.may_write(True, real, False, True)


def case_server_watch_connect_and_heartbeat():
    w = ServerWatch(1000)
    assert not w.reachable(0) and not w.heartbeat_due(0)  # not connected
    w.connected(100)
    assert w.heartbeat_due(100)  # at once after the connection
    assert not w.reachable(100)
    w.heartbeat_sent(100)
    assert not w.heartbeat_due(100)
    assert not w.heartbeat_due(599)
    # nothing heard: one 'h' per half timeout, not more
    assert w.heartbeat_due(600)
    w.heartbeat_sent(600)
    w.published(900)  # a data frame: up is busy, down still silent
    assert not w.heartbeat_due(1099)
    assert w.heartbeat_due(1100)


def case_server_watch_reachable_window():
    w = ServerWatch(1000)
    w.connected(0)
    w.heard(50)
    assert w.reachable(50) and w.reachable(1049)
    assert not w.reachable(1050)
    w.heard(1500)
    assert w.reachable(1500)
    w.disconnected()
    assert not w.reachable(1500)
    assert not w.heartbeat_due(5000)


def case_server_watch_heartbeat_when_up_quiet():
    w = ServerWatch(1000)
    w.connected(0)
    w.heartbeat_sent(0)
    w.heard(10)
    w.heard(400)
    assert not w.heartbeat_due(499)
    assert w.heartbeat_due(500)  # nothing published for timeout/2


def case_server_watch_unanswered_once():
    w = ServerWatch(1000)
    w.connected(0)
    assert not w.unanswered(1999)
    assert w.unanswered(2000)
    assert not w.unanswered(2500)  # once per connection
    w.disconnected()
    w.connected(3000)
    assert not w.unanswered(4000)
    w.heard(4500)
    assert not w.unanswered(9000)  # answered on this connection
    w.connected(10000)
    assert w.unanswered(12000)


def case_server_watch_wraps():
    w = ServerWatch(1000)
    t = TICKS_MAX - 100
    w.connected(t)
    w.heard(t)
    assert w.reachable(ticks_add(t, 999))
    assert not w.reachable(ticks_add(t, 1000))
    w.heartbeat_sent(t)
    assert w.heartbeat_due(ticks_add(t, 500))
    assert w.unanswered(ticks_add(t, 2000)) is False  # answered


def case_device_watch():
    d = DeviceWatch(1000)
    assert not d.online
    assert d.heard(10)  # came online
    assert not d.heard(20)
    assert not d.silent(2020)
    assert d.silent(2021)
    assert not d.online and not d.silent(5000)
    assert d.status(True, 6000)
    assert not d.status(True, 6001)
    assert d.status(False, 6002)
    assert not d.lost()
    d.heard(7000)
    assert d.lost() and not d.online


def case_device_watch_bounds_backlogs():
    d = DeviceWatch(1000)
    assert d.answer_due(0)
    # a backlog of stale heartbeats, all at once: one answer
    assert [d.answer_due(1) for _ in range(30)] == [False] * 30
    assert not d.answer_due(249)
    assert d.answer_due(250)
    # a live bridge (one 'h' per timeout/2) gets every answer
    assert all(d.answer_due(250 + 500 * i) for i in range(1, 6))
    assert d.resend_due(10) and not d.resend_due(11) and d.resend_due(260)
    w = DeviceWatch(1000)
    t = TICKS_MAX - 10
    assert w.answer_due(t) and not w.answer_due(ticks_add(t, 249))
    assert w.answer_due(ticks_add(t, 250))


CASES = [
    case_qos_of_every_kind,
    case_classify_strict,
    case_classify_agrees_with_decode,
    case_may_write,
    case_server_watch_connect_and_heartbeat,
    case_server_watch_reachable_window,
    case_server_watch_heartbeat_when_up_quiet,
    case_server_watch_unanswered_once,
    case_server_watch_wraps,
    case_device_watch,
    case_device_watch_bounds_backlogs,
]


def main():
    failed = 0
    for case in CASES:
        try:
            case()
        except Exception as e:  # AssertionError and bugs alike
            failed += 1
            print("FAIL " + case.__name__ + ": " + repr(e))
    if failed:
        print(str(failed) + " OF " + str(len(CASES)) + " CASES FAILED")
        sys.exit(1)
    print("ALL " + str(len(CASES)) + " CASES PASSED")


if __name__ == "__main__":
    main()
