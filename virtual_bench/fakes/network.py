# In-process fake `network` for the esp_bridge tests (not device code; see machine.py).
# "WiFi" is up unless the file named by PBLINK_FAKE_WIFI_DOWN exists.
import os

_DOWN = os.getenv("PBLINK_FAKE_WIFI_DOWN")
STA_IF = 0
AP_IF = 1
STAT_IDLE = 0
STAT_CONNECTING = 1
STAT_GOT_IP = 5
UP = [True]  # or tests cut "WiFi" by setting UP[0] = False


def _wifi_ok():
    if not UP[0]:
        return False
    if _DOWN:
        try:
            os.stat(_DOWN)
            return False
        except OSError:
            pass
    return True


class WLAN:
    PM_NONE = 0

    def __init__(self, interface=STA_IF):
        self.interface = interface
        self._active = False
        self._ssid = ""

    def active(self, v=None):
        if v is None:
            return self._active
        self._active = bool(v)

    def isconnected(self):
        return self.interface == STA_IF and self._active and _wifi_ok()

    def connect(self, ssid=None, key=None):
        if ssid is not None:
            self._ssid = ssid

    def disconnect(self):
        pass

    def status(self, *a):
        return STAT_GOT_IP if self.isconnected() else STAT_CONNECTING

    def config(self, *a, **k):
        if a:
            return self._ssid
