"""Part of `Bench`: the fault injectors of one device pair (the table of fault
kinds that names them is virtual_bench/faults.py).
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

from virtual_bench.parts import BenchParts
from virtual_bench.wiring import ESP, HARD_RESET, PWRON_RESET, PYBOARD


class FaultInjectors(BenchParts):
    """WiFi, broker route, ESP8266 crash/hang/reset, I2C corruption."""

    async def cut_wifi(self, seconds: float | None = None) -> None:
        """WiFi outage: proxied connections dropped, new ones refused, WLAN not
        connected; restored after `seconds` (None: until restore_wifi())."""
        self.stats["wifi_cuts"] += 1
        self._event("fault", f"wifi cut for {seconds} s")
        self.wifi_up = False
        await self._apply_proxy()
        if seconds is not None:
            self._spawn(self._later(seconds, self.restore_wifi()))

    async def restore_wifi(self) -> None:
        if not self.wifi_up:
            self.wifi_up = True
            self.wifi_since = time.monotonic()
            self._event("fault", "wifi restored")
            await self._apply_proxy()

    async def refuse_broker(self, mode: str = "down") -> None:
        """The broker, as this ESP8266 sees it: "down" (TCP refused),
        "not_authorised" (CONNACK 5), or "up"."""
        self.broker_mode = mode
        self._event("fault", f"broker route {mode}")
        await self._apply_proxy()

    async def allow_broker(self) -> None:
        await self.refuse_broker("up")

    async def crash_esp(self) -> None:
        """SIGKILL the ESP8266, no warning; it stays dead until the Pyboard pulses reset."""
        self.stats["esp_crashes"] += 1
        self._event("fault", "esp crash")
        self._kill_board(ESP, PWRON_RESET)
        self._settle()

    async def hang_esp(self, seconds: float | None = None) -> None:
        """SIGSTOP the ESP8266: keepalives and exchanges stop, pins hold their
        levels; the Pyboard's watchdog is expected to reset it. With `seconds`,
        SIGCONT after that long if it is still the same process."""
        proc = self.procs[ESP]
        if not proc.alive:
            return
        self.stats["esp_hangs"] += 1
        self._event("fault", "esp hang")
        proc.signal(signal.SIGSTOP)
        proc.stopped = True
        if seconds is not None:
            boot = proc.boot
            self._spawn(self._later(seconds, self._unhang(boot)))

    async def _unhang(self, boot: int) -> None:
        proc = self.procs[ESP]
        if proc.boot == boot and proc.alive:
            proc.signal(signal.SIGCONT)
            proc.stopped = False

    async def corrupt_i2c(self, count: int = 1, probability: float = 0.0,
                          seconds: float | None = None) -> None:
        """Flip one random bit in the data of the next `count` transactions, and
        in each transaction with `probability` (for `seconds`, or until called again)."""
        self._event("fault", f"i2c corrupt count={count} p={probability}")
        self._corrupt_count += count
        self._corrupt_p = probability
        self._corrupt_until = time.monotonic() + seconds if seconds is not None else None

    async def reset_esp(self) -> None:
        """Press the ESP8266's reset button (as the seed's crash test)."""
        self._event("fault", "esp reset button")
        await self.restart_board(ESP, HARD_RESET)

    async def restart_pyboard(self) -> None:
        await self.restart_board(PYBOARD, HARD_RESET)

    @property
    def esp_alive(self) -> bool:
        return self.procs[ESP].alive and not self.procs[ESP].stopped

    async def _later(self, seconds: float, coro: Any) -> None:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            coro.close()
            raise
        await coro

    def _proxy_mode(self) -> str:
        return self.broker_mode if self.wifi_up else "down"

    async def _apply_proxy(self) -> None:
        if self.proxy is not None:
            await self.proxy.set_mode(self._proxy_mode())

    # ------------------------------------------------------------- board link
