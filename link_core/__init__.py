"""pblink-mqtt sans-I/O protocol core.

Shared by the Pyboard (``pyboard/pb_link``), the ESP8266 bridge
(``esp_bridge``) and the server library (``server_apps``). Every module runs
unchanged under CPython 3.11 and MicroPython; none reads a clock, touches a
pin or opens a socket: callers pass bytes, times (``now_ms``) and random bytes
in. The wire contract is docs/PROTOCOL.md.

Modules: ``clock`` (wrapping tick arithmetic), ``names`` (conn_id, line and
topic rules), ``frames`` (end-to-end frame codec), ``endpoint`` (end-to-end
Sender and Receiver), ``i2c_link`` (I2C link layer), ``control`` (link message
kinds, config and report messages), ``liveness`` (PROTOCOL.md 4.4: heartbeats,
reachability, write admission, QoS), ``device_watch`` (the server's view of a
device, 4.4).

This file imports nothing, so importing one module costs only that module.
"""
