# WiFi station management for the bridge.
#
# connect(): the network stored in flash first (the ESP8266 SDK keeps the
# last one), then the config's ssid/password; then WiFi must stay up for
# stable_ms before the caller may try the broker. The access point interface
# is switched off and WiFi sleep is disabled (modem sleep drops packets and
# adds latency).
import asyncio
import time


class WiFi:
    def __init__(self, connect_ms: int = 10000, stable_ms: int = 3000) -> None:
        import network

        self.connect_ms = connect_ms
        self.stable_ms = stable_ms
        try:
            network.WLAN(network.AP_IF).active(False)
        except (OSError, AttributeError):
            pass
        self.sta = network.WLAN(network.STA_IF)
        self.sta.active(True)
        no_sleep(self.sta)
        self.status = 0  # last WLAN.status() after a failed attempt
        self._stable = False  # up for stable_ms, and not seen down since

    def isconnected(self) -> bool:
        up = self.sta.isconnected()
        if not up:
            self._stable = False
        return up

    async def _wait_up(self) -> bool:
        t0 = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), t0) < self.connect_ms:
            if self.sta.isconnected():
                return True
            await asyncio.sleep_ms(100)
        self.status = self.sta.status()
        return False

    async def _wait_stable(self) -> bool:
        t0 = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), t0) < self.stable_ms:
            if not self.sta.isconnected():
                return False
            await asyncio.sleep_ms(100)
        return self.sta.isconnected()

    async def connect(self, ssid: str = "", password: str = "") -> bool:
        """Bring the station up; True once it has been up for stable_ms."""
        sta = self.sta
        if self.isconnected() and self._stable:
            return True
        if not sta.isconnected():
            up = False
            if self._stored():
                try:
                    sta.connect()  # the network stored in flash
                except OSError:
                    pass
                up = await self._wait_up()
            if not up and ssid:
                try:
                    sta.disconnect()
                    sta.connect(ssid, password)  # the ESP8266 also stores these
                except OSError:
                    pass
                up = await self._wait_up()
            if not up:
                return False
        self._stable = await self._wait_stable()
        return self._stable

    def _stored(self) -> bool:
        try:
            return bool(self.sta.config("ssid"))
        except (OSError, ValueError, TypeError):
            return True  # cannot tell: try it

    def down(self) -> None:
        """Drop the station link (before a fresh connect after an outage)."""
        try:
            self.sta.disconnect()
        except OSError:
            pass


def no_sleep(sta) -> None:
    """Disable WiFi power saving through whichever API this firmware has."""
    try:
        import esp

        esp.sleep_type(esp.SLEEP_NONE)
        return
    except (ImportError, AttributeError):
        pass
    try:
        sta.config(pm=sta.PM_NONE)
    except (AttributeError, OSError, ValueError, TypeError):
        pass
