"""The virtual bench: run the real Pyboard and ESP8266 code with no hardware.

- `virtual_bench/hw/`: small `machine`, `pyb`, `network`, `esp` modules for the
  MicroPython unix port (plain MicroPython), put first on each board process's
  MICROPYPATH; they talk to the harness over TCP on 127.0.0.1.
- `virtual_bench.harness`: `Bench` (one wired Pyboard + ESP8266 pair with its
  I2C bus, reset line, WiFi proxy and fault API), `Lab` (broker + demo server
  app + N benches), `TcpProxy`, `BusSniffer`, `ManagedProcess`.
- `virtual_bench.demo`: what `pblink demo` runs.
- `virtual_bench/device_double.py`: a CPython stand-in for a device (server tests).

See docs/BENCH.md.
"""
