"""link_core.i2c_link: blocks, LinkEndpoint and PollPolicy (PROTOCOL.md section 1)."""

import binascii
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from link_core import i2c_link as L
from link_core import i2c_tools as T
from link_core.clock import ticks_add
from link_core.names import MAX_MESSAGE

TICKS_MAX = 2**30 - 1  # MicroPython ticks wrap at 2**30 (link_core.clock)

PROPS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)



def test_flags_of_tools_are_the_links():
    # i2c_link keeps them private (a public name costs the bridge RAM)
    assert (T.MORE, T.HOLD, T.SYNC, T.FRESH, T.VERSION) == (
        L._MORE, L._HOLD, L._SYNC, L._FRESH, L._VERSION) == (0x01, 0x02, 0x04, 0x08, 0x50)

def pair(tx_queue=4, rx_queue=4, sync_message=None):
    ini = L.LinkEndpoint(L.INITIATOR, tx_queue, rx_queue)
    res = L.LinkEndpoint(L.RESPONDER, tx_queue, rx_queue)
    ini.sync_message = sync_message
    return ini, res


def exchange(ini, res):
    fi = ini.build_block()
    res.on_block(fi)
    fr = res.build_block()
    ini.on_block(fr)
    return T.decode_block(fi), T.decode_block(fr)


def synced_pair(**kw):
    ini, res = pair(**kw)
    exchange(ini, res)
    assert ini.synced and res.synced
    return ini, res


def drain(ep):
    out = []
    while True:
        m = ep.pop_message()
        if m is None:
            return out
        out.append(m)


# -- CRC and blocks ------------------------------------------------------------


def test_crc16_check_value():
    assert T.crc16(b"123456789") == 0x29B1
    assert T.crc16(b"") == 0xFFFF
    assert T.crc16(b"6789", T.crc16(b"12345")) == 0x29B1


@given(st.binary(max_size=300))
@settings(max_examples=100, deadline=None)
def test_crc16_matches_binascii_crc_hqx(data):
    assert T.crc16(data) == binascii.crc_hqx(data, 0xFFFF)
    assert T.crc16(bytearray(data)) == T.crc16(memoryview(data))


@given(
    flags=st.integers(0, 15),
    seq=st.integers(0, 255),
    ack=st.integers(0, 255),
    payload=st.binary(max_size=L.CHUNK_MAX),
)
@settings(max_examples=100, deadline=None)
def test_block_roundtrip(flags, seq, ack, payload):
    f = T.encode_block(flags, seq, ack, payload)
    assert len(f) == 6 + len(payload) <= L.BLOCK_MAX
    assert f[0] == 0x50 | flags
    d = T.decode_block(memoryview(f))
    assert (d.flags, d.seq, d.ack, d.payload) == (0x50 | flags, seq, ack, payload)
    assert d.more == bool(flags & T.MORE) and d.hold == bool(flags & T.HOLD)
    assert d.sync == bool(flags & T.SYNC) and d.fresh == bool(flags & T.FRESH)
    # trailing bytes (the rest of the I2C memory) are ignored
    assert T.decode_block(bytearray(f) + b"\xff" * 30).payload == payload
    buf = bytearray(T.MEM_SIZE)
    n = T.encode_block(flags, seq, ack, payload, memoryview(buf)[L.MEM_RESPONDER :])
    assert bytes(buf[L.MEM_RESPONDER : L.MEM_RESPONDER + n]) == f


@given(payload=st.binary(max_size=L.CHUNK_MAX), data=st.data())
@settings(max_examples=100, deadline=None)
def test_block_corruption_is_detected(payload, data):
    f = bytearray(T.encode_block(0, 1, 2, payload))
    # any burst of up to 16 bits outside the length byte
    i = data.draw(st.integers(0, len(f) - 2).filter(lambda j: j not in (2, 3)))
    f[i] ^= data.draw(st.integers(1, 255))
    f[i + 1] ^= data.draw(st.integers(0, 255))
    assert T.decode_block(f) is None
    assert L.check_block(f) == -1


def test_corrupt_blocks():
    good = T.encode_block(0, 1, 0, b"hello")
    assert L.check_block(good) == 5
    assert T.decode_block(good[:-1]) is None  # truncated
    assert T.decode_block(b"\x50\x00\x00") is None  # too short
    bad = bytearray(good)
    bad[0] = 0x60 | (bad[0] & 0x0F)  # version 6
    assert T.decode_block(bad) is None
    bad = bytearray(T.encode_block(0, 0, 0, b""))
    bad[3] = 121  # longer than CHUNK_MAX
    assert T.decode_block(bad + bytes(130)) is None


def test_encode_block_errors():
    with pytest.raises(ValueError, match="CHUNK_MAX"):
        T.encode_block(0, 0, 0, bytes(121))
    with pytest.raises(ValueError):
        T.encode_block(0, 256, 0)
    with pytest.raises(ValueError):
        T.encode_block(0, 0, -1)


def test_sync_poll_bytes():
    assert T.encode_block(T.SYNC, 0, 0) == bytes.fromhex("540000003b0a")
    assert L.LinkEndpoint(L.INITIATOR).build_block() == bytes.fromhex("540000003b0a")
    assert L.LinkEndpoint(L.RESPONDER).build_block() == bytes.fromhex("580000007438")


# -- LinkEndpoint: API ---------------------------------------------------------


def test_role_and_queue_validation():
    with pytest.raises(ValueError, match="role"):
        L.LinkEndpoint("master")
    ep = L.LinkEndpoint(L.INITIATOR, tx_queue=2)
    with pytest.raises(ValueError, match="MAX_MESSAGE"):
        ep.queue_message(b"")
    with pytest.raises(ValueError, match="MAX_MESSAGE"):
        ep.queue_message(bytes(MAX_MESSAGE + 1))
    assert ep.queue_message(bytes(MAX_MESSAGE))
    assert ep.queue_message(bytearray(b"x"))
    assert not ep.can_queue()
    assert ep.queue_message(b"y") is False
    assert ep.tx_pending == 2


def test_build_block_into_buffer_and_purity():
    ini, _res = synced_pair()
    ini.queue_message(b"q|abc")
    a = ini.build_block()
    assert ini.build_block() == a  # unchanged until on_block
    mem = bytearray(T.MEM_SIZE)
    n = ini.build_block(memoryview(mem))
    assert bytes(mem[:n]) == a
    with pytest.raises(ValueError, match="BLOCK_MAX"):
        ini.build_block(bytearray(100))


def test_on_block_counts_bad_blocks():
    _ini, res = synced_pair()
    assert res.on_block(b"\x00" * 10) is False
    assert res.on_block(memoryview(b"")) is False
    assert T.counters(res)["blocks_bad"] == 2
    c = T.counters(res)
    assert c["blocks_bad"] == 2 and c["syncs"] == 1


# -- synchronisation -----------------------------------------------------------


def test_sync_handshake():
    ini, res = pair(sync_message=b"C[]")
    ini.queue_message(b"K1")
    assert not ini.synced and not res.synced
    # the Responder answers FRESH until it sees SYNC
    f = T.decode_block(res.build_block())
    assert f.fresh and not f.sync and f.payload == b""
    # a corrupt SYNC: still FRESH, Initiator keeps syncing
    res.on_block(b"\x54\x00\x00\x00\x00\x00")
    fr = res.build_block()
    assert T.decode_block(fr).fresh
    ini.on_block(fr)
    assert not ini.synced and ini.peer_fresh
    fi, fr = exchange(ini, res)
    assert fi.sync and fi.payload == b"" and fi.seq == 0 and fi.ack == 0
    assert fr.sync and not fr.fresh and fr.payload == b""
    assert ini.synced and res.synced and ini.syncs == 1 and res.syncs == 1
    assert not ini.peer_fresh
    # the sync message goes first, then the queue
    fi, fr = exchange(ini, res)
    assert fi.payload == b"C[]" and fi.seq == 1 and not fi.sync
    exchange(ini, res)
    exchange(ini, res)
    assert drain(res) == [b"C[]", b"K1"]


def test_responder_reboot_fresh_resyncs_and_resends_sync_message():
    ini, res = synced_pair(sync_message=b"C[]")
    for _ in range(3):
        exchange(ini, res)
    assert drain(res) == [b"C[]"]
    res = L.LinkEndpoint(L.RESPONDER)  # the ESP8266 rebooted on its own
    ini.queue_message(b"q|late")
    fi, fr = exchange(ini, res)
    assert fr.fresh and not ini.synced and ini.peer_fresh and T.counters(ini)["peer_reboots"] == 1
    fi, fr = exchange(ini, res)
    assert fi.sync and fr.sync and ini.synced
    for _ in range(4):
        exchange(ini, res)
    assert drain(res) == [b"C[]", b"q|late"]


def test_repeated_syncs_do_not_pile_up_sync_messages():
    ini, res = pair(sync_message=b"C[]")
    for _ in range(3):
        exchange(ini, res)
        ini.reset()
    exchange(ini, res)
    assert ini.tx_pending == 1
    for _ in range(3):
        exchange(ini, res)
    assert drain(res) == [b"C[]"]


def test_initiator_ignores_repeated_sync_answer_when_synced():
    ini, res = synced_pair()
    ini.queue_message(b"x")
    fi = ini.build_block()
    res.on_block(b"garbage")  # our block corrupt at the Responder
    fr = res.build_block()
    assert T.decode_block(fr).sync  # it repeats its SYNC answer
    assert ini.on_block(fr)
    assert ini.synced and ini.tx_pending == 1
    assert ini.build_block() == fi


def test_responder_reset_goes_back_to_fresh():
    _ini, res = synced_pair()
    res.reset()
    assert not res.synced and T.counters(res)["resets"] == 1
    assert T.decode_block(res.build_block()).fresh


# -- reliability ---------------------------------------------------------------


def test_two_chunk_message_and_more_flag():
    ini, res = synced_pair()
    msg = bytes(range(130))
    ini.queue_message(msg)
    fi, fr = exchange(ini, res)
    assert fi.more and fi.seq == 1 and len(fi.payload) == 120
    assert fr.ack == 1
    fi, fr = exchange(ini, res)
    assert not fi.more and fi.seq == 2 and len(fi.payload) == 10
    assert drain(res) == [msg]
    assert T.counters(ini)["messages_out"] == 1 and T.counters(res)["messages_in"] == 1
    assert T.counters(ini)["bytes_out"] == 130 and T.counters(res)["bytes_in"] == 130
    c = T.counters(res)  # each block counted once, both ways
    assert c["blocks_out"] == c["blocks_ok"] == T.counters(ini)["blocks_ok"] > 0


@pytest.mark.parametrize("size", [1, 119, 120, 121, 240, 241, MAX_MESSAGE])
def test_message_sizes(size):
    ini, res = synced_pair()
    msg = bytes(i & 0xFF for i in range(size))
    ini.queue_message(msg)
    res.queue_message(msg[::-1])
    chunks = (size + 119) // 120
    for _ in range(chunks + 1):
        exchange(ini, res)
    assert drain(res) == [msg]
    assert drain(ini) == [msg[::-1]]


def test_lost_ack_repeat_is_dropped_and_acked():
    ini, res = synced_pair()
    ini.queue_message(b"once")
    fi = ini.build_block()
    res.on_block(fi)
    res.build_block()  # the answer is lost: the Initiator sends the same block again
    assert ini.build_block() == fi
    res.on_block(fi)
    fr = res.build_block()
    assert T.decode_block(fr).ack == 1
    ini.on_block(fr)
    assert drain(res) == [b"once"] and ini.tx_pending == 0


def test_seq_wraps_past_255():
    ini, res = synced_pair()
    seqs = []
    got = []
    for i in range(300):
        ini.queue_message(b"%d" % i)
        fi, _fr = exchange(ini, res)
        seqs.append(fi.seq)
        got += drain(res)
    assert seqs[:3] == [1, 2, 3] and seqs[254:257] == [255, 0, 1]
    assert got == [b"%d" % i for i in range(300)]


def test_oversize_message_discarded_link_goes_on():
    _, res = synced_pair()
    ack = 0
    # a peer that ignores MAX_MESSAGE: 10 full chunks = 1200 bytes
    for seq in range(1, 11):
        flags = T.MORE if seq < 10 else 0
        assert res.on_block(T.encode_block(flags, seq, 0, bytes(120)))
        ack = T.decode_block(res.build_block()).ack
        assert ack == seq
    assert T.counters(res)["too_long"] == 1 and res.rx_pending == 0
    res.on_block(T.encode_block(0, 11, 0, b"next"))
    assert drain(res) == [b"next"]


def test_hold_flow_control():
    ini, res = synced_pair(rx_queue=1)
    ini.queue_message(b"first")
    ini.queue_message(b"second")
    res.queue_message(b"from responder")
    fi, fr = exchange(ini, res)
    assert fi.payload == b"first"
    assert fr.hold and fr.ack == 1  # its queue is now full
    assert ini.peer_hold
    # while held: empty blocks that still ack
    for _ in range(3):
        fi, fr = exchange(ini, res)
        assert fi.payload == b"" and fr.hold
    assert fi.ack == 1  # the Responder's chunk was acked
    assert drain(ini) == [b"from responder"]
    assert not ini.busy  # held, nothing moving: poll slowly
    assert res.pop_message() == b"first"
    fi, fr = exchange(ini, res)  # sees no HOLD any more
    assert fi.payload == b"" and not fr.hold and fr.ack == 1
    fi, fr = exchange(ini, res)
    assert fi.payload == b"second"
    assert res.pop_message() == b"second"


def test_full_receiver_refuses_chunks_even_if_peer_ignores_hold():
    _, res = synced_pair(rx_queue=1)
    res.on_block(T.encode_block(0, 1, 0, b"a"))
    assert res.rx_pending == 1
    res.on_block(T.encode_block(0, 2, 0, b"b"))
    fr = T.decode_block(res.build_block())
    assert fr.hold and fr.ack == 1 and res.rx_pending == 1
    res.pop_message()
    res.on_block(T.encode_block(0, 2, 0, b"b"))
    assert res.pop_message() == b"b"


def test_rx_queue_hold_on_initiator_side():
    ini, res = synced_pair(rx_queue=1)
    res.queue_message(b"one")
    res.queue_message(b"two")
    exchange(ini, res)
    fi, fr = exchange(ini, res)
    assert fi.hold and fr.payload == b""
    assert drain(ini) == [b"one"]
    exchange(ini, res)
    exchange(ini, res)
    assert drain(ini) == [b"two"]


def test_reset_restarts_unfinished_message_from_first_chunk():
    ini, res = synced_pair()
    msg = bytes(range(200))
    ini.queue_message(msg)
    exchange(ini, res)  # first chunk accepted
    ini.reset()  # e.g. two failed exchanges
    exchange(ini, res)  # SYNC: the Responder drops its partial message
    for _ in range(3):
        exchange(ini, res)
    assert drain(res) == [msg] and T.counters(ini)["dropped"] == 0


def test_reset_drops_message_whose_last_chunk_went_out():
    ini, res = synced_pair()
    ini.queue_message(b"u|3fa2c901|maybe delivered")
    ini.queue_message(b"next")
    res.on_block(ini.build_block())  # accepted, but the answer never comes
    ini.reset()
    assert T.counters(ini)["dropped"] == 1 and ini.tx_pending == 1
    for _ in range(4):
        exchange(ini, res)
    assert drain(res) == [b"u|3fa2c901|maybe delivered", b"next"]  # never twice


def test_queue_message_first():
    ini, res = synced_pair()
    ini.queue_message(bytes(200))  # goes out in two chunks
    ini.queue_message(b"b")
    exchange(ini, res)  # first chunk out: this message has started
    ini.queue_message(b"urgent", first=True)
    for _ in range(4):
        exchange(ini, res)
    assert drain(res) == [bytes(200), b"urgent", b"b"]


def test_busy():
    ini, res = synced_pair()
    assert not ini.busy
    ini.queue_message(b"x")
    assert ini.busy
    exchange(ini, res)
    assert ini.busy  # the last exchange carried payload
    exchange(ini, res)
    assert not ini.busy
    res.queue_message(bytes(300))
    exchange(ini, res)
    assert ini.busy  # MORE from the Responder


# -- PollPolicy -------------------------------------------------------------------


def test_poll_policy():
    p = T.PollPolicy(active_poll_ms=1, idle_poll_ms=10, idle_after_ms=200)
    assert p.delay_ms(0, False) == 10
    assert p.delay_ms(5, True) == 1
    assert p.delay_ms(100, False) == 1
    assert p.delay_ms(204, False) == 1
    assert p.delay_ms(205, False) == 10
    assert p.delay_ms(1000, False) == 10
    p.kick(2000)
    assert p.delay_ms(2100, False) == 1
    # across the tick wrap
    t = TICKS_MAX - 50
    assert p.delay_ms(t, True) == 1
    assert p.delay_ms(ticks_add(t, 150), False) == 1
    assert p.delay_ms(ticks_add(t, 250), False) == 10
    d = T.PollPolicy()
    assert (d.active_poll_ms, d.idle_poll_ms, d.idle_after_ms) == (1, 10, 200)


# -- property tests: lossy I2C ---------------------------------------------------------


def mangle(rng, block):
    """Corrupt a block so that the CRC must catch it (burst <= 16 bits, not the length)."""
    b = bytearray(block)
    if rng.random() < 0.3:
        return bytes(b[: rng.randrange(len(b))])
    i = rng.choice([j for j in range(len(b) - 1) if j not in (2, 3)])
    b[i] ^= rng.randint(1, 255)
    b[i + 1] ^= rng.randint(0, 255)
    return bytes(b)


class LinkSim:
    def __init__(self, seed, p_bad, p_pop, rx_queue, sizes_a, sizes_b):
        self.rng = random.Random(seed)
        self.p_bad = p_bad
        self.p_pop = p_pop
        self.ini, self.res = pair(rx_queue=rx_queue, sync_message=b"C[cfg]")
        self.out_a = [
            b"%d:" % i + bytes([65 + i % 26]) * max(0, s - 4) for i, s in enumerate(sizes_a)
        ]
        self.out_b = [
            b"%d:" % i + bytes([97 + i % 26]) * max(0, s - 4) for i, s in enumerate(sizes_b)
        ]
        self.todo_a = list(self.out_a)
        self.todo_b = list(self.out_b)
        self.got_a = []  # at the Responder
        self.got_b = []  # at the Initiator
        self.exchanges = 0
        self.configs = 0

    def pop(self):
        for ep, got in ((self.res, self.got_a), (self.ini, self.got_b)):
            while ep.rx_pending and self.rng.random() < self.p_pop:
                m = ep.pop_message()
                if m == b"C[cfg]":
                    self.configs += 1
                else:
                    got.append(m)

    def exchange(self):
        rng = self.rng
        self.exchanges += 1
        fi = self.ini.build_block()
        r = rng.random()
        if r < self.p_bad / 2:
            return  # the exchange timed out before the Responder read anything
        if r < self.p_bad:
            fi = mangle(rng, fi)
        self.res.on_block(fi)
        fr = self.res.build_block()
        r = rng.random()
        if r < self.p_bad / 2:
            return  # ack never rose: the answer is lost
        if r < self.p_bad:
            fr = mangle(rng, fr)
        self.ini.on_block(fr)

    def step(self):
        while self.todo_a and self.ini.can_queue():
            assert self.ini.queue_message(self.todo_a.pop(0))
        while self.todo_b and self.res.can_queue():
            assert self.res.queue_message(self.todo_b.pop(0))
        self.exchange()
        self.pop()

    def done(self):
        return (
            self.ini.synced
            and self.configs > 0
            and not self.todo_a
            and not self.todo_b
            and self.ini.tx_pending == 0
            and self.res.tx_pending == 0
            and self.ini.rx_pending == 0
            and self.res.rx_pending == 0
        )


sizes = st.lists(
    st.one_of(
        st.integers(1, 130),
        st.sampled_from([119, 120, 121, 240, 241, MAX_MESSAGE]),
        st.integers(1, MAX_MESSAGE),
    ),
    max_size=10,
)
link_params = dict(
    seed=st.integers(0, 2**32 - 1),
    p_bad=st.sampled_from([0.0, 0.05, 0.2, 0.4]),
    p_pop=st.sampled_from([0.05, 0.3, 1.0]),
    rx_queue=st.integers(1, 4),
    sizes_a=sizes,
    sizes_b=sizes,
)


@PROPS
@given(**link_params)
def test_prop_link_delivers_everything_once_in_order(
    seed, p_bad, p_pop, rx_queue, sizes_a, sizes_b
):
    sim = LinkSim(seed, p_bad, p_pop, rx_queue, sizes_a, sizes_b)
    for _ in range(50000):
        if sim.done():
            break
        sim.step()
    assert sim.done(), "link stalled"
    assert sim.got_a == sim.out_a
    assert sim.got_b == sim.out_b
    assert sim.ini.syncs == 1 and T.counters(sim.ini)["dropped"] == 0 and sim.configs == 1


def subsequence(got, sent):
    it = iter(sent)
    return all(any(g == s for s in it) for g in got)


@PROPS
@given(**link_params, p_reset=st.sampled_from([0.01, 0.05]), reboot=st.booleans())
def test_prop_link_resets_never_duplicate_or_reorder(
    seed, p_bad, p_pop, rx_queue, sizes_a, sizes_b, p_reset, reboot
):
    """Initiator resets (and Responder reboots) may lose a message, never duplicate one."""
    sim = LinkSim(seed, p_bad, p_pop, rx_queue, sizes_a, sizes_b)
    resets = 0
    for _ in range(50000):
        if sim.done():
            break
        sim.step()
        if sim.rng.random() < p_reset:
            resets += 1
            if reboot and sim.rng.random() < 0.5:
                sim.res = L.LinkEndpoint(L.RESPONDER, rx_queue=rx_queue)  # loses its queues
            else:
                sim.ini.reset()
    for _ in range(50000):  # no more faults: let it settle
        if sim.done():
            break
        sim.step()
    assert sim.done(), "link stalled"
    for got, sent in ((sim.got_a, sim.out_a), (sim.got_b, sim.out_b)):
        assert len(set(got)) == len(got), "duplicate message"
        assert subsequence(got, sent), "reordered or invented message"
    if not reboot:
        assert len(sim.out_a) - len(sim.got_a) <= resets
        assert len(sim.out_b) - len(sim.got_b) <= resets
