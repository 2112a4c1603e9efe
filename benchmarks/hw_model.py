"""A timing model of the real parts, applied to each I2C exchange (docs/PERFORMANCE.md).

The virtual bench's exchange rate is set by its processes' wake-up latency, not
by the boards, so its raw throughput and latency predict nothing about hardware.
This model gives one exchange's duration on the real parts from published
figures (each ``Figure`` names its source; the two that are estimates say so),
and the benchmarks apply it to the exchanges they measured: how many, and how
many bus bytes each carried.

One exchange (PROTOCOL.md 1.2), n + m payload bytes (n up, m down), serially:

1. the Initiator's poll gap (``ACTIVE_POLL_MS`` while traffic flows);
2. the Pyboard builds its frame and, after the exchange, takes the reply: Python,
   mostly the CRC over header + payload;
3. syn rises: the ESP8266's pin IRQ schedules the Python handler
   (``ESP_IRQ_US``), which sets the Responder's flag;
4. four SoftI2C transactions, ``n + m + 22`` bytes of 9 bit times each
   (addresses, memory addresses, headers, CRCs: ``BUS_OVERHEAD``);
5. the ESP8266's Python: the fixed cost of an exchange (``ESP_EXCHANGE_US``, the
   original's measured handler time) plus the CRC over both frames;
6. syn falls: a second IRQ, ack falls.

The I2CTarget on the Pyboard serves the bus from its memory without the CPU
(``PYB_TARGET``), so the bus time is the ESP8266's bit-banging alone.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    value: float
    unit: str
    source: str


ACTIVE_POLL_MS = Figure(1.0, "ms", "PROTOCOL.md 1.5: the Initiator polls every 1 ms while "
                        "traffic flows (pb_settings default)")
ESP_IRQ_US = Figure(140.0, "us", "micropython/micropython#3894: on the ESP8266 a pin edge to "
                    "the Python handler's output edge is about 140 us, very consistent "
                    "(43 to 739 us for hard IRQs at 160 MHz: micropython#2972)")
SCL_NOMINAL_HZ = Figure(400_000, "Hz", "esp_bridge/bridge.py _I2C_HZ: SoftI2C(freq=400000)")
SCL_SLOW_HZ = Figure(200_000, "Hz", "micropython/micropython-esp32#19 (D. George): software "
                     "I2C 'may not be able to go above 200kHz' (the bit-banged rate falls "
                     "short of the one asked for)")
ESP_EXCHANGE_US = Figure(1200.0, "us", "pb_link/micropython-iot user guide (the original of "
                         "this project): the Responder's handler blocks the ESP8266 for 380 us "
                         "to 1.2 ms per exchange with small payloads; the upper figure is taken")
# The CRC is a Python loop over a 256-entry table: per byte, a measurement on a
# 2.6 GHz x86 host (0.092 us per byte, unix port) scaled by the clock ratio and a
# factor 4 for the ESP8266's lower instructions per clock and flash cache (frozen
# bytecode executes from flash): an ESTIMATE, no published figure.
ESP_CRC_US_PER_BYTE = Figure(12.0, "us/B", "estimate: 0.092 us/B measured on a 2.6 GHz host "
                             "x (2600/80 MHz) x 4 (IPC, flash cache); not a published figure")
PYB_CRC_US_PER_BYTE = Figure(3.0, "us/B", "estimate: the ESP8266 figure x 80/168 MHz x 2/3 "
                             "(Cortex-M4 at 168 MHz, code in internal flash with ART cache); "
                             "not a published figure")
PYB_TARGET = Figure(0.0, "us", "MicroPython machine.I2CTarget (stm32): IRQ-driven with a memory "
                    "buffer the controller reads and writes while the CPU runs on")
BUS_OVERHEAD = 22  # bytes per exchange besides payloads (PROTOCOL.md 1.2: four transactions)
CRC_OVERHEAD = 8  # header bytes the CRCs cover besides payloads (two 4-byte headers)


def exchange_ms(bus_bytes: float, scl_hz: float = SCL_NOMINAL_HZ.value,
                poll: bool = True) -> float:
    """Duration of one exchange on the real parts, ms.

    ``bus_bytes``: bytes on the bus in the exchange (payloads + ``BUS_OVERHEAD``,
    as the bench counts them); ``scl_hz``: the SoftI2C's real bit rate;
    ``poll``: include the Initiator's poll gap (False: the exchange itself, from
    syn rising to ack falling, plus the Pyboard's frame work).
    """
    crc_bytes = max(0.0, bus_bytes - BUS_OVERHEAD) + CRC_OVERHEAD
    us = (
        2 * ESP_IRQ_US.value  # syn up, syn down
        + bus_bytes * 9 / scl_hz * 1e6
        + ESP_EXCHANGE_US.value + crc_bytes * ESP_CRC_US_PER_BYTE.value
        + crc_bytes * PYB_CRC_US_PER_BYTE.value + PYB_TARGET.value
    )
    return us / 1000 + (ACTIVE_POLL_MS.value if poll else 0.0)


def sources() -> str:
    """One line per figure: name = value unit (source), for the bench's notes."""
    figs = {k: v for k, v in globals().items() if isinstance(v, Figure)}
    return "; ".join(f"{k} = {v.value:g} {v.unit} ({v.source})" for k, v in figs.items())
