# In-process fake `select` for the bridge's process (not device code; see machine.py).
# The bridge's one sleep is select.poll's ipoll (esp_bridge/mqtt.py
# MQTTClient.wait); the ESP8266 runs the syn IRQ's handler while poll waits.
# With PBLINK_SIM_PYBOARD set, the poll objects made here run the scripted
# Pyboard (machine.pump) while they wait, in slices up to its next step; its
# exchanges run the bridge's syn handler through the fake Pin. Otherwise (the
# MQTT and Pyboard tests, asyncio included) poll() is the built-in one.
import os

import machine
import time
import uselect
from uselect import POLLERR, POLLHUP, POLLIN, POLLOUT  # noqa: F401

_SIM = bool(os.getenv("PBLINK_SIM_PYBOARD"))


class _Poll:
    def __init__(self):
        p = uselect.poll()
        self._p = p
        # the built-in poll's own methods, bound: only the wait is different
        self.register = p.register
        self.unregister = p.unregister
        self.modify = p.modify

    def poll(self, timeout=-1):
        t0 = time.ticks_ms()
        while True:
            d = machine.pump()
            left = -1
            if timeout >= 0:
                left = timeout - time.ticks_diff(time.ticks_ms(), t0)
                if left < 0:
                    left = 0
            w = d if d >= 0 and (left < 0 or d < left) else left
            r = self._p.poll(w)
            if r or w == left:
                return r

    def ipoll(self, timeout=-1, flags=0):
        return self.poll(timeout)


def poll():
    return _Poll() if _SIM else uselect.poll()


def select(*a):
    return uselect.select(*a)
