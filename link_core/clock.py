"""Tick arithmetic for MicroPython's wrapping millisecond clock.

``time.ticks_ms()`` on MicroPython wraps at 2**30. On
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
else:
    # MicroPython's compiler folds every const() itself: the name would only
    # cost the ESP8266 bridge a slot of this module's dict
    del const


# Private: a public constant costs the ESP8266 bridge a slot of this module's dict
_TICKS_MAX = const(0x3FFFFFFF)  # 2**30 - 1, the wrapping period less one
_HALF = const(0x20000000)  # 2**29


def ticks_diff(a, b):
    """Signed difference ``a - b`` of two tick values, in [-2**29, 2**29).

    Positive when ``a`` is after ``b``. Same semantics as
    ``time.ticks_diff`` on MicroPython.
    """
    d = (a - b) & _TICKS_MAX
    if d >= _HALF:
        d = d - _TICKS_MAX - 1
    return d


def ticks_add(a, d):
    """Tick value ``d`` ms after ``a`` (``d`` may be negative, |d| < 2**29).

    Same semantics as ``time.ticks_add`` on MicroPython. The result is in
    [0, 2**30 - 1].
    """
    if a < 0 or a > _TICKS_MAX:
        a &= _TICKS_MAX  # plain CPython ints: bring into the tick domain
    r = (a - _TICKS_MAX) + d  # a + d - _TICKS_MAX, stays small
    if r > 0:  # a + d >= 2**30: wrapped forwards
        return r - 1
    s = r + _TICKS_MAX  # == a + d
    if s < 0:  # wrapped backwards
        s = s + _TICKS_MAX + 1
    return s
