"""The fault kinds of the virtual bench: one table, one row a kind.

Everything that names a fault reads this table: the demo's keys, event list,
summary and ``--chaos`` rounds (virtual_bench/demo.py), the soak
(benchmarks/soak.py, which runs the chaos demo), the recovery benchmark
(benchmarks/recovery.py), the timeline's labels, the tests, and
``DeviceDouble.inject`` (virtual_bench/device_double.py).

A row (`FaultKind`):

- ``kind``: the short name (``Fault.kind`` in the demo, ``DeviceDouble.inject``);
- ``label``: what the event list, the summary and the timeline call it;
- ``key``: the demo's key (one character, not a digit, not ``q``);
- ``scope``: ``"device"`` (one device pair) or ``"lab"`` (every device: the
  broker, the server app);
- ``duration_s``: its typical duration in seconds, ``(low, high)``, drawn
  uniformly in 0.1 s steps (``low == high``: that, no draw); None for an
  instant fault (a crash: over when the device has recovered);
- ``inject``: ``async inject(lab, bench, seconds)`` on the virtual bench. A
  device fault returns once injected (it ends by itself after ``seconds``); a
  lab fault returns when it is over;
- ``double``: ``async double(device_double, seconds)``, the same fault for a
  `DeviceDouble` (returns when it is over), or None where a double has no such
  part (the I2C bus) or the fault is not a device's (broker, server app);
- ``needs_own_broker``: only with the lab's own broker (not ``--broker``);
- ``resets_esp``: the Pyboard is expected to pulse the ESP8266's reset after it
  (the soak counts these against the ESP8266's boots).

Adding a kind: one row here and its injector (on `Bench` in injectors.py or
on `Lab` in lab.py); docs/ARCHITECTURE.md says where else to look.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from virtual_bench.bench import Bench
    from virtual_bench.device_double import DeviceDouble
    from virtual_bench.lab import Lab

Injector = Callable[["Lab", "Bench", "float | None"], Awaitable[None]]
DoubleInjector = Callable[["DeviceDouble", "float | None"], Awaitable[None]]


@dataclass(frozen=True)
class FaultKind:
    """One row of the table; the fields are described in the module docstring."""

    kind: str
    label: str
    key: str
    scope: str
    duration_s: tuple[float, float] | None
    inject: Injector
    double: DoubleInjector | None = None
    needs_own_broker: bool = False
    resets_esp: bool = False

    def draw(self, rng: random.Random) -> float | None:
        """A duration for one injection (seconds, 0.1 s steps), None for an instant fault."""
        if self.duration_s is None:
            return None
        low, high = self.duration_s
        return low if low == high else round(rng.uniform(low, high), 1)


# -- the injectors on the bench --------------------------------------------------------


async def _wifi(lab: Lab, bench: Bench, seconds: float | None) -> None:
    await bench.cut_wifi(seconds)


async def _crash(lab: Lab, bench: Bench, seconds: float | None) -> None:
    await bench.crash_esp()


async def _hang(lab: Lab, bench: Bench, seconds: float | None) -> None:
    await bench.hang_esp()


async def _broker(lab: Lab, bench: Bench, seconds: float | None) -> None:
    await lab.drop_broker(2.0 if seconds is None else seconds, wait=True)


async def _server(lab: Lab, bench: Bench, seconds: float | None) -> None:
    await lab.restart_server_app()


async def _i2c(lab: Lab, bench: Bench, seconds: float | None) -> None:
    await bench.corrupt_i2c(count=2, probability=0.05, seconds=seconds)


# -- the same faults for a DeviceDouble ------------------------------------------------


async def _double_wifi(dev: DeviceDouble, seconds: float | None) -> None:
    await dev.go_offline()
    await asyncio.sleep(3.0 if seconds is None else seconds)
    await dev.go_online()


async def _double_crash(dev: DeviceDouble, seconds: float | None) -> None:
    # the connection drops without DISCONNECT (the will fires); the Pyboard keeps
    # its end-to-end state and the rebooted bridge connects again
    await dev.go_offline()
    await dev.go_online()


async def _double_hang(dev: DeviceDouble, seconds: float | None) -> None:
    # the bridge stops talking with its TCP connection open, until the Pyboard
    # notices (its timeout) and resets it
    await dev.go_offline(silent=True)
    await asyncio.sleep(dev.timeout_ms / 1000 if seconds is None else seconds)
    await dev.go_online()


FAULTS: dict[str, FaultKind] = {row.kind: row for row in (
    FaultKind("wifi", "WiFi outage", "w", "device", (2.0, 5.0), _wifi, _double_wifi),
    FaultKind("crash", "ESP8266 crash", "c", "device", None, _crash, _double_crash,
              resets_esp=True),
    FaultKind("hang", "ESP8266 hang", "h", "device", None, _hang, _double_hang,
              resets_esp=True),
    FaultKind("broker", "broker restart", "b", "lab", (1.0, 3.0), _broker,
              needs_own_broker=True),
    FaultKind("server", "server app restart", "s", "lab", None, _server),
    FaultKind("i2c", "I2C corruption", "i", "device", (2.0, 2.0), _i2c),
)}
"""Every fault kind by its ``kind``, in the order the demo's summary lists them."""

KEYS: dict[str, FaultKind] = {row.key: row for row in FAULTS.values()}
"""The demo's keys: key -> row."""


def fault_kind(kind: str) -> FaultKind:
    """The row of ``kind``; ValueError naming the known kinds when there is none."""
    try:
        return FAULTS[kind]
    except KeyError:
        raise ValueError(f"unknown fault kind {kind!r} (known: {', '.join(FAULTS)})") from None
