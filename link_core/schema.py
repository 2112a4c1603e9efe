"""The device settings: the one table every part reads (docs/PYBOARD.md "Settings").

``SETTINGS`` is one flat tuple, ``COLUMNS`` values a row, one row per
setting: ``name, type, default, low, high, use``; the comment lines ``#:``
right above a row are its help (the docs table and ``pblink install`` show
them; ``pblink.settings`` reads them from this file).

- ``name``: the name in ``pb_settings.py`` (``pyboard/pb_link/config.py`` reads
  every row from there).
- ``type``: ``"int"``, ``"str"``, ``"bool"``, ``"dict"`` (str keys; the values
  are the reader's business), ``"host"`` (a str: a host name or an IP
  address, no scheme, port or path), ``"id"`` (a conn_id,
  ``link_core.names.check_conn_id``), ``"root"`` (a topic root,
  ``link_core.names.check_root``) or ``"choice"``.
- ``default``: what applies when ``pb_settings`` lacks the name. A ``"dict"``
  row's ``None`` stands for ``{}`` (a dict is not a constant, see below).
- ``low``, ``high``: ``"int"``: the lowest and highest value; ``"str"``,
  ``"host"``, ``"id"``, ``"root"``: the length in UTF-8 bytes; ``"choice"``:
  ``low`` is the tuple of allowed values; ``"dict"``: ``low`` is the ``use``
  of the rows that are its keys (``"bridge"``), each key optional, checked by
  its row; otherwise ``None``.
- ``use``: ``"link"``: an entry of the ``C`` config message (PROTOCOL.md 2), at
  the index that is the row's number (rows 0 to 11, ``CONFIG_ENTRIES``);
  ``"tuning"``: a Pyboard timing, a key of ``config[10]`` (``AppBase``, the
  demo); ``"bridge"``: a key of ``bridge_tuning``, the bridge's timings (not a
  name of ``pb_settings.py`` itself); ``"board"``: read by ``config.py`` itself.

Row ``i`` starts at ``SETTINGS[i * COLUMNS]``. The rules are checked by
``link_core.control.check_setting(name, value)`` and ``check_config(list)``:
one error text for a bad value, on the boards, in ``pblink install`` and in
``LinkServer``. The device code names the ``C`` message indices with its own
``const`` (``_TIMEOUT_MS = const(3)``): a test holds every such name to this
table's order. ``ORDERED`` holds the rules across rows (a range that depends
on another row's value).

Pure data for MicroPython and CPython, and as small as it can be: one
constant tuple (frozen into the ESP8266's flash it takes no RAM; loaded from
a ``.mpy`` on the Pyboard it is one object, not one per row), the help in
comments, which cost the boards nothing. Adding a setting is one row here
(and its reader): ``pblink install --set``, the checks, ``config.py`` and the
docs table follow from it.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x
else:
    # MicroPython's compiler folds every const() itself: the name would only
    # cost the ESP8266 bridge a slot of this module's dict
    del const


COLUMNS = const(6)  # name, type, default, low, high, use
CONFIG_ENTRIES = const(12)  # rows 0..11: the C message's entries, in its order
_MS = const(3600000)  # an hour: the longest timing any row allows
# Rules across rows, in pairs (lower, higher): within one dict setting (or one
# group, control.group), the value of the higher row must not be below the lower's.
ORDERED = ("reconnect_min_ms", "reconnect_max_ms")

SETTINGS = (
    # -- the C config message (PROTOCOL.md 2), in its order ----------------------
    #: connection ID: 1 to 64 of A-Z a-z 0-9 _ -; names the MQTT topics
    "conn_id", "id", "1", 1, 64, "link",
    #: MQTT broker port (1883; 8883 with TLS)
    "port", "int", 1883, 1, 65535, "link",
    #: MQTT broker host name or IP address, as the ESP8266 reaches it (no scheme, port or path)
    "host", "host", "192.168.0.10", 1, 253, "link",
    #: end-to-end timeout in ms, the server application's too (LinkServer timeout_ms):
    #: retransmission after it, the server unreachable after it, the device offline after 2 x
    #: it. At least 200, twice the bridge's 100 ms tick: the bridge sends a heartbeat after
    #: timeout_ms / 2 of quiet but looks only every 100 ms, and calls the server unreachable
    #: when nothing came for timeout_ms (PROTOCOL.md 4.4), so a shorter timeout flaps U/D on a
    #: healthy link
    "timeout_ms", "int", 1500, 200, _MS, "link",
    #: ESP8266 report (R) every this many seconds; 0: never (also when a C message omits it)
    "report_s", "int", 10, 0, 86400, "link",
    #: WiFi network name ('' keeps the network the ESP8266 last joined)
    "ssid", "str", "", 0, 32, "link",
    #: WiFi password
    "wifi_password", "str", "", 0, 64, "link",
    #: MQTT user name ('' for anonymous)
    "mqtt_user", "str", "", 0, 256, "link",
    #: MQTT password, only with mqtt_user (MQTT 3.1.1 sends a password only with a user name)
    "mqtt_password", "str", "", 0, 256, "link",
    #: MQTT topic root: levels of A-Z a-z 0-9 _ - separated by /
    "topic_root", "root", "pblink", 1, 128, "link",
    #: connect to the broker with TLS
    "tls", "bool", False, None, None, "link",
    #: the bridge's timings, the C message's 12th entry: the "bridge" rows below are its keys,
    #: each optional; carried in config[10]
    "bridge_tuning", "dict", None, "bridge", None, "link",
    # -- Pyboard timings: keys of config[10] ------------------------------------
    #: wait after the reset pulse before the first SYNC poll
    "boot_wait_ms", "int", 1000, 0, _MS, "tuning",
    #: poll period when idle (PROTOCOL.md 1.5); 0 counts as 1
    "idle_poll_ms", "int", 10, 0, _MS, "tuning",
    #: poll period while traffic flows
    "active_poll_ms", "int", 1, 0, _MS, "tuning",
    #: time without payload before polling slows down
    "idle_after_ms", "int", 200, 0, _MS, "tuning",
    #: ack must rise (and fall) within this of syn; also each pyb.I2C transfer; 0 counts as 1
    "exchange_timeout_ms", "int", 1000, 0, _MS, "tuning",
    #: no K for this long: reset pulse and resync
    "keepalive_timeout_ms", "int", 4000, 0, _MS, "tuning",
    #: SYNC polls for this long, then a new reset pulse
    "sync_timeout_ms", "int", 10000, 0, _MS, "tuning",
    #: received lines held for readline() before HOLD; 0 counts as 1
    "rx_queue", "int", 8, 0, 1024, "tuning",
    #: the demo's write period (pb_link.demo)
    "demo_period_ms", "int", 5000, 10, _MS, "tuning",
    # -- the bridge's timings: keys of bridge_tuning (esp_bridge/bridge.py) ----
    #: 'K' keepalive to the Pyboard every this often (keep it well under keepalive_timeout_ms)
    "keepalive_ms", "int", 1000, 100, 60000, "bridge",
    #: how long one WiFi attempt (stored network, then the config's) may take
    "wifi_connect_ms", "int", 10000, 500, 120000, "bridge",
    #: WiFi up this long before the broker is tried
    "wifi_stable_ms", "int", 3000, 0, 60000, "bridge",
    #: first retry delay (WiFi, broker); at most reconnect_max_ms
    "reconnect_min_ms", "int", 1000, 50, 600000, "bridge",
    #: the retry delay doubles up to this; at least reconnect_min_ms
    "reconnect_max_ms", "int", 30000, 50, _MS, "bridge",
    #: MQTT keepalive in seconds; 0: no PINGREQ
    "mqtt_keepalive_s", "int", 60, 0, 65535, "bridge",
    #: wait for CONNACK, SUBACK, PUBACK, PINGRESP, or a stuck write
    "mqtt_response_ms", "int", 10000, 100, 120000, "bridge",
    #: DUP resends of a QoS 1 publish on one connection before it is dropped
    "mqtt_retries", "int", 2, 0, 10, "bridge",
    # -- read by config.py itself -------------------------------------------------
    #: the demo's verbose argument (pb_link's debug output)
    "verbose", "bool", False, None, None, "board",
    #: 'pyb' forces the pyb.I2C slave port; 'target' uses machine.I2CTarget and falls back to
    #: pyb.I2C when the firmware lacks it
    "i2c_mode", "choice", "target", ("target", "pyb"), None, "board",
)
