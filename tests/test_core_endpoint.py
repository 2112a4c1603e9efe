"""link_core.endpoint: Sender and Receiver (PROTOCOL.md 3.1, 3.2)."""

import heapq
import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from link_core import frames
from link_core.clock import ticks_add, ticks_diff
from link_core.endpoint import MAX_SESSIONS, Receiver, Sender, id_after

TICKS_MAX = 2**30 - 1  # MicroPython ticks wrap at 2**30 (link_core.clock)

SA = "3fa2c901"
SB = "0badcafe"
SC = "c0ffee00"
PROPS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def q(session, msg_id, base, line):
    return frames.decode(frames.encode_qos(session, msg_id, base, line))


def ack_id(ack):
    k = frames.decode(ack)
    assert k[0] == "a"
    return k[2]


# -- Sender --------------------------------------------------------------------


def test_sender_first_id_is_1_and_base_tracks_oldest_unacked():
    s = Sender(SA, window=8, timeout_ms=100)
    assert s.idle() and s.can_send() and s.in_flight == 0 and s.base == 1
    f1 = s.send("one", 0)
    f2 = s.send("two", 0)
    assert f1 == b"q|3fa2c901|1|1|one"
    assert f2 == b"q|3fa2c901|2|1|two"
    assert s.in_flight == 2 and not s.idle()
    assert s.on_ack(SA, 1) is True
    assert s.on_ack(SA, 1) is False  # already acked
    assert s.base == 2
    # a retransmission carries the current base, not the one of its first send
    assert s.due(100) == [b"q|3fa2c901|2|2|two"]


def test_sender_ignores_acks_for_other_sessions_and_unknown_ids():
    s = Sender(SA)
    s.send("x", 0)
    assert s.on_ack(SB, 1) is False
    assert s.on_ack(SA, 2) is False
    assert s.in_flight == 1
    assert s.on_ack(SA, 1) is True
    assert s.idle()


def test_sender_window_full_back_pressure():
    s = Sender(SA, window=8, timeout_ms=100)
    for i in range(8):
        assert s.can_send()
        s.send(f"l{i}", 0)
    assert not s.can_send()
    with pytest.raises(ValueError, match="window full"):
        s.send("nine", 0)
    assert s.next_id == 9  # the refused line used no id
    assert s.on_ack(SA, 3)
    assert s.can_send()
    assert s.send("nine", 0) == b"q|3fa2c901|9|1|nine"


def test_sender_invalid_line_uses_no_id():
    s = Sender(SA)
    with pytest.raises(ValueError, match="newline"):
        s.send("a\nb", 0)
    with pytest.raises(ValueError, match="MAX_LINE"):
        s.send("x" * 1025, 0)
    assert s.next_id == 1 and s.idle()
    assert s.send("ok\n", 0) == b"q|3fa2c901|1|1|ok"


def test_sender_constructor_validation():
    with pytest.raises(ValueError, match="session"):
        Sender("XYZ")
    with pytest.raises(ValueError, match="window"):
        Sender(SA, window=0)
    with pytest.raises(ValueError, match="window"):
        Sender(SA, window=17)
    with pytest.raises(ValueError, match="timeout_ms"):
        Sender(SA, timeout_ms=0)


def test_sender_ids_wrap_past_65535():
    s = Sender(SA, window=4)
    s.next_id = 65534
    out = [frames.decode(s.send(str(i), 0)) for i in range(4)]
    assert [k[2] for k in out] == [65534, 65535, 0, 1]
    assert [k[3] for k in out] == [65534] * 4
    assert s.on_ack(SA, 65534) and s.on_ack(SA, 65535)
    assert s.base == 0
    assert frames.decode(s.due(10**6)[0])[3] == 0


def test_sender_backoff_doubles_up_to_8x_and_pauses_while_peer_down():
    s = Sender(SA, timeout_ms=100)
    s.send("x", 0)
    assert s.next_deadline() == 100
    assert s.due(99) == []
    times = []
    t = 0
    for _ in range(7):
        t = s.next_deadline()
        assert len(s.due(t)) == 1
        times.append(t)
    assert times == [100, 300, 700, 1500, 2300, 3100, 3900]
    # peer unreachable: nothing is retransmitted and deadlines do not move
    dl = s.next_deadline()
    assert s.due(dl + 5000, peer_up=False) == []
    assert s.next_deadline() == dl
    # peer back: everything at once, waits reset
    s.send("y", 4000)
    assert s.resend_all(9000) == [b"q|3fa2c901|1|1|x", b"q|3fa2c901|2|1|y"]
    assert s.next_deadline() == 9100
    assert len(s.due(9100)) == 2
    assert s.next_deadline() == 9300


def test_sender_deadlines_across_tick_wrap():
    s = Sender(SA, timeout_ms=100)
    t0 = TICKS_MAX - 50
    s.send("x", t0)
    dl = s.next_deadline()
    assert dl == 49  # wrapped
    assert s.due(ticks_add(t0, 99)) == []
    assert len(s.due(ticks_add(t0, 100))) == 1


def test_sender_unreliable():
    s = Sender(SA)
    assert s.unreliable("hi|there") == b"u|3fa2c901|hi|there"
    assert s.idle() and s.next_id == 1


def test_sender_snapshot_restore_json_roundtrip():
    s = Sender(SA, window=16, timeout_ms=250)
    s.next_id = 65535
    for i in range(3):
        s.send(f"line {i} é", 0)
    s.on_ack(SA, 65535)
    snap = json.loads(json.dumps(s.snapshot()))
    assert snap == {
        "session": SA,
        "next_id": 2,
        "window": 16,
        "timeout_ms": 250,
        "unacked": [[0, "line 1 é"], [1, "line 2 é"]],
    }
    r = Sender.restore(snap)
    assert r.session == SA and r.next_id == 2 and r.in_flight == 2
    assert r.next_deadline() is None
    assert r.due(12345) == [
        "q|3fa2c901|0|0|line 1 é".encode(),
        "q|3fa2c901|1|0|line 2 é".encode(),
    ]
    assert r.next_deadline() == 12345 + 250
    r2 = Sender.restore(snap, now_ms=7)
    assert r2.next_deadline() == 7
    assert r2.send("next", 7) == b"q|3fa2c901|2|0|next"


@pytest.mark.parametrize(
    "snap",
    [
        {},
        {"session": SA, "next_id": 1, "window": 8, "timeout_ms": 100},
        {"session": SA, "next_id": 70000, "window": 8, "timeout_ms": 100, "unacked": []},
        {"session": "bad", "next_id": 1, "window": 8, "timeout_ms": 100, "unacked": []},
        {"session": SA, "next_id": 3, "window": 8, "timeout_ms": 100, "unacked": [[5, "x"]]},
        {"session": SA, "next_id": 3, "window": 8, "timeout_ms": 100, "unacked": [[2, "a\nb"]]},
        {
            "session": SA,
            "next_id": 3,
            "window": 8,
            "timeout_ms": 100,
            "unacked": [[2, "a"], [1, "b"]],
        },
        {
            "session": SA,
            "next_id": 3,
            "window": 1,
            "timeout_ms": 100,
            "unacked": [[1, "a"], [2, "b"]],
        },
    ],
)
def test_sender_restore_rejects_malformed(snap):
    with pytest.raises(ValueError):
        Sender.restore(snap)


# -- Receiver ------------------------------------------------------------------


def test_receiver_in_order_delivery_and_acks():
    r = Receiver()
    ack, lines = r.on_frame(q(SA, 1, 1, "a"))
    assert ack == b"a|3fa2c901|1" and lines == ["a"]
    assert r.session == SA and r.expected == 2


def test_receiver_adopts_at_base_and_reorders():
    r = Receiver()
    ack, lines = r.on_frame(q(SA, 7, 5, "seven"))
    # buffered, not acknowledged until delivered
    assert ack is None and lines == [] and r.expected == 5 and r.buffered == 1
    ack, lines = r.on_frame(q(SA, 6, 5, "six"))
    assert ack is None and lines == []
    ack, lines = r.on_frame(q(SA, 5, 5, "five"))
    assert ack_id(ack) == 5 and lines == ["five", "six", "seven"]
    assert r.expected == 8 and r.buffered == 0
    # the sender resends 6 and 7 (unacknowledged): duplicates, now acknowledged
    ack, lines = r.on_frame(q(SA, 6, 6, "six"))
    assert ack_id(ack) == 6 and lines == []
    ack, lines = r.on_frame(q(SA, 7, 6, "seven"))
    assert ack_id(ack) == 7 and lines == []


def test_receiver_duplicates_are_acked_not_delivered():
    r = Receiver()
    r.on_frame(q(SA, 1, 1, "a"))
    r.on_frame(q(SA, 3, 1, "c"))
    ack, lines = r.on_frame(q(SA, 1, 1, "a"))  # before expected
    assert ack_id(ack) == 1 and lines == []
    ack, lines = r.on_frame(q(SA, 3, 2, "c"))  # already buffered: still not delivered
    assert ack is None and lines == []
    assert r.duplicates == 2
    assert r.on_frame(q(SA, 2, 2, "b"))[1] == ["b", "c"]


def test_receiver_beyond_window_dropped_without_ack():
    r = Receiver(window=16)
    r.on_frame(q(SA, 1, 1, "a"))  # expected 2
    ack, lines = r.on_frame(q(SA, 18, 2, "in window"))  # 2 + 16
    assert ack is None and lines == [] and r.buffered == 1 and r.dropped == 0
    ack, lines = r.on_frame(q(SA, 19, 2, "beyond"))
    assert ack is None and lines == [] and r.dropped == 1 and r.buffered == 1
    ack, lines = r.on_frame(q(SA, 2 + 32768, 2 + 32768, "half way"))
    assert ack is None and lines == []


def test_receiver_ids_wrap():
    r = Receiver()
    out = []
    for i, mid in enumerate([65534, 65535, 0, 1]):
        ack, lines = r.on_frame(q(SA, mid, 65534, str(i)))
        assert ack_id(ack) == mid
        out += lines
    assert out == ["0", "1", "2", "3"]
    assert r.expected == 2
    ack, lines = r.on_frame(q(SA, 65535, 65535, "old"))
    assert ack_id(ack) == 65535 and lines == []  # duplicate across the wrap
    # reordered across the wrap
    r = Receiver()
    assert r.on_frame(q(SA, 0, 65535, "b")) == (None, [])
    assert r.on_frame(q(SA, 1, 65535, "c")) == (None, [])
    assert r.on_frame(q(SA, 65535, 65535, "a")) == (b"a|3fa2c901|65535", ["a", "b", "c"])


def test_receiver_skips_ahead_when_base_is_after_expected():
    r = Receiver()
    r.on_frame(q(SA, 1, 1, "a"))  # expected 2
    r.on_frame(q(SA, 4, 2, "d"))  # buffered
    r.on_frame(q(SA, 7, 2, "g"))  # buffered
    # The sender says everything before 6 was acknowledged (by an earlier
    # incarnation of this receiver): deliver the buffered 4, skip to 6.
    ack, lines = r.on_frame(q(SA, 8, 6, "h"))
    assert ack is None and lines == ["d"] and r.expected == 6
    assert r.on_frame(q(SA, 6, 6, "f")) == (b"a|3fa2c901|6", ["f", "g", "h"])


def test_receiver_skip_ahead_then_delivers_the_frame_at_base():
    r = Receiver()
    r.on_frame(q(SA, 1, 1, "a"))
    r.on_frame(q(SA, 3, 2, "c"))
    ack, lines = r.on_frame(q(SA, 5, 5, "e"))
    assert ack_id(ack) == 5 and lines == ["c", "e"] and r.expected == 6
    # 3 was delivered on the way: its resend is a duplicate, acknowledged
    assert r.on_frame(q(SA, 3, 3, "c")) == (b"a|3fa2c901|3", [])


def test_receiver_two_concurrent_sessions_each_in_order():
    """A server app (SA) and a short-lived `pblink send` (SB) write to one device."""
    r = Receiver()
    assert r.on_frame(q(SA, 1, 1, "a1")) == (b"a|3fa2c901|1", ["a1"])
    assert r.on_frame(q(SA, 3, 1, "a3")) == (None, [])  # buffered, SA's gap at 2
    assert r.on_frame(q(SB, 1, 1, "b1")) == (b"a|0badcafe|1", ["b1"])
    assert r.session == SB and r.expected == 2 and r.buffered == 1
    # SA is still tracked, its own stream: 2 fills the gap, 3 follows
    assert r.on_frame(q(SA, 2, 2, "a2")) == (b"a|3fa2c901|2", ["a2", "a3"])
    assert r.session == SA and r.expected == 4 and r.buffered == 0
    # SA's resend of 3 is a duplicate of SA, not of SB; SB's resend likewise
    assert r.on_frame(q(SA, 3, 3, "a3")) == (b"a|3fa2c901|3", [])
    assert r.on_frame(q(SB, 1, 1, "b1")) == (b"a|0badcafe|1", [])
    assert r.on_frame(q(SA, 4, 4, "a4")) == (b"a|3fa2c901|4", ["a4"])
    assert r.on_frame(q(SB, 2, 2, "b2")) == (b"a|0badcafe|2", ["b2"])
    # u frames of any session are delivered, tracked or not
    assert r.on_frame(frames.decode(b"u|3fa2c901|ua")) == (None, ["ua"])
    assert r.on_frame(frames.decode(b"u|c0ffee00|uc")) == (None, ["uc"])
    assert r.sessions() == [[SA, 5], [SB, 3]]
    assert r.adopted == 2 and r.duplicates == 2 and r.dropped == 0 and r.delivered == 8


def test_receiver_late_old_session_after_restart_does_not_block_live_one():
    """Problem (b): a stateless restart adopts SB, then a late SA frame arrives."""
    r = Receiver()  # restarted without state
    assert r.on_frame(q(SB, 1, 1, "b1")) == (b"a|0badcafe|1", ["b1"])
    # a late frame of the peer's previous session, never seen by this receiver
    assert r.on_frame(q(SA, 7, 5, "a7")) == (None, [])  # adopted at 5, held
    assert r.on_frame(q(SA, 5, 5, "a5")) == (b"a|3fa2c901|5", ["a5"])
    # the live session goes on untouched
    assert r.on_frame(q(SB, 2, 2, "b2")) == (b"a|0badcafe|2", ["b2"])
    assert r.on_frame(q(SB, 4, 3, "b4")) == (None, [])
    assert r.on_frame(q(SB, 3, 3, "b3")) == (b"a|0badcafe|3", ["b3", "b4"])
    assert r.session == SB and r.expected == 5
    assert r.sessions() == [[SA, 6], [SB, 5]] and r.buffered == 1  # SA's 7 still held


def test_receiver_lru_table_evicts_least_recently_active():
    r = Receiver()
    sessions = [f"{i:08x}" for i in range(1, MAX_SESSIONS + 1)]
    for s in sessions:
        assert r.on_frame(q(s, 1, 1, s))[1] == [s]
    r.on_frame(q(sessions[0], 2, 2, "touch"))  # the first is now the most recent
    assert [x[0] for x in r.sessions()] == sessions[1:] + sessions[:1]
    r.on_frame(q(SA, 1, 1, "new"))
    assert len(r.sessions()) == MAX_SESSIONS
    assert [x[0] for x in r.sessions()] == sessions[2:] + sessions[:1] + [SA]
    # the evicted session (sessions[1]) is adopted again at its base when it comes back
    assert r.on_frame(q(sessions[1], 3, 2, "x")) == (None, [])  # held: 2 missing
    assert r.on_frame(q(sessions[1], 2, 2, "w")) == (b"a|00000002|2", ["w", "x"])
    assert r.adopted == MAX_SESSIONS + 2


def test_receiver_eviction_drops_buffered_lines_and_resends_converge():
    s = Sender(SA, window=8, timeout_ms=100)
    r = Receiver()
    f = [s.send(f"a{i}", 0) for i in range(1, 5)]
    assert r.on_frame(frames.decode(f[0]))[1] == ["a1"]
    s.on_ack(SA, 1)
    assert r.on_frame(frames.decode(f[2])) == (None, [])  # a3 held, a2 lost
    assert r.on_frame(frames.decode(f[3])) == (None, [])  # a4 held
    assert r.buffered == 2
    for i in range(MAX_SESSIONS):  # other sessions push SA out of the table
        r.on_frame(q(f"{i + 1:08x}", 1, 1, "other"))
    assert SA not in [x[0] for x in r.sessions()]
    assert r.buffered == 0 and r.dropped == 2
    # nothing of SA's beyond a1 was acked: the resends carry base 2, are
    # adopted at 2, and deliver every line exactly once, in order
    out = []
    for fr in s.due(100):
        ack, lines = r.on_frame(frames.decode(fr))
        out += lines
        k = frames.decode(ack)
        assert s.on_ack(k[1], k[2])
    assert out == ["a2", "a3", "a4"] and s.idle()


def test_receiver_total_buffer_bounded_across_sessions():
    r = Receiver(window=4)
    r.on_frame(q(SA, 1, 1, "a1"))
    r.on_frame(q(SB, 1, 1, "b1"))
    for i in (3, 4, 5):
        assert r.on_frame(q(SA, i, 2, f"a{i}")) == (None, [])
    assert r.on_frame(q(SB, 3, 2, "b3")) == (None, [])
    assert r.buffered == 4
    # full: a new held line of SB makes room by dropping SA's furthest-ahead line
    assert r.on_frame(q(SB, 4, 2, "b4")) == (None, [])
    assert r.buffered == 4 and r.dropped == 1
    assert r.on_frame(q(SB, 2, 2, "b2")) == (b"a|0badcafe|2", ["b2", "b3", "b4"])
    assert r.on_frame(q(SA, 2, 2, "a2")) == (b"a|3fa2c901|2", ["a2", "a3", "a4"])
    assert r.buffered == 0
    # 5 was dropped, never acked: its resend is delivered now
    assert r.on_frame(q(SA, 5, 5, "a5")) == (b"a|3fa2c901|5", ["a5"])


def test_receiver_full_buffer_of_one_session_drops_beyond_window_only():
    r = Receiver(window=4)
    r.on_frame(q(SA, 1, 1, "a1"))
    for i in (3, 4, 5, 6):
        r.on_frame(q(SA, i, 2, str(i)))
    assert r.buffered == 4 and r.dropped == 0
    assert r.on_frame(q(SA, 7, 2, "7")) == (None, [])  # beyond the window
    assert r.dropped == 1 and r.buffered == 4
    assert r.on_frame(q(SA, 2, 2, "2"))[1] == ["2", "3", "4", "5", "6"]


def test_receiver_skip_ahead_with_buffered_line_at_base():
    r = Receiver()
    r.on_frame(q(SA, 1, 1, "a"))
    r.on_frame(q(SA, 4, 2, "d"))
    r.on_frame(q(SA, 5, 2, "e"))
    # base 4: 4 is already held; it is delivered once, the new copy is a duplicate
    assert r.on_frame(q(SA, 4, 4, "d")) == (b"a|3fa2c901|4", ["d", "e"])
    assert r.buffered == 0 and r.expected == 6


def test_receiver_unreliable_and_other_kinds():
    r = Receiver()
    assert r.on_frame(frames.decode(b"u|3fa2c901|hi")) == (None, ["hi"])
    assert r.session is None and r.expected == 0  # u frames never adopt
    assert r.sessions() == []
    assert r.on_frame(frames.decode(b"a|3fa2c901|1")) == (None, [])
    assert r.on_frame(frames.decode(b"h")) == (None, [])


def test_receiver_snapshot_restore_json_roundtrip():
    r = Receiver()
    r.on_frame(q(SA, 1, 1, "a"))
    r.on_frame(q(SA, 3, 1, "c"))
    r.on_frame(q(SB, 10, 9, "j"))
    r.on_frame(q(SB, 12, 9, "l é"))
    snap = json.loads(json.dumps(r.snapshot()))
    assert snap == {
        "window": 16,
        "sessions": [[SA, 2, [[3, "c"]]], [SB, 9, [[10, "j"], [12, "l é"]]]],
    }
    r2 = Receiver()
    r2.restore(snap)
    assert r2.session == SB and r2.expected == 9 and r2.buffered == 3
    assert r2.on_frame(q(SB, 9, 9, "i"))[1] == ["i", "j"]
    assert r2.on_frame(q(SB, 11, 11, "k"))[1] == ["k", "l é"]
    assert r2.on_frame(q(SA, 2, 2, "b")) == (b"a|3fa2c901|2", ["b", "c"])
    assert r2.snapshot()["sessions"] == [[SB, 13, []], [SA, 4, []]]


def test_receiver_refuses_the_unreleased_single_session_snapshot():
    """The single-session format of a Receiver that was never released is malformed."""
    old = {"window": 16, "session": "0123abcd", "expected": 7, "recent": [SA], "buffer": [[9, "x"]]}
    r = Receiver()
    with pytest.raises(ValueError, match="malformed Receiver snapshot"):
        r.restore(json.loads(json.dumps(old)))
    assert r.sessions() == [] and r.session is None


def test_receiver_restore_keeps_most_recent_sessions():
    names = [f"{i:08x}" for i in range(1, MAX_SESSIONS + 3)]
    r = Receiver()
    r.restore({"window": 16, "sessions": [[s, 1, []] for s in names]})
    assert [x[0] for x in r.sessions()] == names[-MAX_SESSIONS:]


@pytest.mark.parametrize(
    "snap",
    [
        {},
        None,
        [],
        {"session": 5, "expected": 1, "recent": []},
        {"session": SA, "expected": -1, "recent": []},
        {"session": SA, "expected": True, "recent": []},
        {"session": SA, "expected": 1, "recent": ["nothex!!"]},
        {"session": SA, "expected": 1, "recent": [], "buffer": [[1, "x"]]},
        {"session": SA, "expected": 1, "recent": [], "buffer": [[2, 3]]},
        {"session": SA, "expected": 1, "recent": [], "buffer": [[18, "x"]]},
        {"session": None, "expected": 1, "recent": [], "buffer": [[2, "x"]]},
        {"sessions": 5},
        {"sessions": [[SA, 1]]},
        {"sessions": [[SA, 1, [], 4]]},
        {"sessions": [["nothex!!", 1, []]]},
        {"sessions": [[SA, 70000, []]]},
        {"sessions": [[SA, 1, 5]]},
        {"sessions": [[SA, 1, [[1, "x"]]]]},
        {"sessions": [[SA, 1, []], [SA, 5, []]]},
        {"sessions": [[SA, 1, [[i, "x"] for i in range(2, 12)]],
                      [SB, 1, [[i, "x"] for i in range(2, 9)]]]},  # 17 > 16 held
    ],
)
def test_receiver_restore_rejects_malformed(snap):
    r = Receiver()
    r.on_frame(q(SC, 1, 1, "kept"))
    with pytest.raises(ValueError):
        r.restore(snap)
    assert r.sessions() == [[SC, 2]]  # unchanged


def test_id_after():
    assert id_after(1, 0) and id_after(0, 65535) and id_after(32767, 0)
    assert not id_after(0, 0) and not id_after(32768, 0) and not id_after(65535, 0)


# -- property tests: lossy, duplicating, reordering network ----------------------


class Net:
    """Frames in flight: random loss, duplication and delay (hence reordering)."""

    def __init__(self, rng, loss, dup, max_delay):
        self.rng = rng
        self.loss = loss
        self.dup = dup
        self.max_delay = max_delay
        self.heap = []
        self.n = 0
        self.down = False

    def send(self, t, dest, frame):
        if self.down or self.rng.random() < self.loss:
            return
        copies = 2 if self.rng.random() < self.dup else 1
        for _ in range(copies):
            self.n += 1
            heapq.heappush(
                self.heap, (t + self.rng.randint(0, self.max_delay), self.n, dest, frame)
            )

    def next_time(self):
        return self.heap[0][0] if self.heap else None

    def pop_due(self, t):
        while self.heap and self.heap[0][0] <= t:
            yield heapq.heappop(self.heap)[2:]


class Sim:
    """One Sender, one Receiver, a Net, simulated time starting near the tick wrap."""

    T0 = TICKS_MAX - 2000

    def __init__(self, seed, loss, dup, max_delay, window, timeout_ms, first_id=1):
        self.rng = random.Random(seed)
        self.net = Net(self.rng, loss, dup, max_delay)
        self.sender = Sender(SA, window, timeout_ms)
        self.sender.next_id = first_id
        self.receiver = Receiver()
        self.delivered = []
        self.t = 0
        self.peer_up = True
        self.persist = None  # callable run before acks are sent

    def now(self):
        return ticks_add(self.T0, self.t)

    def step(self, pending):
        """Run everything due at self.t, then advance self.t. False when done."""
        s = self.sender
        now = self.now()
        while pending and s.can_send():
            self.net.send(self.t, "r", s.send(pending.pop(0), now))
        for f in s.due(now, self.peer_up):
            self.net.send(self.t, "r", f)
        for dest, f in self.net.pop_due(self.t):
            k = frames.decode(f)
            if dest == "r":
                ack, lines = self.receiver.on_frame(k)
                self.delivered += lines
                if self.persist:
                    self.persist()
                if ack is not None:
                    self.net.send(self.t, "s", ack)
            else:
                s.on_ack(k[1], k[2])
        if not pending and s.idle() and self.net.next_time() is None:
            return False
        if pending and s.can_send():
            return True
        cands = []
        nt = self.net.next_time()
        if nt is not None:
            cands.append(nt)
        dl = s.next_deadline()
        if dl is not None and self.peer_up:
            cands.append(self.t + max(0, ticks_diff(dl, now)))
        if not cands:
            cands.append(self.t + 100)
        self.t = max(self.t + 1, min(cands))
        return True

    def run(self, pending, until=None, max_steps=200000):
        for _ in range(max_steps):
            if until is not None and until():
                return
            if not self.step(pending):
                return
        raise AssertionError("simulation did not finish")


net_params = dict(
    seed=st.integers(0, 2**32 - 1),
    loss=st.sampled_from([0.0, 0.1, 0.3, 0.5]),
    dup=st.sampled_from([0.0, 0.2, 0.5]),
    max_delay=st.sampled_from([0, 5, 50, 400]),
    window=st.integers(1, 16),
    n=st.integers(1, 60),
    first_id=st.sampled_from([1, 65500, 65530, 65535, 0]),
)


@PROPS
@given(**net_params)
def test_prop_exactly_once_in_order(seed, loss, dup, max_delay, window, n, first_id):
    sim = Sim(seed, loss, dup, max_delay, window, 100, first_id)
    lines = [f"line {i}" for i in range(n)]
    sim.run(list(lines))
    assert sim.delivered == lines
    assert sim.sender.idle()


@PROPS
@given(**net_params, outage_at=st.integers(0, 3000), outage_ms=st.integers(1, 5000))
def test_prop_outage_then_resend_all(
    seed, loss, dup, max_delay, window, n, first_id, outage_at, outage_ms
):
    sim = Sim(seed, loss, dup, max_delay, window, 100, first_id)
    lines = [f"line {i}" for i in range(n)]
    pending = list(lines)
    sim.run(pending, until=lambda: sim.t >= outage_at)
    sim.net.down = True
    sim.peer_up = False
    end = sim.t + outage_ms
    sim.run(pending, until=lambda: sim.t >= end)
    sim.net.down = False
    sim.peer_up = True
    for f in sim.sender.resend_all(sim.now()):
        sim.net.send(sim.t, "r", f)
    sim.run(pending)
    assert sim.delivered == lines


@PROPS
@given(**net_params, crash_at=st.integers(0, 2000))
def test_prop_receiver_restart_from_persisted_state(
    seed, loss, dup, max_delay, window, n, first_id, crash_at
):
    """The server persists its receive state before sending acks (4.5): no loss, no dup."""
    sim = Sim(seed, loss, dup, max_delay, window, 100, first_id)
    store = {}

    def persist():
        store["snap"] = json.dumps(sim.receiver.snapshot())

    sim.persist = persist
    lines = [f"line {i}" for i in range(n)]
    pending = list(lines)
    sim.run(pending, until=lambda: sim.t >= crash_at)
    sim.receiver = Receiver()
    if "snap" in store:
        sim.receiver.restore(json.loads(store["snap"]))
    sim.run(pending)
    assert sim.delivered == lines


@PROPS
@given(**net_params, crash_at=st.integers(0, 2000))
def test_prop_receiver_restart_without_state_adopts_base(
    seed, loss, dup, max_delay, window, n, first_id, crash_at
):
    """A receiver that lost its state adopts the session at base and goes on.

    Nothing is lost; only lines whose ack had not reached the sender may be
    delivered again (to the new receiver); everything sent after the restart
    arrives exactly once, in order.
    """
    sim = Sim(seed, loss, dup, max_delay, window, 100, first_id)
    lines = [f"line {i}" for i in range(n)]
    pending = list(lines)
    sim.run(pending, until=lambda: sim.t >= crash_at)
    before = list(sim.delivered)
    sent_before = n - len(pending)
    # A fresh receiver cannot tell an old line from a new one: lines not yet
    # acknowledged, or with a copy still in flight, may be delivered again.
    unacked_at_crash = {lines[(i - first_id) & 0xFFFF] for i in sim.sender.unacked_ids()}
    unacked_at_crash |= {frames.decode(e[3])[4] for e in sim.net.heap if e[2] == "r"}
    sim.receiver = Receiver()
    sim.delivered = []
    sim.run(pending)
    after = sim.delivered
    idx = [lines.index(x) for x in after]
    assert idx == sorted(set(idx)), "new receiver delivered out of order or twice"
    assert set(lines) <= set(before) | set(after), "a line was lost"
    assert set(before) & set(after) <= unacked_at_crash, "an acknowledged line came again"
    assert lines[sent_before:] == after[len(after) - (n - sent_before) :]
    assert sim.sender.idle()


@PROPS
@given(**net_params, restart_at=st.integers(0, 2000), m=st.integers(1, 30))
def test_prop_sender_restart_new_session_never_dropped(
    seed, loss, dup, max_delay, window, n, first_id, restart_at, m
):
    """A restarted sender (new session, ids from 1 again) has every new line delivered once.

    Frames of the old session still in flight (late, duplicated) stay in the
    old session's own stream: delivered at most once, in order, and they
    never hold up the new session.
    """
    sim = Sim(seed, loss, dup, max_delay, window, 100, first_id)
    old_lines = [f"old {i}" for i in range(n)]
    pending = list(old_lines)
    # the receiver knows the old session before the sender restarts
    sim.run(pending, until=lambda: sim.t >= restart_at and sim.receiver.session == SA)
    sim.sender = Sender(SB, window, 100)
    new_lines = [f"new {i}" for i in range(m)]
    sim.run(list(new_lines))
    got = sim.delivered
    assert [x for x in got if x.startswith("new")] == new_lines
    old_got = [x for x in got if x.startswith("old")]
    idx = [old_lines.index(x) for x in old_got]
    assert idx == sorted(set(idx))
    assert idx == list(range(len(idx)))  # a prefix: nothing skipped in between
    assert [x[0] for x in sim.receiver.sessions()] in ([SA, SB], [SB, SA])


class MultiSim:
    """Several Senders (one session each) and one Receiver on a lossy Net.

    Sender k starts writing at ``starts[k]`` ms. Lines are "<k> <i>". Acks
    go to the sender whose session they name.
    """

    T0 = TICKS_MAX - 2000

    def __init__(self, seed, loss, dup, max_delay, windows, first_ids, starts, counts):
        self.rng = random.Random(seed)
        self.net = Net(self.rng, loss, dup, max_delay)
        self.senders = []
        self.pending = []
        self.lines = []
        for k in range(len(windows)):
            s = Sender(f"{k + 0xA0:08x}", windows[k], 100)
            s.next_id = first_ids[k]
            self.senders.append(s)
            self.lines.append([f"{k} {i}" for i in range(counts[k])])
            self.pending.append(list(self.lines[k]))
        self.starts = starts
        self.receiver = Receiver()
        self.delivered = []
        self.t = 0
        self.max_buffered = 0

    def got(self, k):
        return [x for x in self.delivered if x.split()[0] == str(k)]

    def step(self):
        now = ticks_add(self.T0, self.t)
        for k, s in enumerate(self.senders):
            if self.t >= self.starts[k]:
                while self.pending[k] and s.can_send():
                    self.net.send(self.t, "r", s.send(self.pending[k].pop(0), now))
            for f in s.due(now):
                self.net.send(self.t, "r", f)
        for dest, f in self.net.pop_due(self.t):
            k = frames.decode(f)
            if dest == "r":
                ack, lines = self.receiver.on_frame(k)
                self.delivered += lines
                self.max_buffered = max(self.max_buffered, self.receiver.buffered)
                if ack is not None:
                    self.net.send(self.t, "s", ack)
            else:
                for s in self.senders:
                    s.on_ack(k[1], k[2])
        busy = any(self.pending) or not all(s.idle() for s in self.senders)
        if not busy and self.net.next_time() is None:
            return False
        cands = [st_ for st_ in self.starts if st_ > self.t]
        nt = self.net.next_time()
        if nt is not None:
            cands.append(nt)
        for s in self.senders:
            dl = s.next_deadline()
            if dl is not None:
                cands.append(self.t + max(0, ticks_diff(dl, now)))
        if not cands:
            cands.append(self.t + 100)
        self.t = max(self.t + 1, min(cands))
        return True

    def run(self, max_steps=400000):
        for _ in range(max_steps):
            if not self.step():
                return
        raise AssertionError("simulation did not finish")


@PROPS
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.sampled_from([0.0, 0.1, 0.3]),
    dup=st.sampled_from([0.0, 0.2, 0.5]),
    max_delay=st.sampled_from([0, 5, 50, 400]),
    windows=st.tuples(st.integers(1, 16), st.integers(1, 16)),
    first_ids=st.tuples(*[st.sampled_from([1, 65530, 0])] * 2),
    start2=st.integers(0, 2000),
    counts=st.tuples(st.integers(1, 50), st.integers(1, 20)),
)
def test_prop_two_senders_interleaved_each_exactly_once_in_order(
    seed, loss, dup, max_delay, windows, first_ids, start2, counts
):
    """Problem (a): a server app and a `pblink send` writing to one device at once."""
    sim = MultiSim(seed, loss, dup, max_delay, windows, first_ids, (0, start2), counts)
    sim.run()
    for k in range(2):
        assert sim.got(k) == sim.lines[k]
        assert sim.senders[k].idle()
    assert sim.max_buffered <= sim.receiver.window
    if not loss and not max_delay:  # nothing reordered: nothing held, nothing dropped
        assert sim.receiver.dropped == 0 and sim.max_buffered == 0


@PROPS
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.sampled_from([0.0, 0.1, 0.3]),
    dup=st.sampled_from([0.0, 0.2]),
    max_delay=st.sampled_from([5, 50, 400]),
    window=st.integers(2, 16),
    extra=st.integers(1, 3),
    n=st.integers(1, 15),
)
def test_prop_more_senders_than_sessions_converge(seed, loss, dup, max_delay, window, extra, n):
    """More live sessions than the table holds: evictions drop held lines, resends recover.

    Every line arrives, the senders all finish, and each sender's lines are
    first delivered in order. A line may come twice only when its session was
    evicted after delivering it but before its ack reached the sender.
    """
    k_n = MAX_SESSIONS + extra
    sim = MultiSim(
        seed, loss, dup, max_delay, [window] * k_n, [1] * k_n, [0] * k_n, [n] * k_n
    )
    sim.run()
    assert sim.max_buffered <= sim.receiver.window
    for k in range(k_n):
        got = sim.got(k)
        first = list(dict.fromkeys(got))
        assert first == sim.lines[k]
        assert sim.senders[k].idle()
    if sim.receiver.adopted == k_n:  # no session was ever evicted
        assert len(sim.delivered) == k_n * n
