# Virtual bench: `select` for the board processes (plain MicroPython).
# A process without asyncio (the ESP8266's bridge, whose one sleep is
# select.poll's ipoll) gets poll objects that also wait on the harness's
# connection and run the IRQ handlers of the events that come meanwhile, as the
# ESP8266 runs its soft IRQs while poll waits. A process with asyncio (the
# Pyboard's) gets the built-in poll: its IRQs come from _vbench's asyncio pump.
import sys

import _vbench
import time
import uselect
from uselect import POLLERR, POLLHUP, POLLIN, POLLOUT  # noqa: F401


class _Poll:
    def __init__(self):
        self._p = uselect.poll()
        self._sock = None  # the harness's connection, once registered

    def register(self, obj, mask=POLLIN | POLLOUT):
        self._p.register(obj, mask)

    def unregister(self, obj):
        self._p.unregister(obj)

    def modify(self, obj, mask):
        self._p.modify(obj, mask)

    def poll(self, timeout=-1):
        if self._sock is None and _vbench._sock is not None:
            self._sock = _vbench._sock
            self._p.register(self._sock, POLLIN)
        t0 = time.ticks_ms()
        while True:
            _vbench.poll()  # events that have come: memory, IRQ handlers
            left = -1
            if timeout >= 0:
                left = timeout - time.ticks_diff(time.ticks_ms(), t0)
                if left < 0:
                    left = 0
            r = self._p.poll(left)
            out = [e for e in r if e[0] is not self._sock]
            if out or left == 0 or len(out) == len(r):
                _vbench.poll()
                return out

    def ipoll(self, timeout=-1, flags=0):
        return self.poll(timeout)


def poll():
    return uselect.poll() if "asyncio" in sys.modules else _Poll()


def select(*a):
    return uselect.select(*a)
