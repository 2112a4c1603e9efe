# Configuration of one Pyboard: the `config` and `hardware` lists that
# AppBase takes, and `conn_id`. Per-board values come from an optional
# module `pb_settings` at the root of the board's filesystem (written by
# `pblink install` and by the virtual bench); anything it lacks takes the
# default below. See docs/PYBOARD.md for every name.
#
# Wiring (as the original pb_link):
#   Pyboard  ESP8266  signal
#   X9       GPIO0    I2C scl   (I2C bus 1)
#   X10      GPIO2    I2C sda   (I2C bus 1)
#   X11      GPIO5    syn       (Pyboard output)
#   Y8       GPIO4    ack       (Pyboard input)
#   X12      RST      reset     (Pyboard output, active low)
from machine import Pin

from link_core.i2c_link import I2C_ADDR, MEM_SIZE, RESET_PULSE_MS

try:
    import pb_settings as _s  # type: ignore[import-not-found]
except ImportError:
    _s = None


def _get(name, default):
    return getattr(_s, name, default) if _s is not None else default


conn_id = _get("conn_id", "1")
verbose = _get("verbose", False)  # the demo's debug output

# Settings for the Pyboard's own timings (and the bridge's, passed on in the
# config message). Only keys that are present override AppBase's defaults.
_TUNING_KEYS = (
    "boot_wait_ms", "idle_poll_ms", "active_poll_ms", "idle_after_ms",
    "exchange_timeout_ms", "keepalive_timeout_ms", "sync_timeout_ms",
    "rx_queue", "demo_period_ms", "bridge_tuning",
)
tuning = {}
for _k in _TUNING_KEYS:
    _v = _get(_k, None)
    if _v is not None:
        tuning[_k] = _v

# The seed's six entries first (port, host, timeout_ms, report_s, ssid,
# password), then the MQTT extras, then the tuning dict.
config = [
    _get("port", 1883),
    _get("host", "192.168.0.10"),
    _get("timeout_ms", 1500),
    _get("report_s", 10),
    _get("ssid", ""),
    _get("wifi_password", ""),
    _get("mqtt_user", ""),
    _get("mqtt_password", ""),
    _get("topic_root", "pblink"),
    _get("tls", False),
    tuning,
]


def _i2c():
    # Default: machine.I2CTarget with a 256-byte memory (non-blocking).
    # Firmware without I2CTarget (or pb_settings.i2c_mode == "pyb") uses the
    # blocking pyb.I2C slave mode, as the original did:
    #     from pyb import I2C
    #     i2c = I2C(1, I2C.SLAVE, addr=0x12)
    if _get("i2c_mode", "target") != "pyb":
        try:
            from machine import I2CTarget
        except ImportError:
            pass
        else:
            mem = bytearray(MEM_SIZE)
            return (I2CTarget(1, I2C_ADDR, mem=mem, mem_addrsize=8), mem)
    import pyb

    return pyb.I2C(1, pyb.I2C.SLAVE, addr=I2C_ADDR)


hardware = [
    _i2c(),  # i2c: (I2CTarget, mem) or pyb.I2C in SLAVE mode; bus 1 = X9 scl, X10 sda
    Pin("X11", Pin.OUT, value=0),  # syn
    Pin("Y8", Pin.IN),  # ack
    (Pin("X12", Pin.OUT, value=1), 0, RESET_PULSE_MS),  # rst: (pin, active level, pulse ms)
]
