"""A timeline of a bench run: what happened when, one lane set per device.

:class:`TimelineRecorder` listens where the bench's events already flow (the
harness's ``on_bus``, ``on_line`` and server-app ``on_server_line`` callbacks,
see virtual_bench/harness.py) and keeps, per device, on the harness clock
(``time.monotonic()``):

- every line up and down as the Pyboard's I2C bus carried it (the bench's
  sniffer rebuilds link messages, PROTOCOL.md 2): a ``q`` frame's first
  appearance, each retransmission (the same session and id again) and the
  ``a`` ack coming back, so its bus-to-ack time (line on the Pyboard's bus -> its
  end-to-end ack on the same bus; not the run summary's echo round trip, which
  adds the server app's reply and the Pyboard printing it); ``u`` lines as points;
- the ``U``/``D`` state the Pyboard was told (bus messages ``U``, ``D``), ``R``
  reports ``[connects, report_no, mem_free, mem_errors]``, and each sync (the ``C`` config
  the Pyboard sends after every sync, PROTOCOL.md 1.6 step 4);
- the device's online state as the server app judged it (its log line
  ``device <conn_id> is online|offline``, server_apps/link_server.py); while
  a server app restarts its view is unknown (``None``), and a restarted server
  app that answers the device (a frame from it on the Pyboard's bus) has judged
  it online: a server that loads its state as online logs no new judgement;
- at the end, from each Bench's own event list: board boots, the reset line
  held and released, and the faults the harness applied; and from the caller,
  the faults injected with their start and end (:meth:`add_fault`).

:meth:`TimelineRecorder.write` draws it all as one static HTML file with an
inline SVG per device and the recorded data as JSON inside it (element
``<script type="application/json" id="timeline-data">``), so a test or a
script can read the run back (:func:`read_timeline`). No JavaScript, no
external file: it opens from disk in any browser.

Nothing here is demo-specific: any AppBase application on the bench gets its
lines placed, because lines are taken from the link, not from what the app prints.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from link_core import frames

_ONLINE = re.compile(r"device (\S+) is (online|offline)")
_CLOSED = re.compile(r"link server \S+ (closed|aborted)")
_DATA_ID = "timeline-data"


@dataclass
class LineRecord:
    """One line through the link, as the Pyboard's bus saw it (times: run seconds)."""

    direction: str  # "up" (Pyboard -> server app) or "down"
    qos: bool
    text: str
    t: float  # first time on the bus
    session: str = ""
    msg_id: int | None = None
    ack: float | None = None  # the end-to-end ack on the bus (qos lines)
    repeats: list[float] = field(default_factory=list)  # retransmissions seen on the bus

    @property
    def bus_to_ack(self) -> float | None:
        """Seconds from the line's first appearance on the Pyboard's bus to its ack there."""
        return None if self.ack is None else self.ack - self.t


@dataclass
class DeviceTimeline:
    conn_id: str
    lines: list[LineRecord] = field(default_factory=list)
    link_state: list[tuple[float, str]] = field(default_factory=list)  # (t, "U" | "D")
    # the server app's view: True online, False offline, None unknown (restarting)
    online: list[tuple[float, bool | None]] = field(default_factory=list)
    reports: list[tuple[float, list[int]]] = field(default_factory=list)
    syncs: list[float] = field(default_factory=list)
    marks: list[tuple[float, str, str]] = field(default_factory=list)  # (t, kind, detail)
    open_lines: dict[tuple[str, str, int], LineRecord] = field(default_factory=dict)


@dataclass
class FaultSpan:
    name: str
    device: str  # conn_id or "all"
    start: float
    end: float
    # "": over at `end`; an instant fault (crash, hang: end == start) lasts until the
    # device's link resynchronised ("resync") or, failing that, to the run's end ("run end")
    ended_by: str = ""


_OnLine = TypeVar("_OnLine")  # Lab's on_line callback, passed through unchanged


class TimelineRecorder:
    """Collects a run's events; :meth:`write` renders them (module docstring)."""

    def __init__(self, conn_ids: list[str], t0: float | None = None) -> None:
        self.t0 = time.monotonic() if t0 is None else t0
        self.devices = {c: DeviceTimeline(c) for c in conn_ids}
        self.faults: list[FaultSpan] = []
        self.t_end: float | None = None

    def _now(self) -> float:
        return round(time.monotonic() - self.t0, 4)

    # -- sources (the harness's callback signatures) ------------------------------------

    def on_bus(self, bench: Any, direction: str, msg: bytes) -> None:
        """A link message on a device's I2C bus: ``direction`` "up" is Pyboard -> ESP8266."""
        dev = self.devices.get(bench.conn_id)
        if dev is None or not msg:
            return
        t = self._now()
        kind = msg[:1]
        if direction == "down" and kind in (b"q", b"u", b"a") and dev.online \
                and dev.online[-1][1] is None:
            # a frame from a restarted server app: it has judged the device online (a
            # server whose saved state says online already logs no new judgement)
            dev.online.append((t, True))
        if kind in (b"q", b"u", b"a"):
            try:
                fkind, session, msg_id, _base, line = frames.decode(msg)
            except ValueError:
                dev.marks.append((t, "bad frame", repr(msg[:60])))
                return
            self._frame(dev, t, direction, fkind, session or "", msg_id, line)
        elif direction == "down" and kind in (b"U", b"D"):
            state = kind.decode()
            if not dev.link_state or dev.link_state[-1][1] != state:
                dev.link_state.append((t, state))
        elif direction == "down" and kind == b"R":
            try:
                report = [int(v) for v in json.loads(msg[1:])]
            except (ValueError, TypeError):
                return
            dev.reports.append((t, report))
        elif direction == "up" and kind == b"C":
            dev.syncs.append(t)
        elif direction == "down" and kind in (b"W", b"B"):
            dev.marks.append((t, "no WiFi" if kind == b"W" else "broker refused",
                              msg[1:].decode("utf-8", "replace")))

    def _frame(self, dev: DeviceTimeline, t: float, direction: str, kind: str, session: str,
               msg_id: int | None, line: str | None) -> None:
        if kind == "q":
            assert msg_id is not None
            key = (direction, session, msg_id)
            rec = dev.open_lines.get(key)
            if rec is None:
                rec = LineRecord(direction, True, line or "", t, session, msg_id)
                dev.open_lines[key] = rec
                dev.lines.append(rec)
            else:
                rec.repeats.append(t)
        elif kind == "u":
            dev.lines.append(LineRecord(direction, False, line or "", t, session))
        elif kind == "a":
            # an ack travels the other way from the line it acknowledges
            other = "down" if direction == "up" else "up"
            rec = dev.open_lines.get((other, session, msg_id if msg_id is not None else -1))
            if rec is not None and rec.ack is None:
                rec.ack = t

    def on_server_line(self, _name: str, text: str) -> None:
        """The server app's log: its judgement of each device's liveness (PROTOCOL.md 4.4);
        a LinkServer that closes ("link server ... closed") judges nothing any more."""
        m = _ONLINE.search(text)
        if m and m.group(1) in self.devices:
            dev = self.devices[m.group(1)]
            dev.online.append((self._now(), m.group(2) == "online"))
        elif _CLOSED.search(text):
            self.server_stopped()

    def chain(self, on_line: _OnLine, on_server_line: Callable[[str, str], None],
              on_bus: Callable[[Any, str, bytes], None] | None
              ) -> tuple[_OnLine, Callable[[str, str], None], Callable[[Any, str, bytes], None]]:
        """The harness callbacks (Lab's on_line, on_server_line, on_bus) with this
        recorder listening too: the given ones run first, unchanged."""

        def server_line(name: str, text: str) -> None:
            on_server_line(name, text)
            self.on_server_line(name, text)

        def bus(bench: Any, direction: str, msg: bytes) -> None:
            if on_bus is not None:
                on_bus(bench, direction, msg)
            self.on_bus(bench, direction, msg)

        return on_line, server_line, bus

    def server_stopped(self) -> None:
        """The server app went away (restart): its view of every device is unknown
        until the new one judges (a log line, or its first frame to the device)."""
        t = self._now()
        for dev in self.devices.values():
            if dev.online and dev.online[-1][1] is not None:
                dev.online.append((t, None))

    def add_fault(self, name: str, device: str, start: float, end: float) -> None:
        """A fault injected, ``start``/``end`` on the monotonic clock."""
        end = min(max(start, end), self.t0 + (self.t_end if self.t_end is not None
                                               else self._now()))  # still going at the end
        self.faults.append(FaultSpan(name, device, round(start - self.t0, 3),
                                     round(end - self.t0, 3)))

    def add_bench_events(self, bench: Any) -> None:
        """A Bench's own event list ((t, kind, detail): boots, reset line, faults)."""
        dev = self.devices.get(bench.conn_id)
        if dev is None:
            return
        for t, kind, detail in bench.events:
            if t >= self.t0:
                dev.marks.append((round(t - self.t0, 4), kind, detail))
        dev.marks.sort()

    # -- output -------------------------------------------------------------------------------

    def data(self) -> dict[str, Any]:
        """Everything recorded, JSON-ready (the shape read_timeline returns)."""
        end = self.t_end if self.t_end is not None else self._now()
        out: dict[str, Any] = {"duration_s": round(end, 3),
                               "faults": [asdict(self._span(f, end)) for f in self.faults],
                               "devices": {}}
        for c, dev in self.devices.items():
            out["devices"][c] = {
                "lines": [asdict(rec) for rec in dev.lines],
                "link_state": dev.link_state, "online": dev.online, "reports": dev.reports,
                "syncs": dev.syncs, "marks": dev.marks,
            }
        return out

    def _span(self, f: FaultSpan, end: float) -> FaultSpan:
        """An instant fault on one device (a crash or hang: nothing ends it but the reset)
        drawn until the device's link resynchronised after it."""
        if f.end > f.start or f.device not in self.devices:
            return f
        after = [t for t in self.devices[f.device].syncs if t > f.start]
        if after:
            return FaultSpan(f.name, f.device, f.start, round(after[0], 3), "resync")
        return FaultSpan(f.name, f.device, f.start, round(end, 3), "run end")

    def write(self, path: Path, title: str = "pblink run") -> Path:
        """Render the timeline to ``path`` (HTML, self-contained); returns ``path``."""
        if self.t_end is None:
            self.t_end = self._now()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_html(self.data(), title), encoding="utf-8")
        return path


def read_timeline(path: str | Path) -> dict[str, Any]:
    """The data embedded in a timeline file written by :meth:`TimelineRecorder.write`.

    ``path``: str or Path. Raises OSError when it cannot be read, ValueError when the
    file holds no timeline data."""
    text = Path(path).read_text(encoding="utf-8")
    m = re.search(rf'<script type="application/json" id="{_DATA_ID}">(.*?)</script>', text,
                  re.S)
    if not m:
        raise ValueError(f"{path}: no timeline data")
    data: dict[str, Any] = json.loads(m.group(1).replace("<\\/", "</"))
    return data


# -- rendering ------------------------------------------------------------------------------

LANE_H = 22
LEFT = 130  # viewBox units for the lane names
VIEW_W = 1500  # viewBox width: the SVG scales to the page's width (no horizontal scrolling)
LANES = ("faults", "Pyboard U/D", "server: online", "lines up", "lines down", "link", "R reports")
COLORS = {"U": "#3a3", "D": "#d33", "unknown": "#bbb", "fault": "#f90", "line": "#36c",
          "late": "#c3c", "repeat": "#d33", "noack": "#d33", "inflight": "#999", "sync": "#09c",
          "reset": "#c60", "boot": "#000", "report": "#777"}
LATE_S = 1.0  # a bus-to-ack time above this is drawn violet


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


class _Svg:
    def __init__(self, width: float, scale: float) -> None:
        self.parts: list[str] = []
        self.width = width
        self.scale = scale

    def x(self, t: float) -> float:
        return round(LEFT + t * self.scale, 1)

    def add(self, element: str) -> None:
        self.parts.append(element)

    def rect(self, t0: float, t1: float, lane: int, color: str, title: str, *,
             h: float = LANE_H - 6, cls: str = "") -> None:
        x0, x1 = self.x(t0), self.x(t1)
        y = lane * LANE_H + (LANE_H - h) / 2
        self.add(f'<rect class="{cls}" x="{x0}" y="{y}" width="{max(2.0, x1 - x0):.1f}" '
                 f'height="{h}" fill="{color}" fill-opacity="0.55"><title>{_esc(title)}'
                 f'</title></rect>')

    def mark(self, t: float, lane: int, color: str, title: str, shape: str = "tick",
             cls: str = "", data: str = "") -> None:
        x = self.x(t)
        y0 = lane * LANE_H
        tip = f"<title>{_esc(title)}</title>"
        self.add(_shape(shape, x, y0, color, f'class="{cls}" {data}'.strip(), tip))


def _shape(shape: str, x: float, y0: float, color: str, attrs: str = "", tip: str = "") -> str:
    """One mark in a lane whose top is ``y0`` (also the legend's swatches)."""
    if shape == "tick":
        return (f'<line {attrs} x1="{x}" x2="{x}" y1="{y0 + 3}" y2="{y0 + LANE_H - 3}" '
                f'stroke="{color}" stroke-width="2">{tip}</line>')
    if shape == "tri":
        return f'<path {attrs} d="M{x} {y0 + 2} l4 7 l-8 0 z" fill="{color}">{tip}</path>'
    if shape == "diamond":
        ym = y0 + LANE_H / 2
        return f'<path {attrs} d="M{x} {ym - 6} l6 6 l-6 6 l-6 -6 z" fill="{color}">{tip}</path>'
    if shape == "bar":
        ym = y0 + LANE_H / 2
        return (f'<rect {attrs} x="{x - 7}" y="{ym - 5}" width="14" height="10" fill="{color}" '
                f'fill-opacity="0.55">{tip}</rect>')
    return f'<circle {attrs} cx="{x}" cy="{y0 + LANE_H / 2}" r="4" fill="{color}">{tip}</circle>'


def _states(svg: _Svg, lane: int, changes: list[tuple[float, Any]], end: float,
            names: tuple[str, str, str], title: str) -> None:
    """Bands of a state from its change list [(t, value)]: value True/"U" (names[0]),
    False/"D" (names[1]) or None, unknown (names[2])."""
    for i, (t, value) in enumerate(changes):
        t1 = changes[i + 1][0] if i + 1 < len(changes) else end
        key = "unknown" if value is None else "U" if value in (True, "U") else "D"
        label = names[2] if value is None else names[0] if key == "U" else names[1]
        svg.rect(t, t1, lane, COLORS[key], f"{title}: {label} from {t:.2f} s to {t1:.2f} s")


def _in_flight_at_end(dev: dict[str, Any]) -> set[int]:
    """Indexes of the qos lines without an ack that were still in flight when the run
    ended: no later line in the same direction was acked (the link never got past them).
    An unacked line followed by an acked one is a line whose ack never came."""
    lines = dev["lines"]  # in the order the bus carried them
    last_acked = {d: max((i for i, r in enumerate(lines) if r["direction"] == d and r["qos"]
                          and r["ack"] is not None), default=-1) for d in ("up", "down")}
    return {i for i, r in enumerate(lines) if r["qos"] and r["ack"] is None
            and i > last_acked[r["direction"]]}


def _fault_label(f: dict[str, Any]) -> str:
    until = {"resync": " (until the link resynchronised)",
             "run end": " (not recovered by the end of the run)"}.get(f.get("ended_by", ""), "")
    return f"{f['name']} from {f['start']:.2f} s to {f['end']:.2f} s{until}"


def _device_svg(conn_id: str, dev: dict[str, Any], faults: list[dict[str, Any]],
                end: float, scale: float) -> str:
    width = LEFT + end * scale + 20
    svg = _Svg(width, scale)
    height = LANE_H * (len(LANES) + 1)
    for i, name in enumerate(LANES):
        fill = "#f4f4f4" if i % 2 else "#fff"
        svg.add(f'<rect x="0" y="{i * LANE_H}" width="{width:.0f}" height="{LANE_H}" '
                f'fill="{fill}"/><text x="4" y="{i * LANE_H + 15}" class="lane">{name}</text>')
    # time axis
    step = next((s for s in (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
                 if s * scale >= 60), 7200)
    axis_y = len(LANES) * LANE_H
    t = 0
    while t <= end:
        x = svg.x(t)
        svg.add(f'<line x1="{x}" x2="{x}" y1="0" y2="{axis_y}" stroke="#ddd"/>'
                f'<text x="{x}" y="{axis_y + 15}" class="axis">{t} s</text>')
        t += step
    for f in faults:
        if f["device"] in (conn_id, "all"):
            svg.rect(f["start"], f["end"], 0, COLORS["fault"], _fault_label(f), cls="fault")
            svg.add(f'<text x="{svg.x(f["start"]) + 2}" y="{15}" class="flabel">'
                    f'{_esc(f["name"])}</text>')
    _states(svg, 1, dev["link_state"], end, ("U (server reachable)", "D (unreachable)", "?"),
            "Pyboard was told")
    _states(svg, 2, dev["online"], end, ("online", "offline", "unknown (server app restarting)"),
            "server app saw the device")
    in_flight = _in_flight_at_end(dev)
    for i, rec in enumerate(dev["lines"]):
        lane = 3 if rec["direction"] == "up" else 4
        what = f"{rec['direction']} {'q #' + str(rec['msg_id']) if rec['qos'] else 'u'}: " \
               f"{rec['text'][:120]}"
        data = f'data-dir="{rec["direction"]}" data-t="{rec["t"]}"'
        repeats = f"{len(rec['repeats'])} retransmission(s)"
        if rec["qos"] and rec["ack"] is not None:
            wait = rec["ack"] - rec["t"]
            color = COLORS["late"] if wait > LATE_S else COLORS["line"]
            y = lane * LANE_H + LANE_H / 2
            svg.add(f'<line x1="{svg.x(rec["t"])}" x2="{svg.x(rec["ack"])}" y1="{y}" y2="{y}" '
                    f'stroke="{color}" stroke-width="3" stroke-opacity="0.5"/>')
            svg.mark(rec["t"], lane, color, f"{what} at {rec['t']:.2f} s, bus-to-ack time "
                     f"{wait * 1000:.0f} ms, {repeats}", cls="line", data=data)
        elif rec["qos"] and i in in_flight:
            svg.mark(rec["t"], lane, COLORS["inflight"], f"{what} at {rec['t']:.2f} s, still "
                     f"in flight when the run ended (no ack yet), {repeats}",
                     cls="line inflight", data=data)
        elif rec["qos"]:
            svg.mark(rec["t"], lane, COLORS["noack"], f"{what} at {rec['t']:.2f} s, its ack "
                     f"never came (later lines were acked), {repeats}", cls="line noack",
                     data=data)
        else:
            svg.mark(rec["t"], lane, COLORS["line"], f"{what} at {rec['t']:.2f} s (no qos)",
                     "dot", cls="line", data=data)
        for rt in rec["repeats"]:
            svg.mark(rt, lane, COLORS["repeat"], f"retransmission of {what} at {rt:.2f} s",
                     "tri", cls="repeat")
    for t in dev["syncs"]:
        svg.mark(t, 5, COLORS["sync"], f"link synchronised (config sent) at {t:.2f} s",
                 cls="sync")
    for t, kind, detail in dev["marks"]:
        if kind == "fault":
            continue  # drawn from the fault list, with its end
        color = COLORS["boot"] if kind == "boot" else COLORS["reset"]
        svg.mark(t, 5, color, f"{kind} {detail} at {t:.2f} s", "diamond", cls=kind)
    for t, report in dev["reports"]:
        svg.mark(t, 6, COLORS["report"], f"R report at {t:.2f} s: connects {report[0]}, "
                 f"report #{report[1]}, mem_free {report[2]}", "dot", cls="report")
        svg.add(f'<text x="{svg.x(t) + 5}" y="{6 * LANE_H + 15}" class="small">'
                f'{report[2]}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height + 4}" '
            f'width="100%" id="dev-{_esc(conn_id)}">' + "".join(svg.parts) + "</svg>")


def _summary(conn_id: str, dev: dict[str, Any]) -> str:
    qos = [r for r in dev["lines"] if r["qos"]]
    waits = sorted(r["ack"] - r["t"] for r in qos if r["ack"] is not None)
    parts = []
    for direction in ("up", "down"):
        these = [r for r in dev["lines"] if r["direction"] == direction]
        parts.append(f"{len(these)} line(s) {direction}")
    repeats = sum(len(r["repeats"]) for r in qos)
    in_flight = len(_in_flight_at_end(dev))
    noack = sum(1 for r in qos if r["ack"] is None) - in_flight
    wait = (f"bus-to-ack time median {waits[len(waits) // 2] * 1000:.0f} ms, max "
            f"{waits[-1] * 1000:.0f} ms" if waits else "no qos line acked")
    return (f"dev{_esc(conn_id)}: {', '.join(parts)}; {repeats} retransmission(s); "
            f"{noack} qos line(s) whose ack never came, {in_flight} in flight at the end; "
            f"{wait}; {len(dev['syncs'])} sync(s); {len(dev['reports'])} R report(s)")


def _where(device: str) -> str:
    return "all devices" if device == "all" else f"dev{_esc(device)}"


# The legend: (swatch shape, colour, what it means), drawn with the marks' own shapes.
LEGEND = (
    ("bar", COLORS["fault"], "a fault, from its start to its end (a crash or hang: until the "
                             "link resynchronised)"),
    ("bar", COLORS["U"], "U / online"), ("bar", COLORS["D"], "D / offline"),
    ("bar", COLORS["unknown"], "unknown: the server app is restarting"),
    ("tick", COLORS["line"], "a qos line; its bar runs to its ack"),
    ("tick", COLORS["late"], f"a qos line acked after over {LATE_S:g} s"),
    ("tick", COLORS["noack"], "a qos line whose ack never came (later lines were acked)"),
    ("tick", COLORS["inflight"], "a qos line still in flight when the run ended"),
    ("dot", COLORS["line"], "a line without qos"),
    ("tri", COLORS["repeat"], "a retransmission"),
    ("tick", COLORS["sync"], "link synchronised (config sent)"),
    ("diamond", COLORS["boot"], "a board booted"),
    ("diamond", COLORS["reset"], "the reset line (held, released) or another board event"),
    ("dot", COLORS["report"], "an R report, labelled with mem_free"),
)


def _legend() -> str:
    items = "".join(
        f'<span class="key"><svg viewBox="0 {-(LANE_H / 2) + 2} 20 {LANE_H - 4}" width="20" '
        f'height="{LANE_H - 4}">{_shape(shape, 10, -LANE_H / 2, color)}</svg> {_esc(text)}'
        "</span>" for shape, color, text in LEGEND)
    return f'<div class="legend">{items}</div>'


def render_html(data: dict[str, Any], title: str = "pblink run") -> str:
    """The HTML page of :meth:`TimelineRecorder.data` (module docstring)."""
    end = max(1.0, float(data["duration_s"]))
    scale = (VIEW_W - LEFT - 20) / end  # viewBox units per second: the whole run fits
    faults = data["faults"]
    if faults:
        rows = "".join(
            f"<tr><td>{_esc(f['name'])}</td><td>{_where(f['device'])}</td>"
            f"<td>{f['start']:.2f} s</td><td>{f['end']:.2f} s"
            f"{' (resync)' if f.get('ended_by') == 'resync' else ''}"
            f"{' (run end)' if f.get('ended_by') == 'run end' else ''}</td></tr>"
            for f in faults)
        table = (f"<table><tr><th>fault</th><th>where</th><th>start</th><th>end</th></tr>{rows}"
                 "</table>")
    else:
        table = '<p class="nofaults">No faults injected.</p>'
    sections = []
    for conn_id, dev in data["devices"].items():
        sections.append(f"<h2>device {_esc(conn_id)}</h2><p>{_summary(conn_id, dev)}</p>"
                        f'<div class="lanes">{_device_svg(conn_id, dev, faults, end, scale)}'
                        "</div>")
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    about = (
        "Hover over any mark for its details. <b>faults</b>: each injected fault. "
        "<b>Pyboard U/D</b>: what the bridge told the Pyboard (U: server app reachable). "
        "<b>server: online</b>: the server app's view of the device. <b>lines up/down</b>: "
        "each line as it crossed the Pyboard's I2C bus. Its <b>bus-to-ack time</b> runs from "
        "the line's first appearance on the bus to its end-to-end ack on the same bus; the run "
        "summary's <i>round trip</i> is longer: the Pyboard's line, the server app's reply and "
        "the Pyboard printing it. <b>link</b>: syncs, boots and the reset line. "
        "<b>R reports</b>: the bridge's reports.")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
.lanes {{ border: 1px solid #ccc; }}
.lanes svg {{ display: block; }}
text.lane {{ font-size: 12px; font-weight: bold; }}
text.axis, text.small, text.flabel {{ font-size: 10px; fill: #555; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 2px 8px; }}
.legend {{ display: flex; flex-wrap: wrap; gap: 4px 16px; font-size: 13px; margin: 0.5em 0; }}
.key svg {{ vertical-align: middle; }}
</style></head><body>
<h1>{_esc(title)}</h1>
<p>{end:.1f} s, {len(data['devices'])} device(s), {len(faults)} fault(s) injected.
{about}</p>
{_legend()}
{table}
{''.join(sections)}
<script type="application/json" id="{_DATA_ID}">{blob}</script>
</body></html>
"""
