"""The server side's one clock.

link_core reads no clock (callers pass the time in); every server-side caller
takes it from here, so all of them share one wrapping domain.
"""

from __future__ import annotations

import time

from link_core import clock


def now_ms() -> int:
    """Milliseconds in link_core's tick domain, [0, 2**30 - 1].

    ``time.monotonic()`` folded into the wrapping domain of link_core/clock.py:
    compare two values with ``clock.ticks_diff`` only, never with ``-``.
    """
    # ticks_add folds a plain int into the domain (clock keeps its period private)
    return clock.ticks_add(int(time.monotonic() * 1000), 0)
