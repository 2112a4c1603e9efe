# Configuration of one Pyboard: the `config` and `hardware` lists that
# AppBase takes, and `conn_id`. Per-board values come from an optional
# module `pb_settings` at the root of the board's filesystem (written by
# `pblink install` and by the virtual bench); anything it lacks takes its
# default from link_core/schema.py. docs/PYBOARD.md "Settings" lists them.
#
# Wiring (as the original pb_link):
#   Pyboard  ESP8266  signal
#   X9       GPIO0    I2C scl   (I2C bus 1)
#   X10      GPIO2    I2C sda   (I2C bus 1)
#   X11      GPIO5    syn       (Pyboard output)
#   Y8       GPIO4    ack       (Pyboard input)
#   X12      RST      reset     (Pyboard output, active low)
from machine import Pin
from micropython import const

from link_core.control import check_setting
from link_core.i2c_link import I2C_ADDR
from link_core.i2c_tools import MEM_SIZE, RESET_PULSE_MS
from link_core.schema import COLUMNS, SETTINGS

try:
    import pb_settings as _s  # type: ignore[import-not-found]
except ImportError:
    _s = None

_BRIDGE_TUNING = const(11)  # C message index; config[10] carries it (link_core/schema.py)
_COL_DEFAULT = const(2)  # columns of a row of link_core/schema.py
_COL_USE = const(5)


def _get(name, default):
    # pb_settings' value (or default; None: absent), checked by its row: a hand-edited
    # pb_settings.py with a bad value stops here, naming the file, the setting and its rule
    v = getattr(_s, name, default) if _s is not None else default
    if v is None:
        return v
    try:
        return check_setting(name, v)
    except ValueError as e:
        raise ValueError("pb_settings.py: " + str(e))


def _setting(name):
    # pb_settings' value, else the default of its row in link_core/schema.py
    for k in range(0, len(SETTINGS), COLUMNS):
        if SETTINGS[k] == name:
            return _get(name, SETTINGS[k + _COL_DEFAULT])
    raise KeyError(name)


def _lists():
    # config: the C message's entries after conn_id, in its order (port, host,
    # timeout_ms, report_s, ssid, wifi_password: the seed's six entries; then
    # mqtt_user, mqtt_password, topic_root, tls), then the tuning dict: the
    # bridge's tuning and the Pyboard's timings, only the keys pb_settings has
    # (AppBase and the bridge take the defaults for the others). Every value
    # is checked here (_get), and again by AppBase.
    config = []
    tuning = {}
    for i in range(len(SETTINGS) // COLUMNS):
        k = i * COLUMNS
        name = SETTINGS[k]
        if 0 < i < _BRIDGE_TUNING:
            config.append(_get(name, SETTINGS[k + _COL_DEFAULT]))
        elif i == _BRIDGE_TUNING or SETTINGS[k + _COL_USE] == "tuning":
            v = _get(name, None)
            if v is not None:
                tuning[name] = v
    config.append(tuning)
    return config, tuning


conn_id = _setting("conn_id")
verbose = _setting("verbose")  # the demo's debug output
config, tuning = _lists()


def _i2c():
    # Default: machine.I2CTarget with a 256-byte memory (non-blocking).
    # Firmware without I2CTarget (or pb_settings.i2c_mode == "pyb") uses the
    # blocking pyb.I2C slave mode, as the original did:
    #     from pyb import I2C
    #     i2c = I2C(1, I2C.SLAVE, addr=0x12)
    if _setting("i2c_mode") != "pyb":
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
