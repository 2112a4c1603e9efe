"""`pblink demo`: its bookkeeping, and a short headless run with chaos."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

from virtual_bench.demo import DemoTracker, _tally


def test_tally_counts_lost_duplicated_reordered() -> None:
    t = _tally([1, 2, 2, 4, 3, 6])
    assert t == {"received": 5, "duplicated": 1, "reordered": 1, "lost": 1, "in_flight": 0}
    # only what was sent counts; beyond the highest received is in flight, not lost
    t = _tally([1, 3], expected={1, 2, 3, 4, 5})
    assert t["lost"] == 1 and t["in_flight"] == 2


def test_tracker_parses_the_demo_lines() -> None:
    tr = DemoTracker(["1"])
    dev = tr.devices["1"]

    class FakeBench:
        conn_id = "1"

    from virtual_bench.harness import OutputLine

    def pyb(text: str) -> None:
        tr.on_pyboard(FakeBench(), OutputLine(0.0, "pyboard", 1, "out", text))  # type: ignore[arg-type]

    tr.on_bus(FakeBench(), "up", b'q|0123abcd|1|1|["1", 1, 0]')  # type: ignore[arg-type]
    tr.on_server("server_app", 'x INFO pblink.s_app: 1 <- ["1", 1, 0]')
    tr.on_server("server_app", 'x INFO pblink.s_app: 1 -> ["1", 1, 0, 1]')
    pyb("Server is up")
    pyb('Got ["1", 1, 0, 1]')
    pyb("Connects 1 Count 2 Mem free 30000")
    assert dev.link == "UP" and dev.report == [1, 2, 30000]
    assert dev.up_rx == [1] and dev.down_rx == [1] and 1 in dev.down_tx
    assert len(dev.up_lat) == 1
    up, down = tr.tallies(dev)
    assert up["sent"] == up["received"] == 1 and down["sent"] == down["received"] == 1
    assert tr.ok()
    pyb('Got ["1", 1, 0, 1]')  # the same reply twice: a duplicate
    assert not tr.ok()


@pytest.mark.slow
def test_headless_demo_with_chaos_exits_zero() -> None:
    """Two devices for 30 s with random faults: every qos line exactly once."""
    proc = subprocess.run(
        [sys.executable, "-m", "pblink", "demo", "--devices", "2", "--duration", "30",
         "--period-ms", "200", "--chaos", "--seed", "3", "--view", "lines"],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    out = proc.stdout
    assert "pblink demo summary" in out, out[-3000:] + proc.stderr[-3000:]
    assert "result: OK" in out, out[-3000:]
    assert proc.returncode == 0
    assert "FAULT" in out  # chaos injected something
    assert "server->pyboard" in out and "pyboard->server" in out  # the live lines
    summary = out[out.index("pblink demo summary"):]
    for dev in ("1", "2"):
        rows = [ln.split() for ln in summary.splitlines() if ln.startswith(f"{dev}  ")]
        assert len(rows) == 2
        for row in rows:
            sent, received = int(row[4]), int(row[5])
            assert received >= 10 and sent - received <= 2
