"""`pblink run` and `pblink demo`: apps on the virtual bench, with a live view and faults.

A `BenchRun` runs a `Lab`: the broker (embedded amqtt, or `--broker`), a server
application (`pblink server --app SPEC` as a restartable child process) and one
virtual Pyboard + ESP8266 pair per device, the Pyboard running the user's
`AppBase` subclass (or the demo, `pb_link.pb_client`) and the ESP8266 the real
bridge. A `Tracker` follows what happens from three vantage points:

- the Pyboard's printed lines (pb_link's verbose messages for the link state,
  tracebacks, the app's own output);
- the server app's output (its log, tracebacks);
- the I2C bus (the bench's sniffer: each data line leaving the Pyboard, its
  acknowledgement from the server, each line delivered to the Pyboard).

The run's verdict is OK only when every device exchanged lines and neither
application raised, failed to start or died. `DemoTracker` adds the demo's
own bookkeeping: from its sequence numbers (the Pyboard writes [conn_id,
tx_count, rx_count]; the server replies [conn_id, tx_count, rx_count,
server_count]) it counts lines sent, received, lost, duplicated and reordered
in each direction, and the round trip from the Pyboard's bus to its print.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import secrets
import signal
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pblink.apps import APP_LINES, BOARD_APP_ERROR
from virtual_bench.faults import FAULTS, KEYS
from virtual_bench.harness import ESP, PYBOARD, PYBOARD_DIR, Bench, Lab, OutputLine
from virtual_bench.timeline import TimelineRecorder

log = logging.getLogger("pblink.demo")

# Bench timings for a run: fast recovery, but not so short that a loaded
# machine trips them. Names as in pb_settings (pyboard/pb_link/config.py).
RUN_SETTINGS: dict[str, Any] = {
    "verbose": True,  # pb_link's messages (reset pulses, sync) feed the event list
    "report_s": 5,
    "boot_wait_ms": 300,
    "exchange_timeout_ms": 500,
    "keepalive_timeout_ms": 3000,
    "sync_timeout_ms": 5000,
    "bridge_tuning": {
        "wifi_connect_ms": 3000,
        "wifi_stable_ms": 300,
        "reconnect_min_ms": 300,
        "reconnect_max_ms": 3000,
        "mqtt_response_ms": 3000,
    },
}

DEMO_SETTINGS = RUN_SETTINGS  # the demo adds demo_period_ms

_SERVER_RX = re.compile(r"pblink\.s_app: (\S+) <- (.*)$")
_SERVER_TX = re.compile(r"pblink\.s_app: (\S+) -> (.*)$")
_LOG_TIME = re.compile(r"^\d{4}-\d\d-\d\d [\d:,.]+ ")
_REPORT = re.compile(r"^Connects (\d+) Count (\d+) Mem free (\d+)")


@dataclass
class Fault:
    kind: str
    device: str  # conn_id, or "all"
    t: float
    end: float  # when the fault is over (outage ended, restart done)
    survived: bool = False


@dataclass
class Device:
    conn_id: str
    link: str = "starting"
    esp_boot: int = 0
    # Seen on the I2C bus (any app): data lines each way, up lines the server acknowledged.
    bus_up: int = 0  # qos lines
    bus_up_u: int = 0  # lines without qos (never acknowledged)
    bus_acked: int = 0
    bus_down: int = 0
    seen_up: set[tuple[str, int]] = field(default_factory=set)
    seen_acks: set[tuple[str, int]] = field(default_factory=set)
    seen_down: set[tuple[str, int]] = field(default_factory=set)
    last_up: str = ""
    last_down: str = ""
    ups: int = 0
    downs: int = 0
    resets: int = 0
    # The demo's own bookkeeping (DemoTracker), from its sequence numbers.
    up_bus: dict[int, float] = field(default_factory=dict)  # tx -> first time on the bus
    up_rx: list[int] = field(default_factory=list)  # tx values the server got, in order
    up_rx_t: dict[int, float] = field(default_factory=dict)
    down_tx: dict[int, float] = field(default_factory=dict)  # tx -> when the server replied
    down_rx: list[int] = field(default_factory=list)  # tx values of replies the Pyboard got
    rtt: deque[float] = field(default_factory=lambda: deque(maxlen=5000))
    up_lat: deque[float] = field(default_factory=lambda: deque(maxlen=5000))
    down_lat: deque[float] = field(default_factory=lambda: deque(maxlen=5000))
    report: list[int] | None = None
    last_got_t: float = 0.0
    # What the user's server app read and wrote through its Connection (its
    # `server app lines:` log; totals over server app restarts), None: no report yet.
    app_lines: list[int] | None = None
    app_last: tuple[int, int] = (0, 0)  # the current server app process's last report


@dataclass
class Failure:
    """Something that makes the verdict fail: one line, and the traceback if any."""

    text: str
    details: str = ""


def _tally(received: list[int], expected: set[int] | None = None) -> dict[str, int]:
    """lost / duplicated / reordered of a received sequence of sequence numbers.

    Lost: expected numbers (default 1..max received) at or below the highest
    received that never arrived; numbers above it are still in flight."""
    seen: set[int] = set()
    dup = reordered = 0
    top = 0
    for n in received:
        if n in seen:
            dup += 1
            continue
        if n < top:
            reordered += 1
        seen.add(n)
        top = max(top, n)
    pool = expected if expected is not None else set(range(1, top + 1))
    lost = len([n for n in pool if n <= top and n not in seen])
    in_flight = len([n for n in pool if n > top]) if expected is not None else 0
    return {"received": len(seen), "duplicated": dup, "reordered": reordered, "lost": lost,
            "in_flight": in_flight}


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


TRACEBACK = "Traceback (most recent call last):"
_APP_LINES = re.compile(re.escape(APP_LINES) + r" (\S+) read (\d+) written (\d+)")


class Tracker:
    """Turns the output of any apps and the bus messages into per-device counters,
    events and failures. `app_files`: paths of the Pyboard app's source; a
    traceback through one of them is the app's and fails the run."""

    def __init__(self, conn_ids: list[str], echo: TextIO | None = None,
                 app_files: tuple[str, ...] = ()) -> None:
        self.t0 = time.monotonic()
        self.devices = {c: Device(c) for c in conn_ids}
        self.events: deque[str] = deque(maxlen=12)
        self.faults: list[Fault] = []
        self.failures: list[Failure] = []
        self.warnings: list[Failure] = []  # tracebacks outside the app (the link, the bridge)
        self.echo = echo  # plain-lines view: print each event as it happens
        self.server_up = False
        self.app_files = app_files
        self._tracebacks: dict[str, list[str]] = {}  # source -> lines so far
        self.on_fail: Callable[[], None] | None = None  # a run ends at the first failure
        self.app_output: deque[str] = deque(maxlen=8)  # what the apps print/log, for the view

    def stamp(self, t: float | None = None) -> str:
        return f"{(t if t is not None else time.monotonic()) - self.t0:7.1f}s"

    def event(self, text: str, t: float | None = None, chatty: bool = False) -> None:
        line = f"{self.stamp(t)} {text}"
        if not chatty:
            self.events.append(line)
        if self.echo is not None:
            print(line, file=self.echo, flush=True)

    def fail(self, text: str, details: str = "") -> None:
        self.failures.append(Failure(text, details))
        self.event(f"FAILED: {text}")
        if self.on_fail is not None:
            self.on_fail()

    # -- sources ---------------------------------------------------------------

    def _traceback(self, source: str, text: str, what: str, owned: bool) -> bool:
        """Collect a traceback printed line by line; True while the line is part of one.
        A finished one fails the run when `owned` or it passes through the app's files."""
        lines = self._tracebacks.get(source)
        if text.strip() == TRACEBACK:
            self._tracebacks[source] = [TRACEBACK]
            return True
        if lines is None:
            return False
        lines.append(text)
        if text.startswith((" ", "\t")):
            return True
        del self._tracebacks[source]  # the exception line ends it
        block = "\n".join(lines)
        mine = owned or any(f'"{path}"' in block for path in self.app_files)
        if mine:
            self.fail(f"{what} raised {text.strip()}", block)
        else:
            self.warnings.append(Failure(f"{what} printed a traceback: {text.strip()}", block))
            self.event(f"{what}: {text.strip()}")
        return True

    def on_pyboard(self, bench: Bench, ln: OutputLine) -> None:
        dev = self.devices.get(bench.conn_id)
        if dev is None:
            return
        source = f"dev{dev.conn_id} {'Pyboard app' if ln.board == PYBOARD else 'ESP8266'}"
        if self._traceback(f"{source} #{ln.boot}", ln.text, source, owned=False):
            return
        if ln.board != PYBOARD:
            if ln.text.startswith("bridge:"):
                self.event(f"dev{dev.conn_id} ESP8266 {ln.text[7:].strip()}", ln.t)
            elif "Error" in ln.text:
                self.event(f"dev{dev.conn_id} ESP8266: {ln.text}", ln.t)
            return
        text = ln.text
        if text.startswith(BOARD_APP_ERROR):  # the launcher could not start the app
            self.fail(f"dev{dev.conn_id} {text[len(BOARD_APP_ERROR):].strip()}")
            return
        if text.startswith("pb_link:"):
            what = text[8:].strip()
            if what == "reset pulse":
                dev.resets += 1
                dev.link = "reset"
            elif what == "link synchronised" and dev.link != "UP":
                dev.link = "synced"
            elif what in ("server up", "server down"):
                dev.link = "UP" if what == "server up" else "down"
                if what == "server up":
                    dev.ups += 1
                else:
                    dev.downs += 1
                self.event(f"dev{dev.conn_id} link {dev.link}", ln.t)
                return
            self.event(f"dev{dev.conn_id} pyboard: {what}", ln.t)
        elif text.startswith("ESP8266:"):
            pass  # the bridge's 'E' diagnostics: already shown from the ESP8266's own output
        else:
            self.on_app_output(dev, ln)

    def on_app_output(self, dev: Device, ln: OutputLine) -> None:
        """A line the Pyboard app printed."""
        self.app_output.append(f"{self.stamp(ln.t)} dev{dev.conn_id} pyboard: {ln.text}")
        self.event(f"dev{dev.conn_id} pyboard: {ln.text}", ln.t, chatty=True)

    def on_server(self, _name: str, text: str) -> None:
        if self._traceback("server", text, "server app", owned=True):
            return
        counted = _APP_LINES.search(text)
        if counted is not None:
            self._app_lines(*counted.groups())
            return
        if " ERROR " in text:
            self.event(f"server app: {text}")
        else:
            text = _LOG_TIME.sub("", text)  # the view has its own clock
            self.app_output.append(f"{self.stamp()} server app: {text}")
            self.event(f"server app: {text}", chatty=True)

    def on_bus(self, bench: Bench, direction: str, msg: bytes) -> None:
        dev = self.devices.get(bench.conn_id)
        if dev is None or msg[:1] not in (b"q", b"u", b"a"):
            return
        try:
            from link_core import frames

            kind, session, msg_id, _base, line = frames.decode(msg)
        except ValueError:
            return
        if kind == "a":
            assert msg_id is not None  # an a frame has an id (frames.decode)
            key = (str(session), msg_id)
            if direction == "down" and key in dev.seen_up and key not in dev.seen_acks:
                dev.seen_acks.add(key)
                dev.bus_acked += 1
            return
        if kind == "q":
            assert msg_id is not None
            key = (str(session), msg_id)
            seen = dev.seen_up if direction == "up" else dev.seen_down
            if key in seen:
                return  # a retransmission
            seen.add(key)
        if direction == "up":
            if kind == "q":
                dev.bus_up += 1
            else:
                dev.bus_up_u += 1
            dev.last_up = str(line)
        else:
            dev.bus_down += 1
            dev.last_down = str(line)
        self.survived(dev.conn_id, time.monotonic())

    def _app_lines(self, conn_id: str, read: str, written: str) -> None:
        dev = self.devices.get(conn_id)
        if dev is None:
            return
        now = (int(read), int(written))
        last = dev.app_last if now >= dev.app_last else (0, 0)  # a restarted server app
        totals = dev.app_lines or [0, 0]
        dev.app_lines = [totals[0] + now[0] - last[0], totals[1] + now[1] - last[1]]
        dev.app_last = now

    def survived(self, conn_id: str, t: float) -> None:
        """A line crossed after a fault ended: the device got over it."""
        for fault in self.faults:
            if not fault.survived and fault.device in (conn_id, "all") and t > fault.end:
                fault.survived = True

    def fault(self, fault: Fault) -> None:
        self.faults.append(fault)
        where = "all devices" if fault.device == "all" else f"dev{fault.device}"
        self.event(f"FAULT {FAULTS[fault.kind].label} ({where})")

    # -- results -----------------------------------------------------------------

    def counts(self, dev: Device) -> list[tuple[str, dict[str, int]]]:
        """The rows of the summary: (direction, {sent, received, ...})."""
        return [("pyboard -> server", {"sent": dev.bus_up, "received": dev.bus_acked}),
                ("server -> pyboard", {"sent": dev.bus_down, "received": dev.bus_down})]

    def notes(self) -> list[str]:
        """What the summary's table does not say."""
        out = ["(counted on the I2C bus: qos lines; pyboard -> server received = acknowledged "
               "by the server app)"]
        unreliable = sum(d.bus_up_u for d in self.devices.values())
        if unreliable:
            out.append(f"(and {unreliable} line(s) pyboard -> server without qos: never "
                       "acknowledged, not counted)")
        return out

    def problems(self) -> list[str]:
        """Why the verdict is not OK (empty: OK)."""
        out = [f.text for f in self.failures]
        for dev in self.devices.values():
            if not (dev.bus_acked or dev.bus_down):
                out.append(f"dev{dev.conn_id}: no line was exchanged with the server app")
            elif not self.app_read(dev):  # the library acknowledges lines nobody reads
                out.append(f"dev{dev.conn_id}: the server app read no line (lines reached "
                           "the server and were acknowledged, unread)")
        return out

    @staticmethod
    def app_read(dev: Device) -> int:
        return dev.app_lines[0] if dev.app_lines else 0

    def app_totals(self) -> tuple[int, int]:
        """Lines the server app read and wrote, over all devices."""
        return (sum(self.app_read(d) for d in self.devices.values()),
                sum(d.app_lines[1] for d in self.devices.values() if d.app_lines))

    def ok(self) -> bool:
        return not self.problems()

    def all_rtts(self) -> list[float]:
        return [r for d in self.devices.values() for r in d.rtt]


class DemoTracker(Tracker):
    """The demo apps' lines: `Got [...]`, `Server is up`, reports; the server's
    `<id> <- [...]` / `<id> -> [...]` log lines. Counts each direction by the
    demo's sequence numbers and fails on a lost or duplicated qos line."""

    def on_pyboard(self, bench: Bench, ln: OutputLine) -> None:
        dev = self.devices.get(bench.conn_id)
        if dev is None or ln.board != PYBOARD:
            super().on_pyboard(bench, ln)
            return
        text = ln.text
        if text.startswith("Got "):
            try:
                data = json.loads(text[4:])
                tx = int(data[1])
            except (ValueError, TypeError, IndexError):
                self.event(f"dev{dev.conn_id} unexpected line {text!r}", ln.t)
                return
            dev.down_rx.append(tx)
            dev.last_down = text[4:]
            dev.last_got_t = ln.t
            extra = ""
            if tx in dev.up_bus:
                rtt = ln.t - dev.up_bus[tx]
                dev.rtt.append(rtt)
                extra = f"  round trip {rtt * 1000:.0f} ms"
            if tx in dev.down_tx:
                dev.down_lat.append(ln.t - dev.down_tx[tx])
            self.event(f"dev{dev.conn_id} server->pyboard {text[4:]}{extra}", ln.t, chatty=True)
            self.survived(dev.conn_id, ln.t)
        elif text == "Server is up":
            dev.link = "UP"
            dev.ups += 1
            self.event(f"dev{dev.conn_id} server_ok(True): link up", ln.t)
        elif text == "Server is down":
            dev.link = "down"
            dev.downs += 1
            self.event(f"dev{dev.conn_id} server_ok(False): link down", ln.t)
        elif m := _REPORT.match(text):
            dev.report = [int(m.group(1)), int(m.group(2)), int(m.group(3))]
            self.event(f"dev{dev.conn_id} report {dev.report}", ln.t, chatty=True)
        elif text.startswith("No initial"):
            self.event(f"dev{dev.conn_id} {text}", ln.t)
        elif text.startswith("pb_link: server"):
            pass  # `Server is up/down` says it
        else:
            super().on_pyboard(bench, ln)

    def on_server(self, name: str, text: str) -> None:
        now = time.monotonic()
        if m := _SERVER_RX.search(text):
            dev = self.devices.get(m.group(1))
            try:
                tx = int(json.loads(m.group(2))[1])
            except (ValueError, TypeError, IndexError):
                return
            if dev is not None:
                dev.up_rx.append(tx)
                dev.up_rx_t.setdefault(tx, now)
                dev.last_up = m.group(2)
                if tx in dev.up_bus:
                    dev.up_lat.append(now - dev.up_bus[tx])
                self.event(f"dev{dev.conn_id} pyboard->server {m.group(2)}", now, chatty=True)
        elif m := _SERVER_TX.search(text):
            dev = self.devices.get(m.group(1))
            try:
                tx = int(json.loads(m.group(2))[1])
            except (ValueError, TypeError, IndexError):
                return
            if dev is not None:
                dev.down_tx.setdefault(tx, now)
        elif "demo server on" in text:
            self.server_up = True
            self.event("server app: serving")
        else:
            super().on_server(name, text)

    def on_bus(self, bench: Bench, direction: str, msg: bytes) -> None:
        dev = self.devices.get(bench.conn_id)
        if dev is None or direction != "up" or msg[:1] != b"q":
            return
        try:
            from link_core import frames

            line = frames.decode(msg).line or ""  # a q frame always has its line
            tx = int(json.loads(line)[1])
        except (ValueError, TypeError, IndexError):
            return
        dev.up_bus.setdefault(tx, time.monotonic())

    def notes(self) -> list[str]:
        return []

    def tallies(self, dev: Device) -> tuple[dict[str, int], dict[str, int]]:
        up = _tally(dev.up_rx)
        up["sent"] = max([*dev.up_bus, *dev.up_rx, 0])
        down = _tally(dev.down_rx, set(dev.down_tx))
        down["sent"] = len(dev.down_tx)
        return up, down

    def counts(self, dev: Device) -> list[tuple[str, dict[str, int]]]:
        up, down = self.tallies(dev)
        return [("pyboard -> server", up), ("server -> pyboard", down)]

    def problems(self) -> list[str]:
        out = [f.text for f in self.failures]
        for dev in self.devices.values():
            for name, t in self.counts(dev):
                if not t["received"]:
                    out.append(f"dev{dev.conn_id}: no line went {name}")
                if t["lost"] or t["duplicated"]:
                    out.append(f"dev{dev.conn_id} {name}: {t['lost']} qos line(s) lost, "
                               f"{t['duplicated']} duplicated")
        return out


def _ms(value: float) -> str:
    return "-" if value != value else f"{value * 1000:.0f}"


def _n(t: dict[str, int], key: str) -> str:
    return str(t[key]) if key in t else "-"


def render_status(tracker: Tracker, header: str, target: str, keys: bool) -> str:
    out = [header]
    if keys:
        out.append(f"keys: w WiFi  c crash ESP  h hang ESP  b broker  s server app  i I2C "
                   f"corruption  1-9 device  q quit      target: dev{target}")
    out.append("")
    out.append(f"{'dev':<4}{'link':<8}{'esp#':<5}{'pyb->srv':>10}{'srv->pyb':>10}"
               f"{'lost':>6}{'dup':>5}{'reord':>6}{'rtt p50/p90 ms':>16}  "
               f"{'report':<20}last line from pyboard / from server")
    for dev in tracker.devices.values():
        (_, up), (_, down) = tracker.counts(dev)
        rtts = list(dev.rtt)[-200:]
        total = {k: str(up[k] + down[k]) if k in up else "-"
                 for k in ("lost", "duplicated", "reordered")}
        report = str(dev.report) if dev.report else "-"
        out.append(
            f"{dev.conn_id:<4}{dev.link:<8}{dev.esp_boot:<5}"
            f"{up['received']:>5}/{up['sent']:<4}{down['received']:>5}/{down['sent']:<4}"
            f"{total['lost']:>6}{total['duplicated']:>5}{total['reordered']:>6}"
            f"{_ms(_pct(rtts, 0.5)) + '/' + _ms(_pct(rtts, 0.9)):>16}  "
            f"{report:<20}{dev.last_up[:60]} / {dev.last_down[:60]}")
    out.append("")
    out.append("faults survived/injected: " + _fault_line(tracker))
    out.append("")
    out.append("recent events:")
    out.extend("  " + e for e in tracker.events)
    if tracker.app_output:
        out.append("")
        out.append("what the apps print (latest):")
        out.extend("  " + line[:200] for line in tracker.app_output)
    return "\n".join(out)


def _fault_line(tracker: Tracker) -> str:
    parts = []
    for kind, row in FAULTS.items():
        these = [f for f in tracker.faults if f.kind == kind]
        if these:
            parts.append(f"{row.label} {sum(f.survived for f in these)}/{len(these)}")
    return ", ".join(parts) or "none yet"


def summary(tracker: Tracker, elapsed: float, title: str = "pblink run", what: str = "") -> str:
    out = [f"{title} summary: {elapsed:.1f} s, {len(tracker.devices)} device(s)"
           + (f", {what}" if what else "")]
    out.append(f"{'dev':<5}{'direction':<18}{'sent':>6}{'received':>10}{'lost':>6}"
               f"{'duplicated':>12}{'reordered':>11}{'in flight':>11}")
    for dev in tracker.devices.values():
        for name, t in tracker.counts(dev):
            flight = max(0, t["sent"] - t["received"] - t.get("lost", 0))
            out.append(f"{dev.conn_id:<5}{name:<18}{t['sent']:>6}{t['received']:>10}"
                       f"{_n(t, 'lost'):>6}{_n(t, 'duplicated'):>12}{_n(t, 'reordered'):>11}"
                       f"{flight:>11}")
    out.extend(tracker.notes())
    rtts = tracker.all_rtts()
    ups = [u for d in tracker.devices.values() for u in d.up_lat]
    downs = [u for d in tracker.devices.values() for u in d.down_lat]
    if rtts:
        out.append(f"round trip (Pyboard's I2C bus -> server app -> Pyboard print): median "
                   f"{_ms(statistics.median(rtts))} ms, p90 {_ms(_pct(rtts, 0.9))} ms, max "
                   f"{_ms(max(rtts))} ms over {len(rtts)} lines")
    if ups and downs:
        out.append(f"one way, median: Pyboard bus -> server app {_ms(statistics.median(ups))} ms,"
                   f" server app -> Pyboard print {_ms(statistics.median(downs))} ms")
    out.append("outages survived/injected: " + _fault_line(tracker))
    unsurvived = [f for f in tracker.faults if not f.survived]
    if unsurvived:
        out.append("not (yet) recovered from: " + ", ".join(
            f"{FAULTS[f.kind].label} at {f.t - tracker.t0:.1f}s" for f in unsurvived))
    for item in [*tracker.warnings, *tracker.failures]:
        if item.details:
            out.append("")
            out.append(f"{item.text}:")
            out.append(item.details.rstrip())
    problems = tracker.problems()
    if problems:
        out.append("result: FAILED: " + "; ".join(problems))
    elif isinstance(tracker, DemoTracker):
        out.append("result: OK, lines exchanged both ways, no qos line lost or duplicated")
    else:
        read, written = tracker.app_totals()
        out.append("result: OK, every device exchanged lines with the server app "
                   f"({read} read, {written} written), no app raised or died")
    return "\n".join(out)


@dataclass
class BoardCode:
    """The Pyboard application a run starts: the module the Pyboard imports (it
    starts the app), the folders to put on its path and the app's own files
    (a traceback through them fails the run)."""

    module: str = "pb_link.pb_client"
    paths: tuple[Path, ...] = ()
    files: tuple[str, ...] = ()


@dataclass
class ExternalBroker:
    host: str
    port: int
    user: str | None = None
    password: str | None = None


class TimelineWriteError(OSError):
    """The run's timeline file could not be written at the end (the summary was printed).

    An OSError with a one-line ``strerror``: `pblink` prints it as one line and exits 1."""

    def __init__(self, message: str) -> None:
        super().__init__(0, message)


class BenchRun:
    """Runs the lab, the view, the keyboard and the chaos monkey, and judges the run.

    `server_app`: a `pblink server --app` spec (None: the demo server app).
    `tracker`: a Tracker over conn_ids 1..devices (DemoTracker for the demo).
    """

    def __init__(self, *, tracker: Tracker, board: BoardCode | None = None,
                 server_app: str | None = None, duration: float | None = None,
                 chaos: bool = False, broker: ExternalBroker | None = None,
                 settings: dict[str, Any] | None = None, view: str = "auto",
                 root: str = "pblink", seed: int | None = None, timeout_ms: int = 1500,
                 workdir: Path | None = None, title: str = "pblink run", what: str = "",
                 out: TextIO = sys.stdout, timeline: Path | None = None) -> None:
        self.tracker = tracker
        self.n = len(tracker.devices)
        self.board = board or BoardCode()
        self.server_app = server_app
        self.duration = duration
        self.chaos = chaos
        self.broker = broker
        self.settings = dict(RUN_SETTINGS if settings is None else settings)
        self.out = out
        self.view = view
        self.root = root
        self.rng = random.Random(seed)
        self.timeout_ms = timeout_ms
        self.workdir = workdir
        self.title = title
        self.what = what
        self.target = "1"
        self.stop = asyncio.Event()
        self.interrupted: int | None = None  # the signal (SIGINT, SIGTERM) that ended the run
        self.timeline = timeline  # write the run's timeline here (virtual_bench/timeline.py)
        self.recorder = (TimelineRecorder(list(tracker.devices), tracker.t0)
                         if timeline else None)
        self.lab: Lab | None = None
        self._fault_tasks: set[asyncio.Task[None]] = set()
        self.keys_enabled = False

    def _on_signal(self, sig: int) -> None:
        # a run cut short by the user: its summary covers what ran, and callers
        # that promise a duration (the soak bench) say it was interrupted
        self.interrupted = sig
        self.stop.set()

    @staticmethod
    def view_mode(view: str, out: TextIO) -> str:
        return ("block" if out.isatty() else "lines") if view == "auto" else view

    def _lab(self) -> Lab:
        settings = dict(self.settings)
        settings.update(timeout_ms=self.timeout_ms, topic_root=self.root)
        server_env: dict[str, str] = {}
        if self.broker is not None and self.broker.user is not None:
            settings.update(mqtt_user=self.broker.user, mqtt_password=self.broker.password or "")
            server_env = {"PBLINK_USER": self.broker.user,
                          "PBLINK_PASSWORD": self.broker.password or ""}
        # "pblink.": never a device's "pblink-<conn_id>" (pblink.common.random_client_id)
        client_id = f"pblink.run-{secrets.token_hex(3)}"
        server_args = ["--ids", *self.tracker.devices, "--timeout-ms", str(self.timeout_ms),
                       "--root", self.root, "--client-id", client_id, "--state-dir",
                       "server_state"]
        if self.server_app is not None:
            server_args += ["--app", self.server_app]
        tracker = self.tracker
        on_line = tracker.on_pyboard
        on_server: Callable[[str, str], None] = tracker.on_server
        on_bus: Callable[[Bench, str, bytes], None] = tracker.on_bus
        if self.recorder is not None:
            on_line, on_server, on_bus = self.recorder.chain(on_line, on_server, on_bus)
        broker = (self.broker.host, self.broker.port) if self.broker else None
        return Lab(devices=self.n, broker=broker, server_args=server_args, server_env=server_env,
                   workdir=self.workdir, settings=settings, on_line=on_line,
                   on_server_line=on_server, on_bus=on_bus,
                   pyboard_module=self.board.module, pyboard_paths=self.board.paths)

    async def run(self) -> int:
        """Run until the duration, `q`, Ctrl-C/SIGTERM or an app's failure; print the
        summary; 0 when the verdict is OK, else 1."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig)
        self.view = self.view_mode(self.view, self.out)
        if self.view == "lines":
            self.tracker.echo = self.out
        self.tracker.on_fail = self.stop.set
        self.lab = lab = self._lab()
        restore_tty = self._keyboard(loop)
        t_start = time.monotonic()
        view_task = asyncio.create_task(self._view(t_start))
        try:
            await self._start_lab(lab)
            tasks = [asyncio.create_task(self._watch_apps())]
            if self.chaos:
                tasks.append(asyncio.create_task(self._chaos(t_start)))
            if self.duration is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), self.duration)
            else:
                await self.stop.wait()
            for task in tasks:
                task.cancel()
        finally:
            view_task.cancel()
            restore_tty()
            elapsed = time.monotonic() - t_start
            for task in list(self._fault_tasks):
                task.cancel()
            await lab.stop()
            timeline_error = self._write_timeline(lab)
        if self.view == "block":
            self.out.write(render_status(self.tracker, self._header(elapsed), self.target,
                                         False) + "\n\n")
        self.out.write(summary(self.tracker, elapsed, self.title, self.what) + "\n")
        self.out.flush()
        if timeline_error:
            # after the summary, so a run is never lost to its timeline file
            raise TimelineWriteError(timeline_error)
        return 0 if self.tracker.ok() else 1

    def _write_timeline(self, lab: Lab) -> str | None:
        """Write the timeline; the one-line reason it could not be written, or None."""
        if self.recorder is None or self.timeline is None:
            return None
        for f in self.tracker.faults:
            self.recorder.add_fault(FAULTS[f.kind].label, f.device, f.t, f.end)
        for bench in lab.benches:
            self.recorder.add_bench_events(bench)
        try:
            path = self.recorder.write(self.timeline, title=f"{self.title}, {self.n} device(s)"
                                       f"{', chaos' if self.chaos else ''}")
        except OSError as exc:
            return f"timeline not written: {self.timeline}: {exc.strerror or exc}"
        self.out.write(f"timeline written to {path}\n")
        return None

    async def _start_lab(self, lab: Lab) -> None:
        tracker = self.tracker
        await lab.start()
        host, port = lab.broker_address
        where = f"{host}:{port}" if self.broker else f"embedded amqtt on {host}:{port}"
        tracker.event(f"started: broker {where}, root {self.root!r}, {self.n} device(s)")
        user = f" --user {self.broker.user}" if self.broker and self.broker.user else ""
        tracker.event(f"watch a device: pblink tail 1 --broker {host}:{port} --root "
                      f"{self.root}{user}")

    async def _watch_apps(self) -> None:
        """ESP8266 boots for the view; a server app or Pyboard app that died ends the run."""
        lab = self.lab
        assert lab is not None
        while True:
            for bench in lab.benches:
                dev = self.tracker.devices[bench.conn_id]
                boot = bench.procs[ESP].boot if ESP in bench.procs else 0
                if boot != dev.esp_boot and dev.esp_boot:
                    self.tracker.event(f"dev{dev.conn_id} ESP8266 boots (#{boot})")
                dev.esp_boot = boot
                board = bench.procs.get(PYBOARD)
                if board is not None and board.proc is not None and \
                        board.proc.returncode is not None:
                    self.tracker.fail(f"dev{bench.conn_id} Pyboard app exited (status "
                                      f"{board.proc.returncode})")
                    self.stop.set()
                    return
            server = lab.server
            if server is not None and not server.alive and not lab.restarting_server:
                code = server.proc.returncode if server.proc is not None else None
                self.tracker.fail(f"server app exited (status {code})",
                                  "\n".join(list(server.lines)[-30:]))
                self.stop.set()
                return
            await asyncio.sleep(0.2)

    def _header(self, elapsed: float) -> str:
        where = (f"{self.broker.host}:{self.broker.port}" if self.broker else "embedded amqtt")
        if self.lab is not None and self.lab.broker is not None and self.lab.broker.port:
            where += f" :{self.lab.broker.port}"
        mode = f"{self.duration:.0f} s run" if self.duration else "until q / Ctrl-C"
        what = f"{self.what}  |  " if self.what else ""
        return (f"{self.title}  |  broker {where}  |  root {self.root}  |  "
                f"{self.n} device(s)  |  {what}"
                f"{'chaos  |  ' if self.chaos else ''}{elapsed:5.0f} s ({mode})")

    async def _view(self, t_start: float) -> None:
        if self.view == "lines":
            print(self._header(0.0), file=self.out, flush=True)
            return
        if self.view != "block":
            return
        while True:
            text = render_status(self.tracker, self._header(time.monotonic() - t_start),
                                 self.target, self.keys_enabled)
            self.out.write("\x1b[H\x1b[2J" + text + "\n")
            self.out.flush()
            await asyncio.sleep(0.5)

    # -- keyboard --------------------------------------------------------------------

    def _keyboard(self, loop: asyncio.AbstractEventLoop) -> Any:
        if not sys.stdin.isatty():
            return lambda: None
        import termios
        import tty

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self.keys_enabled = True

        def on_key() -> None:
            for ch in os.read(fd, 32).decode(errors="ignore"):
                self._key(ch)

        loop.add_reader(fd, on_key)

        def restore() -> None:
            loop.remove_reader(fd)
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

        return restore

    def _key(self, ch: str) -> None:
        if ch in ("q", "Q"):
            self.stop.set()
        elif ch.isdigit() and ch in self.tracker.devices:
            self.target = ch
            self.tracker.event(f"target device: dev{ch}")
        elif ch in KEYS:
            self.inject(KEYS[ch].kind, self.target)

    # -- faults -----------------------------------------------------------------------

    def inject(self, kind: str, conn_id: str) -> None:
        task = asyncio.create_task(self._inject(kind, conn_id))
        self._fault_tasks.add(task)
        task.add_done_callback(self._fault_tasks.discard)

    async def _inject(self, kind: str, conn_id: str) -> None:
        """Inject one fault of the table (virtual_bench/faults.py) and record it:
        a device fault lasts its drawn duration (an instant one ends at once, the
        device's recovery shows as survived), a lab fault until its injector returns."""
        lab = self.lab
        assert lab is not None
        row = FAULTS[kind]
        bench = next(b for b in lab.benches if b.conn_id == conn_id)
        now = time.monotonic()
        try:
            if row.needs_own_broker and lab.broker is None:
                self.tracker.event(f"{row.label} needs the demo's own broker (no --broker)")
                return
            seconds = row.draw(self.rng)
            if row.scope == "lab":
                fault = Fault(kind, "all", now, now + 3600)
                self.tracker.fault(fault)
                await row.inject(lab, bench, seconds)
                fault.end = time.monotonic()
            else:
                self.tracker.fault(Fault(kind, conn_id, now, now + (seconds or 0.0)))
                await row.inject(lab, bench, seconds)
        except Exception as exc:  # a fault that could not be injected must not end the demo
            self.tracker.event(f"fault {kind} failed: {exc}")

    def chaos_kinds(self) -> list[str]:
        """The kinds --chaos injects, once each per round: every row of the fault
        table (virtual_bench/faults.py) this run can inject."""
        return [k for k, row in FAULTS.items()
                if not (row.needs_own_broker and self.broker is not None)]

    async def _chaos(self, t_start: float) -> None:
        """A random fault every few seconds; none in the last part of a timed run,
        so that every outage has ended before the summary."""
        kinds = self.chaos_kinds()
        settle = chaos_settle_s(self.duration) if self.duration else 0.0
        await asyncio.sleep(self.rng.uniform(CHAOS_FIRST_S, CHAOS_FIRST_MAX_S))
        round_: list[str] = []
        while True:
            if self.duration and time.monotonic() - t_start > self.duration - settle:
                self.tracker.event("chaos: no more faults, letting the system settle")
                return
            if not round_:  # every kind once per round, in random order
                round_ = self.rng.sample(kinds, len(kinds))
            kind = round_.pop()
            conn_id = self.rng.choice(list(self.tracker.devices))
            await self._inject(kind, conn_id)
            await asyncio.sleep(self.rng.uniform(4.0, 8.0))


DEMO_APP = str(PYBOARD_DIR / "pb_link" / "demo.py")


CHAOS_FIRST_S, CHAOS_FIRST_MAX_S = 4.0, 6.0  # when --chaos injects its first fault


def chaos_settle_s(duration: float) -> float:
    """The end of a timed --chaos run left without faults, for every outage to end."""
    return max(15.0, 0.25 * duration)


# The shortest --duration in which --chaos surely injects a fault: the first one
# comes at most CHAOS_FIRST_MAX_S in, and none in the last chaos_settle_s(duration).
CHAOS_MIN_DURATION_S = CHAOS_FIRST_MAX_S + 15.0


class Demo(BenchRun):
    """`pblink demo`: a BenchRun of the demo apps, judged by a DemoTracker."""

    def __init__(self, *, devices: int = 1, period_ms: int = 1000, **options: Any) -> None:
        conn_ids = [str(i) for i in range(1, devices + 1)]
        self.period_ms = period_ms
        options.setdefault("title", "pblink demo")
        options.setdefault("what", f"one line every {period_ms} ms each way per device")
        super().__init__(tracker=DemoTracker(conn_ids, app_files=(DEMO_APP,)),
                         board=BoardCode(files=(DEMO_APP,)),
                         settings=dict(DEMO_SETTINGS, demo_period_ms=period_ms), **options)
