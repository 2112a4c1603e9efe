"""The lite load generator's devices look at their liveness rules in time.

``benchmarks.lite_load`` does not ask every device every tick whether a
heartbeat or a retransmission is due: each device computes, from its
``ServerWatch`` and ``Sender``, when the rules can next change their answer,
and is looked at then (a timing-wheel slot). If that time were late, the
benchmark's devices would send heartbeats late or miss that the server went
away, and would no longer behave as PROTOCOL.md 4.4 says; these tests check
the computed time against the rules themselves, millisecond by millisecond.
"""

from __future__ import annotations

import argparse
import itertools

import pytest

from benchmarks.lite_load import Device, Generator
from link_core.clock import ticks_add, ticks_diff

TIMEOUT = 1500


def _device() -> tuple[Generator, Device]:
    args = argparse.Namespace(root="pblink", port=1, timeout_ms=TIMEOUT, first=0, count=1,
                              slice_ms=5.0, timer_res_ms=1.0)
    gen = Generator(args)
    d = gen.devs[0]
    d.sock = object()  # type: ignore[assignment]  # connected; tick() queues, never sends
    return gen, d


def _state(d: Device, now: int) -> tuple[bool, bool, int]:
    """What the rules say at ``now``: heartbeat due, reachable, frames due to retransmit."""
    w = d.watch
    due = d.sender.next_deadline()
    return (w.heartbeat_due(now), w.reachable(now),
            0 if due is None or not d.was_up else int(ticks_diff(now, due) >= 0))


@pytest.mark.parametrize(("pub", "heard", "h", "sent"),
                         list(itertools.product((0, -300, -749, -1400), (0, -200, -760, -1499),
                                                (0, -500, -800), (None, -100, -1450))))
def test_next_look_is_never_after_a_rule_changes(pub: int, heard: int, h: int,
                                                 sent: int | None) -> None:
    gen, d = _device()
    now = 1_000_000
    w = d.watch
    w.connected(now - 5000)
    w.last_pub, w.last_heard, w.last_h = (ticks_add(now, x) for x in (pub, heard, h))
    d.was_up = w.reachable(now)
    if sent is not None:  # a qos line in flight, sent ``sent`` ms ago
        d.sender.send("1 2", ticks_add(now, sent))
    t = 500.0  # the monotonic time that goes with ``now``
    gen.slot_done = int(t / gen.res_s)
    d.tick(now, t)
    look_ms = round(d.check_at * gen.res_s * 1000 - t * 1000)  # the slot's time, after t
    assert look_ms >= 1
    after = _state(d, now)  # the answers right after the look (an h just went out if due)
    assert not after[0]
    # until the next look (less its one-slot resolution), no rule changes its answer
    for dt in range(1, look_ms - 1):
        assert _state(d, now + dt) == after, (dt, look_ms)


def test_next_look_comes_at_the_heartbeat_due_time() -> None:
    """A device that just published and heard: looked at again when its ``h`` is due, not later."""
    gen, d = _device()
    now, t = 2_000_000, 700.0
    d.watch.connected(now - 5000)
    d.watch.published(now)
    d.watch.heard(now)
    d.was_up = True
    gen.slot_done = int(t / gen.res_s)
    d.tick(now, t)
    look_ms = d.check_at * gen.res_s * 1000 - t * 1000
    assert TIMEOUT // 2 <= look_ms <= TIMEOUT // 2 + 1
    assert d.watch.heartbeat_due(now + TIMEOUT // 2)


def test_a_lost_connection_is_not_looked_at() -> None:
    gen, d = _device()
    d.sock = None
    d.tick(1000, 1.0)
    assert d.check_at == -1 and not gen.check_wheel
