"""pblink-mqtt sans-I/O protocol core.

Shared by the Pyboard (``pyboard/pb_link``), the ESP8266 bridge
(``esp_bridge``) and the server library (``server_apps``). Every module runs
unchanged under CPython 3.11 and MicroPython; none reads a clock, touches a
pin or opens a socket: callers pass bytes, times (``now_ms``) and random bytes
in. The wire contract is docs/PROTOCOL.md.

Modules: ``clock`` (wrapping tick arithmetic), ``names`` (conn_id and topic
root rules, a device's topics), ``lines`` (line rules), ``topics`` (the
server's topic filters and parsing), ``frames`` (end-to-end frame codec),
``endpoint`` (end-to-end Sender and Receiver), ``i2c_link`` (I2C link layer),
``i2c_tools`` (block codec, the Initiator's poll policy), ``control`` (link
message kinds, config rules, the bridge's messages), ``messages`` (the config
message, decoders of the bridge's messages), ``liveness`` (PROTOCOL.md 4.4:
heartbeats, reachability, write admission, QoS), ``device_watch`` (the
server's view of a device, 4.4). The ESP8266 bridge imports only ``clock``,
``names``, ``i2c_link``, ``control`` (with ``schema``) and ``liveness``:
every function of a module it imports costs it RAM, so what it does not call
lives in the others.

This file imports nothing, so importing one module costs only that module.
"""
