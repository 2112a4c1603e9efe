"""link_core.clock: MicroPython tick arithmetic."""

from hypothesis import given, settings
from hypothesis import strategies as st

from link_core.clock import ticks_add, ticks_diff

TICKS_MAX = 2**30 - 1  # MicroPython ticks wrap at 2**30 (link_core.clock)
TICKS_PERIOD = 2**30

ticks = st.integers(0, TICKS_MAX)
deltas = st.integers(-(2**29) + 1, 2**29 - 1)


def ref_diff(a, b):
    """MicroPython's ticks_diff, as documented."""
    return ((a - b + TICKS_PERIOD // 2) & TICKS_MAX) - TICKS_PERIOD // 2


@given(ticks, ticks)
@settings(max_examples=150, deadline=None)
def test_ticks_diff_matches_micropython(a, b):
    assert ticks_diff(a, b) == ref_diff(a, b)
    assert -(2**29) <= ticks_diff(a, b) < 2**29


@given(ticks, deltas)
@settings(max_examples=150, deadline=None)
def test_ticks_add_matches_micropython(a, d):
    r = ticks_add(a, d)
    assert r == (a + d) % TICKS_PERIOD
    assert 0 <= r <= TICKS_MAX
    assert ticks_diff(r, a) == d


@given(st.integers(0, 2**45), st.integers(0, 2**28))
@settings(max_examples=150, deadline=None)
def test_plain_cpython_ints(a, d):
    # int(time.monotonic() * 1000) may exceed the tick period
    assert ticks_diff(a + d, a) == d
    assert ticks_diff(ticks_add(a, d), a) == d
    assert ticks_diff(a, ticks_add(a, d)) == -d


def test_edges():
    assert ticks_diff(0, TICKS_MAX) == 1
    assert ticks_diff(TICKS_MAX, 0) == -1
    assert ticks_add(TICKS_MAX, 1) == 0
    assert ticks_add(0, -1) == TICKS_MAX
    assert ticks_diff(2**29, 0) == -(2**29)
