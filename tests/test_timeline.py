"""The run timeline (virtual_bench/timeline.py): the recorder fed link messages
directly (no sockets), and a short chaos run of the demo whose file is read back."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from virtual_bench.timeline import TimelineRecorder, read_timeline


def _bench(conn_id: str = "1", events: list | None = None) -> SimpleNamespace:
    return SimpleNamespace(conn_id=conn_id, events=events or [])


def test_recorder_places_lines_acks_retransmissions_and_states(tmp_path: Path) -> None:
    rec = TimelineRecorder(["1"])
    b = _bench("1", [(time.monotonic(), "boot", "esp8266 #2"),
                     (time.monotonic(), "reset", "esp8266 held in reset")])
    rec.on_bus(b, "up", b"C[\"1\",1883]")
    rec.on_bus(b, "down", b"U")
    rec.on_bus(b, "up", b"q|3fa2c901|1|1|first <line>")
    rec.on_bus(b, "up", b"q|3fa2c901|1|1|first <line>")  # retransmission
    rec.on_bus(b, "down", b"a|3fa2c901|1")
    rec.on_bus(b, "up", b"q|3fa2c901|2|2|never acked")
    rec.on_bus(b, "down", b"q|0badf00d|7|7|from the server")
    rec.on_bus(b, "up", b"a|0badf00d|7")
    rec.on_bus(b, "up", b"u|3fa2c901|no qos")
    rec.on_bus(b, "down", b"D")
    rec.on_bus(b, "down", b"R[3,17,21504]")
    rec.on_bus(b, "down", b"K")
    rec.on_bus(b, "up", b"q|bad")  # a frame that does not parse is marked, not fatal
    rec.on_bus(_bench("9"), "up", b"q|3fa2c901|1|1|other device")  # not recorded
    rec.on_server_line("server_app", "INFO pblink.server: device 1 is online")
    rec.on_server_line("server_app", "INFO pblink.server: link server x closed")
    now = time.monotonic()
    rec.add_fault("WiFi outage", "1", now - 0.5, now + 3600)  # still going: clamped
    rec.add_bench_events(b)
    path = rec.write(tmp_path / "t.html", title="unit <test>")
    data = read_timeline(path)
    dev = data["devices"]["1"]
    lines = {ln["text"]: ln for ln in dev["lines"]}
    assert set(lines) == {"first <line>", "never acked", "from the server", "no qos"}
    first = lines["first <line>"]
    assert first["ack"] is not None and first["ack"] >= first["t"] and len(first["repeats"]) == 1
    assert lines["never acked"]["ack"] is None
    assert lines["from the server"]["direction"] == "down" and lines["from the server"]["ack"]
    assert not lines["no qos"]["qos"]
    assert [s for _t, s in dev["link_state"]] == ["U", "D"]
    assert [r for _t, r in dev["reports"]] == [[3, 17, 21504]]
    assert len(dev["syncs"]) == 1
    assert [o for _t, o in dev["online"]] == [True, None]  # closed: no longer judged
    assert {k for _t, k, _d in dev["marks"]} == {"bad frame", "boot", "reset"}
    assert data["faults"][0]["end"] <= data["duration_s"] + 0.01
    text = path.read_text()
    assert "unit &lt;test&gt;" in text and "first &lt;line&gt;" in text  # escaped
    assert text.count('class="line') == 4 and text.count('class="repeat"') == 1
    assert "http" not in text.replace("http://www.w3.org/2000/svg", "")  # self-contained
    other = tmp_path / "other.html"
    other.write_text("<html></html>")
    with pytest.raises(ValueError, match="no timeline data"):
        read_timeline(other)


def test_read_timeline_takes_a_str_or_a_path(tmp_path: Path) -> None:
    path = TimelineRecorder(["1"]).write(tmp_path / "t.html")
    assert read_timeline(str(path)) == read_timeline(path)
    assert read_timeline(str(path))["devices"]["1"]["lines"] == []


def test_restarted_server_that_answers_the_device_has_judged_it_online(tmp_path: Path) -> None:
    """A restarted server app whose saved state says online logs no judgement; its first
    frame to the device (an ack, a line) shows it has one. Until then: unknown."""
    rec = TimelineRecorder(["1", "2"])
    b1, b2 = _bench("1"), _bench("2")
    rec.on_server_line("server_app", "INFO pblink.server: device 1 is online")
    rec.on_server_line("server_app", "INFO pblink.server: device 2 is online")
    rec.on_server_line("server_app", "INFO pblink.server: link server pblink.server closed")
    rec.on_bus(b1, "up", b"q|3fa2c901|1|1|during the restart")
    rec.on_bus(b1, "down", b"a|3fa2c901|1")  # the new server acked it
    rec.on_bus(b1, "down", b"a|3fa2c901|1")  # once is enough
    rec.on_bus(b2, "up", b"q|0badf00d|1|1|nobody answers")
    data = read_timeline(rec.write(tmp_path / "t.html"))
    assert [o for _t, o in data["devices"]["1"]["online"]] == [True, None, True]
    assert [o for _t, o in data["devices"]["2"]["online"]] == [True, None]
    assert "unknown (server app restarting)" in (tmp_path / "t.html").read_text()


def test_in_flight_at_the_end_is_not_an_ack_that_never_came(tmp_path: Path) -> None:
    rec = TimelineRecorder(["1"])
    b = _bench("1")
    rec.on_bus(b, "up", b"q|3fa2c901|1|1|lost")  # never acked, but a later line was
    rec.on_bus(b, "up", b"q|3fa2c901|2|2|acked")
    rec.on_bus(b, "down", b"a|3fa2c901|2")
    rec.on_bus(b, "up", b"q|3fa2c901|3|3|in flight")  # the run ends before its ack
    text = rec.write(tmp_path / "t.html").read_text()
    assert text.count('class="line noack"') == 1 and text.count('class="line inflight"') == 1
    assert "its ack never came" in text and "still in flight when the run ended" in text
    assert "1 qos line(s) whose ack never came, 1 in flight at the end" in text


def test_instant_faults_last_until_the_link_resynchronised(tmp_path: Path) -> None:
    """A crash or hang has no end of its own: it is drawn until the next sync on that
    device, or to the end of the run when none came."""
    rec = TimelineRecorder(["1", "2"])
    now = time.monotonic()
    rec.add_fault("ESP8266 hang", "1", now, now)
    rec.add_fault("ESP8266 crash", "2", now, now)
    time.sleep(0.05)
    rec.on_bus(_bench("1"), "up", b"C[\"1\",1883]")
    time.sleep(0.05)
    data = read_timeline(rec.write(tmp_path / "t.html"))
    hang, crash = data["faults"]
    sync = data["devices"]["1"]["syncs"][0]
    assert hang["ended_by"] == "resync" and hang["end"] == pytest.approx(sync, abs=0.002)
    assert hang["end"] - hang["start"] >= 0.04
    assert crash["ended_by"] == "run end" and crash["end"] == pytest.approx(data["duration_s"])
    assert "until the link resynchronised" in (tmp_path / "t.html").read_text()


def test_page_scales_to_its_width_explains_its_marks_and_says_when_no_fault(
        tmp_path: Path) -> None:
    rec = TimelineRecorder(["1"])
    rec.on_bus(_bench("1"), "up", b"q|3fa2c901|1|1|x")
    rec.on_bus(_bench("1"), "down", b"a|3fa2c901|1")
    text = rec.write(tmp_path / "t.html").read_text()
    svg = re.search(r'<svg xmlns="http://www.w3.org/2000/svg" ([^>]*)id="dev-1"', text)
    assert svg and 'width="100%"' in svg.group(1) and "viewBox=" in svg.group(1)
    assert "overflow-x" not in text
    assert "No faults injected." in text and "<th>fault</th>" not in text
    legend = re.search(r'<div class="legend">(.*?)</div>', text, re.S)
    assert legend and "a board booted" in legend.group(1) and "the reset line" in legend.group(1)
    assert "bus-to-ack time" in text
    assert "round trip" not in re.sub(r"the run\s+summary's <i>round trip</i>", "", text)


@pytest.mark.slow
def test_chaos_run_timeline_names_every_fault_and_places_every_line(tmp_path: Path) -> None:
    from virtual_bench.demo import Demo
    from virtual_bench.faults import FAULTS

    path = tmp_path / "run.html"
    out = io.StringIO()
    demo = Demo(devices=1, duration=30, chaos=True, seed=5, period_ms=300, view="quiet",
                timeline=path, out=out)
    code = asyncio.run(demo.run())
    assert code == 0, out.getvalue()[-2000:]
    assert f"timeline written to {path}" in out.getvalue()
    data = read_timeline(path)
    text = path.read_text()
    faults = demo.tracker.faults
    assert len(faults) >= 2, "chaos injected too little to test"
    assert len(data["faults"]) == len(faults)
    for f in faults:
        assert FAULTS[f.kind].label in text
        assert any(d["name"] == FAULTS[f.kind].label and abs(d["start"] - (f.t - demo.tracker.t0))
                   < 0.01 for d in data["faults"])
    dev = demo.tracker.devices["1"]
    recorded = data["devices"]["1"]["lines"]

    def txs(direction: str) -> set[int]:
        return {json.loads(r["text"])[1] for r in recorded if r["direction"] == direction}

    assert set(dev.up_bus) <= txs("up")  # every line the Pyboard put on its bus
    assert set(dev.down_rx) <= txs("down")  # every reply the Pyboard printed
    assert len(dev.up_bus) >= 20
    # each recorded line is drawn once, at its time
    marks = re.findall(r'class="line[^"]*" data-dir="(up|down)" data-t="([0-9.]+)"', text)
    assert len(marks) == len(recorded)
    assert sorted(float(t) for _d, t in marks) == sorted(r["t"] for r in recorded)
    acked = [r for r in recorded if r["qos"] and r["ack"] is not None]
    assert len(acked) >= len(recorded) - 2  # at most a line or two in flight at the end
    assert data["devices"]["1"]["link_state"] and data["devices"]["1"]["online"]
    assert data["devices"]["1"]["syncs"]


@pytest.mark.slow
def test_timeline_that_cannot_be_written_at_the_end_keeps_the_summary(tmp_path: Path) -> None:
    """--timeline is checked before the run; if the file still cannot be written at the end
    (its folder became a file during the run), the summary is printed and then a one-line
    error (pblink exits 1 with it)."""
    from pblink.common import error_from
    from virtual_bench.demo import Demo, TimelineWriteError

    folder = tmp_path / "out"
    folder.mkdir()
    out = io.StringIO()
    demo = Demo(devices=1, duration=4, period_ms=300, view="quiet", timeline=folder / "t.html",
                out=out)

    async def run() -> int:
        task = asyncio.create_task(demo.run())
        await asyncio.sleep(1)
        folder.rmdir()
        folder.write_text("a file where the folder was")
        return await task

    with pytest.raises(TimelineWriteError) as caught:
        asyncio.run(run())
    assert "outages survived/injected" in out.getvalue(), out.getvalue()  # the summary
    assert "timeline written" not in out.getvalue()
    err = error_from(caught.value)
    assert err is not None and err.code == 1
    assert str(err).startswith(f"timeline not written: {folder / 't.html'}: ")
    assert "\n" not in str(err)


@pytest.mark.slow
def test_server_restart_lane_comes_back_online_while_lines_are_acked(tmp_path: Path) -> None:
    """A real server app restart: the lane is unknown while it restarts, and online again
    once the new server app acks the device's lines (it logs no new judgement)."""
    from virtual_bench.demo import Demo

    path = tmp_path / "restart.html"
    out = io.StringIO()
    demo = Demo(devices=1, duration=20, period_ms=300, view="quiet", timeline=path, out=out)

    async def run() -> int:
        task = asyncio.create_task(demo.run())
        await asyncio.sleep(8)
        demo.inject("server", "1")
        return await task

    assert asyncio.run(run()) == 0, out.getvalue()[-2000:]
    data = read_timeline(path)
    (restart,) = [f for f in data["faults"] if f["name"] == "server app restart"]
    online = data["devices"]["1"]["online"]
    unknown = [t for t, o in online if o is None and t >= restart["start"] - 0.5]
    assert unknown, online
    back = [t for t, o in online if o is True and t > unknown[0]]
    assert back, online  # online again after the restart
    acked_after = [r for r in data["devices"]["1"]["lines"]
                   if r["direction"] == "up" and r["ack"] is not None and r["t"] > back[0] + 1]
    assert acked_after  # and lines kept being acked while the lane says online
    # no stretch of "unknown" outlasts the restart by more than a few seconds
    assert back[0] - unknown[0] < restart["end"] - restart["start"] + 5
