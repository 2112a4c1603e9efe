"""Failover of the PostgreSQL state store at scale: two server processes, one killed.

``python -m benchmarks.failover [--n 2000] [--window 20] [--kill-at 8]``

A Mosquitto (benchmarks/common.py settings), a throw-away PostgreSQL
(virtual_bench/postgres.py), two server processes (benchmarks/scale_server.py
with ``--state-db``): A claims ``d0`` .. ``d<N-1>``, then B asks for the same
conn_ids and waits for their leases. The lite generator (benchmarks/
lite_load.py) writes one qos line per second per device (wait=True) for
``--window`` seconds; ``--kill-at`` seconds in, A gets SIGKILL. Prints one
line of JSON: the takeover time (the kill to B holding every lease), what the
generator wrote and had acknowledged, B's reads (its duplicates and
reorderings within its own reads: lines A's application read after its last
commit come again, PROTOCOL.md 4.5) and B's latency percentiles. A's reads
die with it; tests/test_server_pg.py checks exactly-once across both
processes at small N.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Broker, pct
from benchmarks.scale import Child
from virtual_bench.postgres import TempPostgres


async def run(args: argparse.Namespace, work: Path, dsn: str) -> dict[str, object]:
    broker = Broker("mosquitto", work, "mosquitto")
    await broker.start()
    procs: list[Child] = []
    try:
        common = [sys.executable, "-m", "benchmarks.scale_server", "--port",
                  str(broker.port), "--n", str(args.n), "--state-db", dsn,
                  "--timeout-ms", str(args.timeout_ms)]
        a = Child("A", [*common, "--out", str(work / "a.json"), "--client-id", "scale-a"],
                  work / "a.log")
        await a.start()
        procs.append(a)
        await a.expect("READY", 120)
        b = Child("B", [*common, "--out", str(work / "b.json"), "--client-id", "scale-b",
                        "--standby"], work / "b.log")
        await b.start()
        procs.append(b)
        await b.expect("STANDBY", 60)
        gen = Child("gen", [sys.executable, "-m", "benchmarks.lite_load", "--port",
                            str(broker.port), "--count", str(args.n), "--ready-s", "60",
                            "--timeout-ms", str(args.timeout_ms), "--tick-ms",
                            str(min(500, args.timeout_ms // 6)), "--drain", "30"],
                    work / "gen.log")
        await gen.start()
        procs.append(gen)
        ready = await gen.expect("READY", 120)
        b.send("mark")
        await b.expect("MARKED", 30)
        t0 = time.monotonic() + 1.0
        gen.send(f"go {t0} {args.window}")
        await asyncio.sleep(t0 + args.kill_at - time.monotonic())
        assert a.proc is not None
        a.proc.send_signal(signal.SIGKILL)
        t_kill = time.monotonic()
        claimed = float((await b.expect("CLAIMED", 120)).split()[1])
        result = json.loads(await gen.expect("RESULT", args.window + 90))
        b.send("stop")
        await b.expect("STOPPED", 60)
        stats = json.loads(await asyncio.to_thread((work / "b.json").read_text))
    finally:
        for p in procs:
            await p.stop()
        await broker.stop()
    lat = stats["latency_ms"]
    return {
        "n": args.n,
        "timeout_ms": args.timeout_ms,
        "generator_ready": ready,
        "takeover_s (kill to every lease held by B)": round(claimed - t_kill, 3),
        "written_and_acknowledged": result["written"],
        "unacked_after_drain": result["unacked_after_drain"],
        "blocked_writes": result["blocked_writes"],
        "write_lag_max_ms": round(result["lag_max_ms"]),
        "b_read_lines": stats["received_window"],
        "b_duplicates (A's read tail, read again)": stats["duplicates"],
        "b_reordered": stats["reordered"],
        "b_latency_p50_ms": round(pct(lat, 0.5), 1) if lat else None,
        "b_latency_p99_ms": round(pct(lat, 0.99), 1) if lat else None,
        "b_latency_max_ms": round(max(lat), 1) if lat else None,
        "generator_cpu_cores": round(result["cpu_s_window"] / result["wall_s_window"], 3),
        "workdir": str(work),
    }


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--window", type=float, default=20.0)
    p.add_argument("--kill-at", type=float, default=8.0)
    p.add_argument("--timeout-ms", type=int, default=1500)
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pblink-failover-"))
    work.mkdir(parents=True, exist_ok=True)
    with TempPostgres() as pg:
        print(json.dumps(asyncio.run(run(args, work, pg.dsn)), indent=1))


if __name__ == "__main__":
    cli()
