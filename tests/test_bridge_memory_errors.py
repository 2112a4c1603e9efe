"""No allocation failure stops the bridge, and none loses a frame (issue 11, PROTOCOL.md 2 `R`).

The ESP8266's failure mode: 8 to 10 K free but fragmented, so copying a
reassembled 1,000-byte line (or a 1,000-byte frame from MQTT) raises
MemoryError. The scripted Pyboard recreates it: once `at` lines are sent it
fills the heap with 200-byte pieces and frees every other one, holds that for
a few seconds, then lets go. Meanwhile traffic flows both ways with 1,000-byte
lines. The bridge must leave such chunks unacknowledged (resent) and such MQTT
packets unacknowledged (retried), count the failures in its `R` report, and
relay everything, in order, with no traceback and no reset.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import ROOT, BrokerProcess
from test_bridge_support import run_mpy

from virtual_bench.bridge_rig import (
    ESP_BRIDGE,
    Server,
    config,
    down_frame,
    make_hw_dir,
    start_bridge,
)


def _up_indices(frames: list[bytes]) -> list[int]:
    return [int(f.rsplit(b"|", 1)[1].split()[1]) for f in frames]


def _errors(p) -> int:
    """mem_errors of the next R report. Its wait outlasts the 5 s of fragmentation
    (PBLINK_SIM_FRAGMENT below), during which building every R may fail."""
    return int(p.wait_for("PB R [", timeout=8)[5:].strip("[]").split(",")[3])


@pytest.mark.slow
def test_fragmented_heap_loses_nothing_and_is_reported(
        micropython_bin: str, tmp_path: Path, any_broker: BrokerProcess) -> None:
    n = 150  # lines 50, 100, 150 up are 1,000 bytes; down 49, 99, 149 too
    srv = Server(any_broker.port)
    try:
        # 300 KB: room for the bridge from source on either unix port, small
        # enough for the scripted Pyboard to fragment quickly
        with start_bridge(micropython_bin, tmp_path, config(any_broker.port, report_s=1), up=n,
                          heapsize=300_000, PBLINK_SIM_FRAGMENT="50,5000") as p:
            p.wait_for("PB FRAGMENT", timeout=30)
            # up: line 50 cannot be reassembled; its last chunk stays unacknowledged
            up_errors = 0
            deadline = time.monotonic() + 4
            while up_errors == 0 and time.monotonic() < deadline:
                up_errors = _errors(p)
            # down: the 1,000-byte frame 49 cannot be copied out of the MQTT buffer
            for i in range(n):
                srv.send(down_frame(i), 1)
            errors = up_errors
            deadline = time.monotonic() + 4
            while errors == up_errors and time.monotonic() < deadline:
                errors = _errors(p)
            p.expect("PB RELEASED", timeout=30)
            srv.wait(lambda: len(srv.up) >= n, timeout=60, what=f"{n} frames up", proc=p)
            assert _up_indices(srv.up) == list(range(1, n + 1))  # none lost, in order
            assert sum(len(f) > 1000 for f in srv.up) == 3
            p.expect("PB DOWN 100", timeout=30)  # any time: _errors may have read past it
            deadline = time.monotonic() + 30
            while p.proc.poll() is None and time.monotonic() < deadline:
                srv.send(b"u|5e55f00d|END", 1)
                time.sleep(0.3)
            done = p.wait_for("PB DONE")
            assert p.wait() == 0, p.output()
            out = "\n".join(p.lines)
    finally:
        srv.close()
    figures = dict(kv.split("=") for kv in done.split()[2:])
    assert int(figures["up"]) == n
    assert int(figures["down"]) >= n + 1  # every down frame (and END) reached the Pyboard
    assert up_errors > 0, "no MemoryError reassembling line 50 on the bridge"
    assert errors > up_errors, "no MemoryError copying the long down frame on the bridge"
    assert "Traceback" not in out and "MACHINE RESET" not in out
    assert "bridge task failed" not in out


_ESCAPE = """
import bridge

b = bridge.Bridge(None)
kicks = []
kick = b.resp.kick


def failing_kick(_pin):  # the main loop's tick job: a MemoryError escapes it
    kicks.append(1)
    if len(kicks) in (1, 3):
        raise MemoryError
    if len(kicks) == 5:
        raise ValueError("a bug")
    kick(_pin)


b.resp.kick = failing_kick


try:
    b.run()
except RuntimeError as e:
    print("STOPPED", len(kicks), b.mem_errors, e)
"""


def test_memory_error_escaping_a_task_restarts_it(micropython_bin: str, tmp_path: Path) -> None:
    """A MemoryError that leaves a job of the main loop (here its tick) is counted
    and the loop goes on (the job runs again); any other exception stops the
    bridge (main.py resets)."""
    r = run_mpy(micropython_bin, _ESCAPE, tmp_path, make_hw_dir(tmp_path), ESP_BRIDGE, ROOT)
    # kicks 1 and 3 failed (counted, the loop went on), 5 was the bug that stopped it
    assert "STOPPED 5 2 bridge task failed: ValueError('a bug',)" in r.stdout, r.stdout + r.stderr
