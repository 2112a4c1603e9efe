"""The bench's fixed facts: where the device code lives, the two boards, the seed's
wiring table and the constants shared with the fake modules in hw/ (pin modes,
IRQ triggers, reset causes, WLAN status, errno values).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HW_DIR = Path(__file__).resolve().parent / "hw"
PYBOARD_DIR = ROOT / "pyboard"
ESP_DIR = ROOT / "esp_bridge"

PYBOARD = "pyboard"
ESP = "esp8266"

# The seed's wiring table. Each wire: (driver board, pin) -> (reader board, pin).
WIRES: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "syn": ((PYBOARD, "X11"), (ESP, "5")),
    "ack": ((ESP, "4"), (PYBOARD, "Y8")),
    "rst": ((PYBOARD, "X12"), (ESP, "RST")),  # active low; the ESP8266's RST has a pull-up
}
WIRE_IDLE = {"syn": 0, "ack": 0, "rst": 1}  # level of a wire nobody drives or pulls
I2C_TARGET_BUSES = {"1", "X"}  # Pyboard I2C bus 1 = X9 scl, X10 sda
I2C_CONTROLLER_PINS = ("0", "2")  # ESP8266 SoftI2C scl GPIO0, sda GPIO2

# Pin constants shared with hw/machine.py
IN, OUT, OPEN_DRAIN = 0, 1, 2
PULL_NONE, PULL_UP, PULL_DOWN = 0, 1, 2
IRQ_RISING, IRQ_FALLING = 1, 2
IRQ_END_READ, IRQ_END_WRITE = 16, 32
# machine.reset_cause() values, shared with hw/machine.py
PWRON_RESET, HARD_RESET, WDT_RESET, SOFT_RESET = 1, 2, 3, 5
# network.STAT_* values, shared with hw/network.py
STAT_IDLE, STAT_CONNECTING, STAT_WRONG_PASSWORD, STAT_NO_AP_FOUND, STAT_GOT_IP = 0, 1, 2, 3, 5

ENODEV, EIO, ETIMEDOUT = 19, 5, 110
