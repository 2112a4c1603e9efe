"""The virtual bench harness: wires, I2C bus, reset line and WiFi for real device code.

One `Bench` is one device pair: a Pyboard process and an ESP8266 process, each a
`micropython` (unix port) process whose `machine`, `pyb`, `network` and `esp`
modules are the small fakes in `virtual_bench/hw/`. The fakes talk to the bench
over TCP on 127.0.0.1 (protocol: docs/BENCH.md and hw/_vbench.py). The bench

- owns the wires of the seed's wiring table (syn, ack, rst) and delivers edges
  to the board whose input has an IRQ on them;
- carries I2C transactions between the ESP8266's SoftI2C controller and the
  Pyboard's I2CTarget memory (or a blocking pyb.I2C slave), with a bus clock:
  a transaction takes bytes x 9 / clock seconds and blocks the controller;
- restarts the ESP8266 process when its reset line is pulsed (a real reboot);
- routes the ESP8266's TCP traffic through a `TcpProxy` that a WiFi outage cuts;
- injects faults: `cut_wifi`, `crash_esp`, `hang_esp`, `corrupt_i2c`,
  `refuse_broker`.

`Lab` adds what several benches share: a broker process (`drop_broker`) and the
demo server app process (`restart_server_app`).

This module is the public entry: it re-exports the names tests, docs, pblink
and the benchmarks use. Each part lives in its own module (one job each):

| module | what |
|---|---|
| wiring.py | paths, board names, the wiring table, constants shared with hw/ |
| ports.py | free ports, waiting until a process listens |
| brokers.py | broker processes (for the bench, the benchmarks and the tests) |
| procs.py | the micropython binary, board processes, broker and server app processes |
| lifecycle.py | `async with` over start/stop, the scratch folder |
| parts.py | the state the parts of `Bench` share, declared once |
| board_link.py | the board RPC: per-board state, request dispatch |
| pins.py | pins, wires, edges, the reset line |
| i2c_bus.py | the I2C bus: bus time, target memory, slaves, corruption |
| wlan.py | the ESP8266's WLAN against the simulated access point |
| machine_ops.py | machine.reset, reset_cause, unique_id, watchdogs |
| injectors.py | a bench's fault injectors |
| faults.py | the table of fault kinds (one row each) |
| proxy.py | the WiFi route (TCP proxy) |
| sniffer.py | the bus sniffer |
| bench.py | `Bench`: lifecycle and captured output, built from the parts |
| lab.py | `Lab`: broker, server app and N benches |
"""

from __future__ import annotations

from virtual_bench.bench import BENCH_SETTINGS, Bench
from virtual_bench.board_link import BenchOSError, OutputLine
from virtual_bench.lab import Lab
from virtual_bench.ports import free_port
from virtual_bench.procs import ManagedProcess, broker_process, micropython_binary
from virtual_bench.proxy import TcpProxy
from virtual_bench.sniffer import BusSniffer
from virtual_bench.wiring import ESP, PYBOARD, PYBOARD_DIR

__all__ = [
    "BENCH_SETTINGS", "ESP", "PYBOARD", "PYBOARD_DIR", "Bench", "BenchOSError", "BusSniffer",
    "Lab", "ManagedProcess", "OutputLine", "TcpProxy", "broker_process", "free_port",
    "micropython_binary",
]
