"""The I2C Responder (esp_bridge/bridge.py Responder) against a scripted Initiator.

Runs under the MicroPython unix port with the fake machine module of
test_bridge_support first on the path: a fake SoftI2C over the Pyboard's
256-byte memory that can corrupt bytes, report impossible lengths and raise
bus errors, and the scripted Initiator (sim_pyboard.Initiator) built on
link_core, which drives syn and waits for ack like the Pyboard. The Responder
exchanges in the syn pin's IRQ handler, which the fake Pin runs at once: no
asyncio, no task.
"""

from __future__ import annotations

from pathlib import Path

from conftest import ROOT
from test_bridge_support import run_mpy

from virtual_bench.bridge_rig import ESP_BRIDGE, make_hw_dir

SCRIPT = r'''
import sys

import machine
import sim_pyboard
from link_core.i2c_tools import FRESH, SYNC, counters, decode_block, encode_block
from bridge import Responder

scen = sys.argv[1]


def msg(kind, n, seed):
    body = bytes((48 + (seed + i) % 75) for i in range(n - 1))
    return bytes((kind,)) + body


def run_until(ini, cond, limit=4000):
    for _ in range(limit):
        if cond():
            return True
        ini.step()
    return cond()


def sequence():
    machine.LOG = []
    resp = Responder(6, 4)
    ini = sim_pyboard.Initiator(timeout_ms=100)
    # an unsynchronised Responder answers FRESH and carries no payload
    resp.link.queue_message(b"Kx")
    n = encode_block(0, 0, 0, b"", machine.MEM)
    machine.Pin.pins[5].drive(1)
    f = decode_block(machine.MV[0x80:0x80 + 126])
    print("FRESH", bool(f.flags & FRESH), len(f.payload), machine.Pin.pins[4].value())
    machine.Pin.pins[5].drive(0)
    print("ACK LOW", machine.Pin.pins[4].value())
    machine.LOG = []
    ini.link.queue_message(msg(0x75, 300, 1))
    run_until(
        ini, lambda: ini.link.synced and resp.link.rx_pending and not resp.link.tx_pending
    )
    print("SYNC", ini.link.synced, resp.link.synced, resp.link.syncs)
    # every exchange is exactly: read 4 at 0x00, read n+2 at 0x04, write 4 at 0x80,
    # write m+2 at 0x84; n, m the payload lengths
    log = machine.LOG
    ok = len(log) % 4 == 0 and len(log) > 0
    for i in range(0, len(log), 4):
        a, b, c, d = log[i:i + 4]
        ok = ok and a == ("r", 0, 4) and b[0:2] == ("r", 4) and 2 <= b[2] <= 122
        ok = ok and c == ("w", 0x80, 4) and d[0:2] == ("w", 0x84) and 2 <= d[2] <= 122
    print("SEQUENCE", ok, len(log) // 4)
    m = resp.link.pop_message()
    print("GOT", len(m), m == msg(0x75, 300, 1))


def transfer():
    faults = sys.argv[2] == "faults"
    if faults:
        machine.FAULTS.update({"flip_in": 7, "flip_out": 9, "eio": 11, "long_hdr": 13})
    resp = Responder(6, 4)
    ini = sim_pyboard.Initiator(timeout_ms=30)
    ini.link.sync_message = b'C["dev1",1883,"h",1500,0,"","",""]'
    up = [msg(0x75, n, n) for n in (1, 120, 121, 240, 241, 1000, 1152, 5, 700)]
    down = [msg(0x71, n, n + 3) for n in (1152, 119, 120, 121, 2, 999, 360)]
    got_up = []
    got_down = []
    iu = 0
    idn = 0
    for _ in range(20000):
        while iu < len(up) and ini.link.can_queue():
            ini.link.queue_message(up[iu])
            iu += 1
        while idn < len(down) and resp.link.can_queue():
            resp.link.queue_message(down[idn])
            idn += 1
        m = resp.link.pop_message()
        while m is not None:
            got_up.append(m)
            m = resp.link.pop_message()
        m = ini.link.pop_message()
        while m is not None:
            got_down.append(m)
            m = ini.link.pop_message()
        if len(got_up) == len(up) + 1 and len(got_down) == len(down):
            break
        ini.step()
    print("UP", got_up[0][:1], got_up[1:] == up, len(got_up))
    print("DOWN", got_down == down, len(got_down))
    ic = counters(ini.link)
    rc = counters(resp.link)
    print("COUNTS bad_at_esp=%d bad_at_pb=%d bus_errors=%d fails=%d too_long=%d"
          % (rc["blocks_bad"], ic["blocks_bad"], resp.bus_errors, ini.fails,
             rc["too_long"] + ic["too_long"]))


def hold():
    resp = Responder(6, 2)
    ini = sim_pyboard.Initiator(timeout_ms=100)
    msgs = [msg(0x61, 50 + i, i) for i in range(6)]
    for m in msgs[:4]:
        ini.link.queue_message(m)
    run_until(ini, lambda: ini.link.peer_hold, 500)
    run_until(ini, lambda: False, 50)  # keep polling while the ESP8266 holds
    print("HELD", ini.link.peer_hold, resp.link.rx_pending, ini.link.tx_pending)
    got = []
    for m in msgs[4:]:
        ini.link.queue_message(m)
    for _ in range(2000):
        m = resp.link.pop_message()
        if m is not None:
            got.append(m)
        if len(got) == 6:
            break
        ini.step()
    print("RELEASED", got == msgs, ini.link.peer_hold)


globals()[scen]()
'''


def _run(micropython_bin: str, tmp_path: Path, *args: str) -> str:
    hw = make_hw_dir(tmp_path)
    r = run_mpy(micropython_bin, SCRIPT, tmp_path, hw, ESP_BRIDGE, ROOT, args=list(args))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    return out


def test_exact_bus_transactions_and_fresh(micropython_bin: str, tmp_path: Path) -> None:
    out = _run(micropython_bin, tmp_path, "sequence")
    assert "FRESH True 0 1" in out, out  # answered, FRESH, no payload before SYNC
    assert "ACK LOW 0" in out, out  # ack follows syn down
    assert "SYNC True True 1" in out, out
    line = next(x for x in out.splitlines() if x.startswith("SEQUENCE"))
    assert line.startswith("SEQUENCE True"), out
    assert int(line.split()[2]) >= 4  # 300 bytes: at least three chunks after the sync
    assert "GOT 300 True" in out, out


def test_multi_chunk_messages_both_ways(micropython_bin: str, tmp_path: Path) -> None:
    out = _run(micropython_bin, tmp_path, "transfer", "clean")
    assert "UP b'C' True 10" in out, out
    assert "DOWN True 7" in out, out
    assert "bad_at_esp=0 bad_at_pb=0 bus_errors=0 fails=0 too_long=0" in out, out


def test_corrupt_blocks_and_bus_errors_lose_nothing(micropython_bin: str, tmp_path: Path) -> None:
    out = _run(micropython_bin, tmp_path, "transfer", "faults")
    assert "UP b'C' True 10" in out, out
    assert "DOWN True 7" in out, out
    line = next(x for x in out.splitlines() if x.startswith("COUNTS"))
    counts = dict(kv.split("=") for kv in line.split()[1:])
    # corrupted bytes were caught by the CRC on both sides; bus errors left ack
    # low, so the Initiator timed out and retried
    assert int(counts["bad_at_esp"]) > 0 and int(counts["bad_at_pb"]) > 0, line
    assert int(counts["bus_errors"]) > 0, line
    assert int(counts["fails"]) >= int(counts["bus_errors"]), line
    assert counts["too_long"] == "0", line


def test_hold_stops_the_initiator_until_messages_are_taken(micropython_bin: str,
                                                            tmp_path: Path) -> None:
    out = _run(micropython_bin, tmp_path, "hold")
    line = next(x for x in out.splitlines() if x.startswith("HELD"))
    held, rx_pending, tx_pending = line.split()[1:]
    assert held == "True" and rx_pending == "2" and int(tx_pending) >= 1, out
    assert "RELEASED True False" in out, out
