"""Server scale: N devices against one server process, through a broker.

Processes (all on loopback): a broker (Mosquitto with this project's queue
limits, benchmarks/common.py; or the embedded amqtt), one server process
(benchmarks/scale_server.py: a LinkServer claiming d0..d<N-1> and reading
every line), and K load-generator processes, N/K devices each in one
asyncio loop: benchmarks/lite_load.py (default: raw MQTT sockets, K = 1 per
5,000 devices) or benchmarks/scale_load.py (``--scale-generator doubles``: a
paho DeviceDouble per device, K = 1 per 500). Before the window the devices
stay idle for 10 s (2 s with --tiny) and the lite generator counts the
heartbeats each way. Each device then writes one qos line per second
(qos=True, wait=True) for the measurement window, with a random phase. Per
run:

- delivered fraction: lines the server read (unique) / lines written, after a
  drain; duplicates and reorderings counted too;
- end-to-end latency p50/p99: the double's write() call to the server's
  readline() (CLOCK_MONOTONIC in both processes);
- server CPU seconds per 1,000 lines (the server process's own rusage from
  the start of the window to the end of the drain) and its peak RSS (VmHWM,
  its own: ru_maxrss would carry the bench runner's over fork and exec);
- the share of doubles the server answered before the window (a double writes
  only while it deems the server reachable, so the rest wait);
- the broker's CPU (per 1,000 lines and in cores);
- the generators' event-loop lag (how late a 50 ms timer fires in each
  generator process: large means the generator itself could not keep up) and
  their CPU use (the busiest process, the total, and per 1,000 lines);
- idle heartbeat traffic: ``h`` per device per minute, up and down (lite).

Issue 13's goals are printed beside the N = 5,000 Mosquitto figures
(``GOALS_5000``), and "== 0" beside the duplicated, reordered and undelivered
lines of every N.

Mosquitto runs N = 100, 1,000, 5,000, 10,000 (--quick: 100). The embedded
amqtt (slower than Mosquitto: docs/PERFORMANCE.md) steps up through 100, 200,
300, 500 and stops at the first N it does not sustain (``SUSTAINED``:
delivered < 99 %, p99 > 1,000 ms, or under 90 % of the offered lines written
because writes were blocked waiting for acks); the "highest N sustained" row's
note names the rule that failed, with its value and threshold. A run in which
no line was written is a failed run (a "run failed" row, a goal missed) on
Mosquitto and at the step-up's first N; at a later step-up N it is that N not
sustained. The verdict line names the N = 5,000 goals when a run judged none
of them (``goals_5000_judged``). ``--scale-n``
chooses the counts of both brokers (amqtt steps up through them in order);
``--scale-broker mosquitto`` or ``amqtt`` runs only that broker's runs (a
missing Mosquitto is still a failed run when its runs are asked for).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, Broker, Context, Row, pct, proc_cpu_seconds

FAMILY = "scale"
DESCRIPTION = "N device doubles, one LinkServer process, Mosquitto and amqtt"

# The load generator: benchmarks/lite_load.py (raw MQTT sockets, default) or
# benchmarks/scale_load.py (a paho DeviceDouble per device, the former one).
GENERATORS = {"lite": "benchmarks.lite_load", "doubles": "benchmarks.scale_load"}
PER_GENERATOR = {"lite": 5000, "doubles": 500}  # devices per generator process
# Issue 13's goals, at N = 5,000 on Mosquitto (timeout_ms 1500): printed beside the figures.
GOALS_5000 = {"latency p99": "< 250", "lines not delivered after drain": "== 0",
              "delivered fraction": ">= 1", "lines duplicated": "== 0", "lines reordered": "== 0",
              "server CPU s per 1000 lines": "<= 0.1",
              "generator CPU utilisation (total)": "<= 0.3"}


class Child:
    """A Python child process talking lines on stdin/stdout."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
        errf = await asyncio.to_thread(open, self.log_path, "ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, cwd=ROOT, env=env, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=errf, start_new_session=True)
        finally:
            errf.close()

    async def expect(self, prefix: str, timeout: float) -> str:  # noqa: ASYNC109
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no {prefix!r} within {timeout} s "
                                   f"(log {self.log_path})")
            raw = await asyncio.wait_for(self.proc.stdout.readline(), left)
            if not raw:
                raise RuntimeError(f"{self.name} exited before {prefix!r} (log {self.log_path})")
            text = raw.decode().strip()
            if text.startswith(prefix):
                return text[len(prefix):].strip()

    def send(self, text: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((text + "\n").encode())

    async def stop(self, grace: float = 0.0) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        if grace:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), grace)
            if proc.returncode is not None:
                return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def one_run(ctx: Context, kind: str, n: int, window: float, tag: str,
                  profile: bool = False, timeout_ms: int = 1500,
                  ready_s: float = 60.0, generator: str = "lite",
                  idle_s: float = 0.0) -> dict[str, Any]:
    work = ctx.subdir(f"scale-{kind}-{n}-{timeout_ms}-{tag}")
    broker = Broker(kind, work, ctx.mosquitto)
    await broker.start()
    server: Child | None = None
    gens: list[Child] = []
    try:
        out = work / "server_stats.json"
        argv = [sys.executable, "-m", "benchmarks.scale_server", "--port", str(broker.port),
                "--n", str(n), "--out", str(out), "--timeout-ms", str(timeout_ms)]
        if profile:
            argv += ["--profile", str(work / "server.prof")]
        argv += ctx.options.get("server_args") or []
        server = Child("server", argv, work / "server.log")
        await server.start()
        ready = (await server.expect("READY", 120)).split()
        start_s, claim_s = float(ready[1]), float(ready[0]) - float(ready[1])
        k = max(1, -(-n // PER_GENERATOR[generator]))
        per = -(-n // k)
        first = 0
        while first < n:
            count = min(per, n - first)
            g = Child(f"gen{len(gens)}", [
                sys.executable, "-m", GENERATORS[generator], "--port", str(broker.port),
                "--first", str(first), "--count", str(count), "--ready-s", str(ready_s),
                "--timeout-ms", str(timeout_ms), "--tick-ms", str(min(500, timeout_ms // 6))],
                work / f"gen{len(gens)}.log")
            await g.start()
            gens.append(g)
            first += count
        t_conn = time.monotonic()
        readies = [await g.expect("READY", ready_s + 60) for g in gens]
        connect_s = time.monotonic() - t_conn
        server_ok = sum(int(r.split()[0]) for r in readies)
        idle: list[dict[str, Any]] = []
        if idle_s and generator == "lite":  # heartbeat traffic of idle devices
            for g in gens:
                g.send(f"idle {idle_s}")
            idle = [json.loads(await g.expect("IDLE", idle_s + 30)) for g in gens]
        server.send("mark")
        await server.expect("MARKED", 30)
        broker_cpu0 = broker.cpu_seconds() or 0.0
        t0 = time.monotonic() + 1.0
        for g in gens:
            g.send(f"go {t0} {window}")
        results = [json.loads(await g.expect("RESULT", window + 60)) for g in gens]
        (work / "generators.json").write_text(json.dumps(results))
        broker_cpu = (broker.cpu_seconds() or 0.0) - broker_cpu0
        server.send("stop")
        await server.expect("STOPPED", 60)
        stats = json.loads(out.read_text())
    finally:
        for g in gens:
            await g.stop()
        if server is not None:
            await server.stop(grace=10.0)
        await broker.stop()
    written = sum(r["written"] for r in results)
    received = stats["received_window"]
    lat = stats["latency_ms"]
    gen_cpu = [r["cpu_s_window"] / max(1e-9, r["wall_s_window"]) for r in results]
    gen_cpu_s = sum(r["cpu_s_window"] for r in results)
    per_k = 1000 / received if received else float("nan")  # no lines: no per-line figure
    return {
        "doubles that saw the server before the window": server_ok / n,
        "delivered fraction": received / written if written else 0.0,
        "lines not delivered after drain": max(0, written - received),
        "lines duplicated": stats["duplicates"],
        "lines/s written (N offered)": written / window,
        "latency p50": pct(lat, 0.5),
        "latency p99": pct(lat, 0.99),
        "server CPU s per 1000 lines": stats["cpu_s_window"] * per_k,
        "server CPU utilisation": stats["cpu_s_window"] / max(1e-9, stats["wall_s_window"]),
        "server peak RSS": stats["maxrss_kib"] / 1024,
        # the longest garbage collection in the window (a pause of the whole loop)
        "server GC pause max": max((ms for _, ms in stats["gc_pauses_ms"]), default=0.0),
        "server start (connect + identity probe)": start_s,
        "server claim N conn_ids": claim_s,
        "connect + server_ok time": connect_s,
        "broker CPU s per 1000 lines": broker_cpu * per_k,
        "broker CPU utilisation": broker_cpu / max(1e-9, stats["wall_s_window"]),
        "lines reordered": stats["reordered"],
        "generator event-loop lag p99": max(r["loop_lag_p99_ms"] for r in results),
        "generator CPU utilisation (max)": max(gen_cpu),
        "generator CPU utilisation (total)": sum(gen_cpu),
        "generator CPU s per 1000 lines": gen_cpu_s * per_k,
        **({
            "idle heartbeats up per device per minute": sum(i["h_sent"] for i in idle)
            * 60 / (n * idle[0]["wall_s"]),
            "idle heartbeats down per device per minute": sum(i["h_received"] for i in idle)
            * 60 / (n * idle[0]["wall_s"]),
        } if idle else {}),
        "_generators": len(gens),
    }


UNITS = {
    "doubles that saw the server before the window": "fraction", "delivered fraction": "fraction",
    "lines not delivered after drain": "lines", "lines duplicated": "lines",
    "lines reordered": "lines", "generator CPU utilisation (total)": "cores",
    "generator CPU s per 1000 lines": "s",
    "idle heartbeats up per device per minute": "frames",
    "idle heartbeats down per device per minute": "frames",
    "lines/s written (N offered)": "lines/s",
    "latency p50": "ms", "latency p99": "ms", "server CPU s per 1000 lines": "s",
    "server CPU utilisation": "cores", "server peak RSS": "MiB",
    "server GC pause max": "ms",
    "server start (connect + identity probe)": "s", "server claim N conn_ids": "s",
    "connect + server_ok time": "s",
    "broker CPU s per 1000 lines": "s", "broker CPU utilisation": "cores",
    "generator event-loop lag p99": "ms",
    "generator CPU utilisation (max)": "cores",
}


# What the amqtt step-up calls sustained at N devices, in every run.
MIN_DELIVERED = 0.99  # delivered fraction
MAX_P99_MS = 1000.0  # latency p99, ms
MIN_WRITTEN = 0.9  # lines/s written, as a share of the N offered (also the failover bench's)
WRITTEN = "lines/s written (N offered)"
SUSTAINED_TEXT = (f"delivered fraction >= {MIN_DELIVERED}, latency p99 <= {MAX_P99_MS:,.0f} ms, "
                  f"lines/s written >= {MIN_WRITTEN:.0%} of N")


def unsustained(res: dict[str, Any], n: int) -> list[str]:
    """Why one run at N devices was not sustained, each reason with its value and
    threshold, e.g. ``["latency p99 1,067 ms > 1,000 ms"]``; empty when it was.
    A NaN (no line read) fails its rule."""
    why = []
    delivered = res["delivered fraction"]
    if not delivered >= MIN_DELIVERED:
        why.append(f"delivered fraction {delivered:.3f} < {MIN_DELIVERED}")
    p99 = res["latency p99"]
    if p99 != p99:  # NaN: no latency sample
        why.append("latency p99: no line read")
    elif not p99 <= MAX_P99_MS:
        why.append(f"latency p99 {p99:,.0f} ms > {MAX_P99_MS:,.0f} ms")
    written = res[WRITTEN]
    if not written >= MIN_WRITTEN * n:
        why.append(f"lines/s written {written:,.0f} < {MIN_WRITTEN:.0%} of N = "
                   f"{MIN_WRITTEN * n:,.0f}")
    return why


def not_sustained_note(n: int, runs: dict[str, list[float]], failed: str) -> str:
    """The note of the "highest N sustained" row: why N was not, with the thresholds."""
    if failed:
        return f"N={n:,} was not sustained: its run failed ({failed[:160]})"
    reasons = [f"run {i + 1}: " + "; ".join(why) for i in range(len(runs["latency p99"]))
               if (why := unsustained({k: v[i] for k, v in runs.items()}, n))]
    return f"N={n:,} was not sustained: " + " | ".join(reasons)


def scale_counts(ctx: Context) -> tuple[list[int], list[int]]:
    """The device counts (Mosquitto, amqtt): --scale-n for both when given (amqtt in
    ascending order, it steps up), else by size: tiny 10, --quick 100, full
    Mosquitto 100 1,000 5,000 10,000 and amqtt 100 200 300 500."""
    given = ctx.options.get("scale_n")
    if given:
        return list(given), sorted(set(given))
    if ctx.tiny:
        return [10], [10]
    if ctx.quick:
        return [100], [100]
    return [100, 1000, 5000, 10000], [100, 200, 300, 500]


async def run(ctx: Context) -> list[Row]:
    window = 3.0 if ctx.tiny else 10.0 if ctx.quick else 12.0
    # (broker, counts, step up until not sustained, timeout_ms)
    plan: list[tuple[str, list[int], bool, int]] = []
    ns, amqtt_ns = scale_counts(ctx)
    generator = ctx.options.get("scale_generator") or "lite"
    rows: list[Row] = []
    only = ctx.options.get("scale_broker")  # --scale-broker: one broker's runs, else both
    if only == "amqtt":
        pass
    elif ctx.mosquitto:
        plan.append(("mosquitto", ns, False, 1500))
        if max(ns) >= 5000:  # the same with rare heartbeats: the line path alone
            plan.append(("mosquitto", [5000], False, 10000))
    else:  # the goals are Mosquitto's: never a verdict without them
        rows.append(Row(FAMILY, "run failed", "-", [], {"broker": "mosquitto"},
                        target="completes", met=False,
                        note="mosquitto is not installed (apt-get install mosquitto): "
                        f"the Mosquitto runs at N={' '.join(map(str, ns))} and their goals "
                        "were not run"))
    if only != "mosquitto":
        plan.append(("amqtt", amqtt_ns, True, 1500))
    for kind, counts, step_up, timeout_ms in plan:
        for n in counts:
            repeats = ctx.repeats if n <= 1000 else 1
            if step_up and not ctx.quick:
                repeats = 1
            runs: dict[str, list[float]] = {}
            gens = 0
            failed = ""
            for r in range(repeats):
                ctx.progress(f"scale: {kind}, N={n}, timeout_ms={timeout_ms}, run {r + 1}/"
                             f"{repeats}, {window:.0f} s window")
                try:
                    res = await one_run(ctx, kind, n, window, f"r{r}", timeout_ms=timeout_ms,
                                        ready_s=min(60.0, 10 + n / 100), generator=generator,
                                        idle_s=2.0 if ctx.tiny else 10.0)
                except (TimeoutError, RuntimeError) as exc:
                    failed = str(exc) or type(exc).__name__  # TimeoutError() says nothing
                    ctx.progress(f"scale: {kind} N={n} failed: {exc}")
                    break
                gens = res.pop("_generators")
                for key, v in res.items():
                    runs.setdefault(key, []).append(v)
            params = {"broker": kind, "N": n, "timeout_ms": timeout_ms, "gens": gens,
                      "generator": generator}
            # A run in which no line was written proves nothing by its "== 0" rows:
            # on Mosquitto, and at the step-up broker's first N (nothing before it
            # was sustained either), it is a failed run; at a later step-up N that
            # N is simply not sustained (its note says why)
            idle = [i + 1 for i, w in enumerate(runs.get(WRITTEN, [])) if not w > 0]
            first_n = counts.index(n) == 0
            judge = not (idle and step_up)
            for key, vals in runs.items():
                target = ""
                if n == 5000 and kind == "mosquitto" and timeout_ms == 1500:
                    target = GOALS_5000.get(key, "")
                elif judge and key in ("lines duplicated", "lines reordered",
                                       "lines not delivered after drain"):
                    target = "== 0"  # at every N: PROTOCOL.md's guarantees
                rows.append(Row(FAMILY, key, UNITS[key], vals, params, target=target))
            if idle and (first_n or not step_up) and not failed:
                failed = (f"no line written in run {', '.join(map(str, idle))}: "
                          "its delivered, duplicated and reordered figures prove nothing")
            if failed:  # a run that did not complete is a goal missed, never hidden
                rows.append(Row(FAMILY, "run failed", "-", [], params, target="completes",
                                met=False, note=failed[:200]))
            if step_up and (failed or not runs or any(
                    unsustained({k: v[i] for k, v in runs.items()}, n)
                    for i in range(len(runs["latency p99"])))):
                rows.append(Row(FAMILY, "highest N sustained", "doubles",
                                [counts[counts.index(n) - 1]] if counts.index(n) else [],
                                {"broker": kind, "timeout_ms": timeout_ms,
                                 "tried": " ".join(map(str, counts))},
                                note=not_sustained_note(n, runs, failed)
                                + f" [sustained: every run {SUSTAINED_TEXT}]"))
                break
        else:
            if step_up:
                rows.append(Row(FAMILY, "highest N sustained", "doubles", [counts[-1]],
                                {"broker": kind, "timeout_ms": timeout_ms,
                                 "tried": " ".join(map(str, counts))},
                                note="every N tried was sustained "
                                f"[every run {SUSTAINED_TEXT}]"))
    return rows


GOALS_5000_MISSING = ("scale's N = 5,000 goals not run (they need --scale-n 5000 with "
                      "Mosquitto)")


def goals_5000_judged(rows: list[Row]) -> bool:
    """Whether any of issue 13's N = 5,000 goals (``GOALS_5000``, Mosquitto,
    timeout_ms 1,500) was judged in ``rows``: the verdict line says when none was."""
    return any(r.family == FAMILY and r.met is not None and r.name in GOALS_5000
               and r.params.get("broker") == "mosquitto" and r.params.get("N") == 5000
               and r.params.get("timeout_ms") == 1500 for r in rows)


__all__ = ["GOALS_5000_MISSING", "goals_5000_judged", "one_run", "proc_cpu_seconds", "run"]
