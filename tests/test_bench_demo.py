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


@pytest.mark.slow
def test_ctrl_c_on_dev_py_demo_ends_with_the_summary() -> None:
    """Ctrl-C (SIGINT to the terminal's process group: dev.py and pblink demo)
    ends the demo with its summary and verdict, and no traceback."""
    import os
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "dev.py", "demo", "--view", "lines",
                             "--period-ms", "200"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        for line in proc.stdout:  # wait until replies reach the Pyboard
            if "server->pyboard" in line or time.monotonic() > deadline:
                break
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "Traceback" not in err, err[-3000:]
    assert "KeyboardInterrupt" not in err, err[-3000:]
    assert "pblink demo summary" in out, out[-3000:] + err[-2000:]
    assert "result: OK" in out, out[-3000:]
    assert proc.returncode == 0


@pytest.mark.slow
async def test_demo_stops_with_a_failing_verdict_when_its_server_app_dies() -> None:
    import asyncio
    import io
    import time

    from virtual_bench.demo import Demo

    out = io.StringIO()
    demo = Demo(devices=1, period_ms=200, duration=120, view="quiet", out=out)
    t0 = time.monotonic()
    run = asyncio.create_task(demo.run())
    dev = demo.tracker.devices["1"]
    while not dev.down_rx:  # the demo is up: replies reach the Pyboard
        assert not run.done(), out.getvalue()
        await asyncio.sleep(0.2)
    assert demo.lab is not None and demo.lab.server is not None
    assert demo.lab.server.proc is not None
    demo.lab.server.proc.kill()  # not a fault the demo injected
    code = await asyncio.wait_for(run, 60)
    assert code == 1
    assert time.monotonic() - t0 < 100  # it stopped, long before --duration
    summary = out.getvalue()
    assert "result: FAILED: server app exited (status -9)" in summary, summary
