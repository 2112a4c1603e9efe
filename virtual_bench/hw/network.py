# Virtual bench: network.WLAN for the ESP8266 process (plain MicroPython).
# The harness decides whether the access point is reachable (WiFi outages,
# a bad SSID at boot); the sockets themselves are the unix port's real ones,
# routed by the bench through a proxy that drops them during an outage.
import binascii
import _vbench

STA_IF = 0
AP_IF = 1
STAT_IDLE = 0
STAT_CONNECTING = 1
STAT_WRONG_PASSWORD = 2
STAT_NO_AP_FOUND = 3
STAT_CONNECT_FAIL = 4
STAT_GOT_IP = 5
MODE_11B = 1
MODE_11G = 2
MODE_11N = 3


def hostname(name=None):
    if name is None:
        return 'pblink-esp'


def phy_mode(mode=None):
    if mode is None:
        return MODE_11N


class WLAN:
    def __init__(self, interface_id=STA_IF):
        self._if = interface_id

    def _c(self, *args):
        return _vbench.call('wlan', self._if, *args)

    def active(self, is_active=None):
        return self._c('active', is_active)

    def connect(self, ssid=None, key=None, *, bssid=None):
        self._c('connect', ssid, key)

    def disconnect(self):
        self._c('disconnect')

    def isconnected(self):
        return self._c('isconnected')

    def status(self, param=None):
        return self._c('status', param)

    def scan(self):
        # (ssid, bssid, channel, RSSI, security, hidden), as the ESP8266 port
        return [(x[0].encode(), binascii.unhexlify(x[1]), x[2], x[3], x[4], x[5])
                for x in self._c('scan')]

    def ifconfig(self, config=None):
        r = self._c('ifconfig', config)
        return tuple(r) if r is not None else None

    def config(self, *args, **kw):
        if args:
            r = self._c('config_get', args[0])
            if args[0] == 'mac':
                return bytes(r)
            return r
        self._c('config_set', kw)
