"""The server process of the scale benchmark: one LinkServer serving N conn_ids.

``python -m benchmarks.scale_server --port P --n N --out stats.json [--state FILE]``

Claims conn_ids ``d0`` .. ``d<N-1>`` and reads every line. A line is
``<seq> <t_ns>``: the device double's sequence number and ``time.monotonic_ns()``
when its ``write()`` was called (CLOCK_MONOTONIC is one clock for every process
on the machine), so the end-to-end latency is taken here at readline().

Commands on stdin, one per line: ``mark`` (start of the measurement window:
CPU, counters and latency samples restart), ``stop`` (write the statistics as
JSON to --out, close the LinkServer, exit). Prints ``READY <seconds> <start seconds>`` once
every conn_id is claimed. With ``--profile FILE`` the run is profiled with
cProfile (the stats go to FILE).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import peak_rss_kib
from server_apps import LinkServer


class Stats:
    def __init__(self) -> None:
        self.lat: list[float] = []
        self.count = 0
        self.dups = 0
        self.reordered = 0
        self.last: dict[str, int] = {}
        self.seen: dict[str, set[int]] = {}

    def line(self, conn_id: str, text: str, now_ns: int) -> None:
        try:
            seq_s, t_s = text.split()
            seq, t_ns = int(seq_s), int(t_s)
        except ValueError:
            return
        seen = self.seen.get(conn_id)
        if seen is None:
            seen = self.seen[conn_id] = set()
        elif seq in seen:
            self.dups += 1
            return
        seen.add(seq)
        last = self.last.get(conn_id, 0)
        if seq < last:
            self.reordered += 1
        else:
            self.last[conn_id] = seq
        self.count += 1
        self.lat.append((now_ns - t_ns) / 1e6)


class GcPauses:
    """The garbage collector's pauses, ms, from ``gc.callbacks`` (start/stop of each collection)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []  # (generation, ms)
        self._t0 = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses.append((int(info["generation"]), (time.perf_counter() - self._t0) * 1e3))


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def main(args: argparse.Namespace) -> None:
    stats = Stats()
    pauses = GcPauses()
    t0 = time.monotonic()
    server = LinkServer("127.0.0.1", args.port, timeout_ms=args.timeout_ms,
                        client_id=args.client_id or f"pblink-scale-{args.port}", root=args.root,
                        state_path=args.state, fsync=bool(args.state), connect_timeout=30,
                        state_db=args.state_db, lease_poll_ms=args.lease_poll_ms)
    await server.start()
    started = time.monotonic() - t0  # the broker connection and the identity probe
    conns: list[Any] = []
    claimed = asyncio.Event()
    # --read-log: every line read, "<conn_id> <line>", one write() per line (line
    # buffered), so the kernel has it all when the process is killed with SIGKILL
    read_log = open(args.read_log, "w", buffering=1) if args.read_log else None  # noqa: ASYNC230

    async def reader(conn_id: str) -> None:
        conn = await server.connection(conn_id)  # with --state-db: waits for the lease
        conns.append(conn)
        if len(conns) == args.n:
            claimed.set()
        async for line in conn:
            if read_log is not None:
                read_log.write(f"{conn.conn_id} {line}\n")
            stats.line(conn.conn_id, line, time.monotonic_ns())

    tasks = [asyncio.create_task(reader(f"d{i}")) for i in range(args.n)]
    if args.standby:  # another process holds the leases: say so, then report the takeover
        print("STANDBY", flush=True)

        async def takeover() -> None:
            await claimed.wait()
            print(f"CLAIMED {len(conns)} {time.monotonic():.3f}", flush=True)

        tasks.append(asyncio.create_task(takeover()))
    else:
        await claimed.wait()

    async def monitor() -> None:  # progress on stderr (the log), every 2 s
        while True:
            await asyncio.sleep(2)
            online = sum(c.online for c in conns)
            rx = sum(c.stats.get("rx_lines", 0) for c in conns)
            hb = sum(c.stats.get("heartbeats", 0) for c in conns)
            client = server._client
            out_q = len(getattr(client, "_out_packet", ())) if client is not None else -1
            print(f"{time.monotonic() - t0:7.1f}s online {online} read {stats.count} "
                  f"rx_lines {rx} heartbeats {hb} inbox {len(server._inbox)} "
                  f"paho_out_queue {out_q} {dict(server.stats)}", file=sys.stderr, flush=True)

    tasks.append(asyncio.create_task(monitor()))
    if args.gc_freeze:
        gc.freeze()
    print(f"READY {time.monotonic() - t0:.2f} {started:.2f}", flush=True)
    loop = asyncio.get_running_loop()
    mark_cpu, mark_t, mark_count = cpu_s(), time.monotonic(), 0
    all_count = 0
    while True:
        cmd = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if cmd == "mark":
            all_count += stats.count
            stats.lat.clear()
            stats.count = 0
            pauses.pauses.clear()
            mark_cpu, mark_t, mark_count = cpu_s(), time.monotonic(), 0
            print("MARKED", flush=True)
        elif cmd in ("stop", ""):
            break
    end_cpu, end_t = cpu_s(), time.monotonic()
    seen = sum(len(s) for s in stats.seen.values())
    doc = {
        "n": args.n,
        "received_window": stats.count - mark_count,
        "received_total_unique": seen,
        "received_before_mark": all_count,
        "duplicates": stats.dups,
        "reordered": stats.reordered,
        "latency_ms": stats.lat,
        "cpu_s_window": end_cpu - mark_cpu,
        "wall_s_window": end_t - mark_t,
        "cpu_s_total": end_cpu,
        "maxrss_kib": peak_rss_kib(),  # VmHWM: ru_maxrss would be the runner's
        "server_stats": dict(server.stats),
        "per_conn_seen": {c: len(s) for c, s in stats.seen.items()},
        "gc_pauses_ms": pauses.pauses,
    }
    await asyncio.to_thread(Path(args.out).write_text, json.dumps(doc))
    for t in tasks:
        t.cancel()
    await server.close()
    if read_log is not None:
        read_log.close()
    print("STOPPED", flush=True)


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--root", default="pblink")
    p.add_argument("--timeout-ms", type=int, default=1500)
    p.add_argument("--state", default=None, help="state file (fsync): the demo server's way")
    p.add_argument("--state-db", default=None, help="PostgreSQL state store (server_apps/store_pg)")
    p.add_argument("--lease-poll-ms", type=int, default=250)
    p.add_argument("--client-id", default=None)
    p.add_argument("--read-log", default=None, metavar="FILE",
                   help="write every line read here as '<conn_id> <line>', one write() per "
                   "line: it survives SIGKILL (benchmarks.failover's exactly-once check)")
    p.add_argument("--standby", action="store_true",
                   help="with --state-db: print STANDBY, then CLAIMED N T once every lease is held")
    p.add_argument("--gc-freeze", action="store_true",
                   help="gc.freeze() once every conn_id is claimed: an experiment knob")
    p.add_argument("--profile", default=None, help="cProfile the run into this file")
    p.add_argument("--switch-interval", type=float, default=None,
                   help="sys.setswitchinterval (seconds) for the GIL: an experiment knob")
    args = p.parse_args()
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    logging.basicConfig(level=logging.WARNING)
    from benchmarks.common import raise_nofile

    raise_nofile()
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        try:
            asyncio.run(main(args))
        finally:
            prof.disable()
            prof.dump_stats(args.profile)
    else:
        asyncio.run(main(args))


if __name__ == "__main__":
    cli()
