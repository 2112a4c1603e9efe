"""The virtual bench: run the real Pyboard and ESP8266 code with no hardware.

- `virtual_bench/hw/`: small `machine`, `pyb`, `network`, `esp` modules for the
  MicroPython unix port (plain MicroPython), put first on each board process's
  MICROPYPATH; they talk to the harness over TCP on 127.0.0.1.
- `virtual_bench.harness`: the public entry: `Bench` (one wired Pyboard +
  ESP8266 pair with its I2C bus, reset line, WiFi proxy and fault API), `Lab`
  (broker + demo server app + N benches), `TcpProxy`, `BusSniffer`,
  `ManagedProcess`; each part is its own module (listed in harness.py).
- `virtual_bench.faults`: the fault kinds, one table.
- `virtual_bench.ports`, `virtual_bench.brokers`: free ports, waiting for one,
  broker processes (for the bench, the benchmarks and the tests).
- `virtual_bench.demo`: what `pblink demo` runs.
- `virtual_bench/device_double.py`: a CPython stand-in for a device (server tests).

See docs/BENCH.md.
"""
