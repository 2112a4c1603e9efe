# In-process fake `esp` for the esp_bridge tests (not device code; see machine.py).
SLEEP_NONE = 0
SLEEP_LIGHT = 1
SLEEP_MODEM = 2
_sleep = [SLEEP_MODEM]


def sleep_type(t=None):
    if t is None:
        return _sleep[0]
    _sleep[0] = t
