"""Tick arithmetic for MicroPython's wrapping millisecond clock.

``time.ticks_ms()`` on MicroPython wraps at ``TICKS_PERIOD`` (2**30). On
CPython callers pass plain ints such as ``int(time.monotonic() * 1000)``.
Both work here as long as the two times compared are less than 2**29 ms
(about 6 days) apart. Results of ``ticks_add`` are in the wrapped domain:
compare them only with ``ticks_diff``, never with ``<`` or ``-``.

No intermediate value leaves MicroPython's 31-bit small-int range, so these
functions never allocate on a 32-bit board.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


TICKS_PERIOD = const(0x40000000)  # 2**30
TICKS_MAX = const(0x3FFFFFFF)  # TICKS_PERIOD - 1
_HALF = const(0x20000000)  # 2**29


def ticks_diff(a, b):
    """Signed difference ``a - b`` of two tick values, in [-2**29, 2**29).

    Positive when ``a`` is after ``b``. Same semantics as
    ``time.ticks_diff`` on MicroPython.
    """
    d = (a - b) & TICKS_MAX
    if d >= _HALF:
        d = d - TICKS_MAX - 1
    return d


def ticks_add(a, d):
    """Tick value ``d`` ms after ``a`` (``d`` may be negative, |d| < 2**29).

    Same semantics as ``time.ticks_add`` on MicroPython. The result is in
    [0, TICKS_MAX].
    """
    if a < 0 or a > TICKS_MAX:
        a &= TICKS_MAX  # plain CPython ints: bring into the tick domain
    r = (a - TICKS_MAX) + d  # a + d - TICKS_MAX, stays small
    if r > 0:  # a + d >= TICKS_PERIOD: wrapped forwards
        return r - 1
    s = r + TICKS_MAX  # == a + d
    if s < 0:  # wrapped backwards
        s = s + TICKS_MAX + 1
    return s
