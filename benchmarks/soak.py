"""Soak: the chaos demo (``pblink demo --chaos``) for a long time, plus a process watch.

``pblink demo --devices 4 --chaos --duration 1800`` already counts, per device
and direction, qos lines sent, received, lost, duplicated and reordered, and
the faults survived. What it does not report is a process that died on its
own: a MicroPython board that exited, the server app or the broker crashing
outside an injected fault, a board's Python traceback. :class:`SoakDemo`
adds that watch:

- every 0.2 s each board process (Pyboard, ESP8266 of every pair) and the
  broker and server-app processes are checked; one that has exited although
  the harness did not kill or stop it is a *death* (board, boot, exit code);
- each board's output is scanned for ``Traceback`` and ``MemoryError``;
- ESP8266 boots are compared with what explains them: reset pulses from the
  Pyboard (after injected faults whose row in virtual_bench/faults.py says
  ``resets_esp``: crashes and hangs; or the Pyboard's own watchdog
  logic), and soft resets (``machine.reset()`` after an exception in the
  bridge) are counted from boots not explained by a pulse.

Run it with ``pblink bench --only soak --duration 1800 --devices 4`` (the
summary goes to stdout and to the results JSON; the run's timeline, drawn by
virtual_bench/timeline.py so a lost or late line can be found by eye, goes
beside the JSON as ``<name>-soak-timeline.html``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Context, Row, run_loadavg
from virtual_bench.demo import Demo
from virtual_bench.faults import FAULTS
from virtual_bench.harness import ESP, PYBOARD, Bench, Lab, ManagedProcess, OutputLine

FAMILY = "soak"
DESCRIPTION = "chaos demo for --duration seconds with a process-death watch"


class SoakDemo(Demo):
    """The demo with a watch for processes that die and tracebacks."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.deaths: list[dict[str, Any]] = []
        self.tracebacks: dict[str, int] = {}
        self.memory_errors = 0
        self._seen: set[int] = set()
        self._stopping: set[int] = set()
        self._watch: asyncio.Task[None] | None = None

    def _lab(self) -> Lab:
        lab = super()._lab()
        inner = lab.on_line

        def on_line(bench: Bench, ln: OutputLine) -> None:
            if "Traceback" in ln.text:
                key = f"dev{bench.conn_id} {ln.board}"
                self.tracebacks[key] = self.tracebacks.get(key, 0) + 1
            if "MemoryError" in ln.text:
                self.memory_errors += 1
            if inner is not None:
                inner(bench, ln)

        lab.on_line = on_line
        return lab

    async def _start_lab(self, lab: Lab) -> None:
        await super()._start_lab(lab)
        for proc in (lab.broker, lab.server):
            if proc is not None:
                self._wrap_stop(proc)
        self._watch = asyncio.create_task(self._watch_processes(lab))
        original = lab.stop

        async def stop() -> None:  # the end of the run: the processes stop on purpose now
            if self._watch is not None:
                self._watch.cancel()
            await original()

        lab.stop = stop  # type: ignore[method-assign]

    def _wrap_stop(self, mp: ManagedProcess) -> None:
        """Remember the processes the lab stops on purpose (drop_broker, restart_server_app)."""
        original = mp.stop

        async def stop(grace: float = 5.0) -> None:
            if mp.proc is not None:
                self._stopping.add(id(mp.proc))
            await original(grace)

        mp.stop = stop  # type: ignore[method-assign]

    async def _watch_processes(self, lab: Lab) -> None:
        while True:
            await asyncio.sleep(0.2)
            for bench in lab.benches:
                for board in (PYBOARD, ESP):
                    bp = bench.procs.get(board)
                    proc = bp.proc if bp is not None else None
                    if proc is not None and proc.returncode is not None and \
                            id(proc) not in self._seen:
                        self._seen.add(id(proc))
                        self._death(f"dev{bench.conn_id} {board}", bp.boot if bp else 0,
                                    proc.returncode)
            for mp in (lab.broker, lab.server):
                proc = mp.proc if mp is not None else None
                if proc is not None and proc.returncode is not None and \
                        id(proc) not in self._seen and id(proc) not in self._stopping:
                    self._seen.add(id(proc))
                    assert mp is not None
                    self._death(mp.name, mp.starts, proc.returncode)

    def _death(self, who: str, boot: int, code: int | None) -> None:
        self.deaths.append({"process": who, "boot": boot, "exit": code,
                            "t": round(time.monotonic() - self.tracker.t0, 1)})
        self.tracker.event(f"PROCESS DIED: {who} (start #{boot}) exit {code}")

    def process_report(self) -> tuple[str, dict[str, Any]]:
        lab = self.lab
        assert lab is not None
        lines = ["processes:"]
        per_dev: dict[str, Any] = {}
        for bench in lab.benches:
            s = bench.stats
            injected_esp = sum(1 for f in self.tracker.faults if f.device == bench.conn_id
                               and FAULTS[f.kind].resets_esp)
            esp_boots = s["esp_boots"]
            # boots explained: the first one, and one per reset pulse
            unexplained = max(0, esp_boots - 1 - s["reset_pulses"])
            per_dev[bench.conn_id] = {
                "esp_boots": esp_boots, "reset_pulses": s["reset_pulses"],
                "pyboard_boots": s["pyboard_boots"], "watchdog_resets": s["watchdog_resets"],
                "esp_faults_injected": injected_esp, "esp_soft_resets": unexplained,
                "i2c_corrupted": s["i2c_corrupted"],
            }
            lines.append(
                f"  dev{bench.conn_id}: ESP8266 boots {esp_boots} (reset pulses "
                f"{s['reset_pulses']}, crash/hang faults injected {injected_esp}, boots not "
                f"from a pulse {unexplained}), Pyboard boots {s['pyboard_boots']}, "
                f"watchdog resets {s['watchdog_resets']}")
        for mp in (lab.broker, lab.server):
            if mp is not None:
                lines.append(f"  {mp.name}: started {mp.starts} time(s)")
        lines.append("  processes that died on their own: " + (", ".join(
            f"{d['process']} #{d['boot']} exit {d['exit']} at {d['t']} s"
            for d in self.deaths) or "none"))
        lines.append("  tracebacks in board output: " + (", ".join(
            f"{k}: {v}" for k, v in sorted(self.tracebacks.items())) or "none")
            + f"; MemoryError lines: {self.memory_errors}")
        data = {"devices": per_dev, "deaths": self.deaths, "tracebacks": self.tracebacks,
                "memory_errors": self.memory_errors}
        return "\n".join(lines), data


def soak_rows(demo: SoakDemo, elapsed: float, code: int, extra: dict[str, Any]) -> list[Row]:
    tr = demo.tracker
    lost = dup = reord = sent = 0
    for dev in tr.devices.values():
        for t in tr.tallies(dev):
            lost += t["lost"]
            dup += t["duplicated"]
            reord += t["reordered"]
            sent += t["sent"]
    injected = len(tr.faults)
    survived = sum(f.survived for f in tr.faults)
    params = {"devices": demo.n, "duration_s": round(elapsed), "period_ms": demo.period_ms}
    rtts = tr.all_rtts()
    rows = [
        Row(FAMILY, "qos lines sent (both ways)", "lines", [sent], params),
        Row(FAMILY, "qos lines lost", "lines", [lost], params, target="== 0"),
        Row(FAMILY, "qos lines duplicated", "lines", [dup], params, target="== 0"),
        Row(FAMILY, "qos lines reordered", "lines", [reord], params, target="== 0"),
        Row(FAMILY, "faults survived / injected", "faults", [survived], params,
            note=f"{survived} of {injected} injected faults recovered from"),
        Row(FAMILY, "processes that died on their own", "processes", [len(demo.deaths)], params,
            target="== 0"),
        Row(FAMILY, "board tracebacks", "lines", [sum(demo.tracebacks.values())], params),
    ]
    if rtts:
        from benchmarks.common import pct

        rows.append(Row(FAMILY, "round trip p50 (under chaos)", "ms", [pct(rtts, 0.5) * 1000],
                        params))
        rows.append(Row(FAMILY, "round trip p99 (under chaos)", "ms", [pct(rtts, 0.99) * 1000],
                        params))
    rows[0].note = f"demo exit status {code}; load {extra.get('loadavg_end')}"
    return rows


async def run_soak(duration: float, devices: int = 4, period_ms: int = 1000,
                   seed: int | None = None, workdir: Path | None = None,
                   echo: bool = True, timeline: Path | None = None,
                   ) -> tuple[int, str, list[Row], dict[str, Any]]:
    """Run the soak; (exit status, printed summary, rows, process data). With
    ``timeline``, the run's timeline goes there (virtual_bench/timeline.py)."""
    out = io.StringIO()
    demo = SoakDemo(devices=devices, duration=duration, chaos=True, period_ms=period_ms,
                    view="quiet", seed=seed, workdir=workdir, out=out, timeline=timeline)
    t0 = time.monotonic()
    try:
        code = await demo.run()
    finally:
        if demo._watch is not None:
            demo._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await demo._watch
    if demo.interrupted is not None:  # not the duration asked for: no figures (exit 130)
        raise KeyboardInterrupt(f"signal {demo.interrupted}")
    elapsed = time.monotonic() - t0
    report, data = demo.process_report()
    if demo.deaths and code == 0:
        code = 1
    text = out.getvalue().rstrip("\n") + "\n" + report + "\n"
    if echo:
        print(text, flush=True)
    data["loadavg_end"] = run_loadavg()
    return code, text, soak_rows(demo, elapsed, code, data), data


async def run(ctx: Context) -> list[Row]:
    duration = float(ctx.options.get("duration") or (15 if ctx.tiny else 60 if ctx.quick
                                                     else 600))
    devices = int(ctx.options.get("devices") or (1 if ctx.tiny else 4))
    ctx.progress(f"soak: {devices} device(s), chaos, {duration:.0f} s")
    timeline = ctx.options.get("soak_timeline")
    _code, text, rows, _data = await run_soak(duration, devices, seed=ctx.options.get("seed"),
                                            workdir=ctx.subdir("soak"), timeline=timeline)
    if timeline is not None:
        rows[0].note += f"; timeline {timeline}"
    (ctx.workdir / "soak-summary.txt").write_text(text)
    return rows
