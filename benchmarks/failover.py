"""Failover of the PostgreSQL state store at scale: two server processes, one killed.

``python -m benchmarks.failover [--n 2000] [--window 20] [--kill-at 8] [--max-takeover-s 5]``

A Mosquitto (benchmarks/common.py settings), a throw-away PostgreSQL
(virtual_bench/postgres.py), two server processes (benchmarks/scale_server.py
with ``--state-db``): A claims ``d0`` .. ``d<N-1>``, then B asks for the same
conn_ids and waits for their leases. The lite generator (benchmarks/
lite_load.py) writes one qos line per second per device (wait=True) for
``--window`` seconds; ``--kill-at`` seconds in, A gets SIGKILL. Both servers
log every line they read (``--read-log``: one write() per line, so A's log
holds every line A's application read when the kill comes), and the
generator writes how many lines each device had acknowledged.

Prints one JSON object: the takeover time (the kill to B holding every lease),
what the generator wrote and had acknowledged, what A and B read, B's latency
percentiles, and the checks; then the verdict line. The checks, over A's and
B's reads together (per device, A's reads then B's):

- takeover: every lease held by B within ``--max-takeover-s`` of the kill;
- nothing acknowledged lost: every line the generator had acknowledged was
  read by A or by B;
- nothing read twice: no line read twice, except the tail A's application read
  after its last commit, which B reads again (PROTOCOL.md 4.5: at most
  ``RE_READ_MAX`` lines per device with wait=True writers, counted as
  ``re_read_after_takeover``; beyond that, or anywhere else, a line read twice
  fails);
- nothing out of order: each device's lines in order;
- under load: A and B each read lines (the kill fell mid-stream).

Exit status: 0 every check passed; 3 a check failed (the verdict line names
it); 1 the run itself failed (a process, the database or the broker; one
line); 2 bad options; 130 interrupted (Ctrl-C, SIGTERM: every process it
started is stopped, no figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Broker, find_mosquitto, pct, sigterm_interrupts
from benchmarks.scale import MIN_WRITTEN, Child
from pblink.common import LINK_TIMEOUT_MS, SECONDS, Parser, number, output_folder

PROG = "python -m benchmarks.failover"
N_DEVICES = number(int, 1, 20_000)  # as pblink bench --scale-n
EXIT_CHECK_FAILED = 3  # the run was sound, a check failed (pblink bench's EXIT_GOAL_MISSED)
RE_READ_MAX = 2  # per device: A's read tail B may read again (tests/test_server_pg.py's bound)


def read_log(path: Path) -> dict[str, list[int]]:
    """A ``--read-log`` file: each conn_id's sequence numbers, in the order read.
    A line cut short (the process killed inside its write) is skipped."""
    got: dict[str, list[int]] = {}
    if not path.exists():
        return got
    for text in path.read_text().splitlines():
        parts = text.split()
        if len(parts) == 3 and parts[1].isdigit():
            got.setdefault(parts[0], []).append(int(parts[1]))
    return got


def cross_check(acked: dict[str, int], a: dict[str, list[int]],
                b: dict[str, list[int]]) -> dict[str, int]:
    """A's and B's reads against what was acknowledged (device d's lines are 1 ..
    ``acked[d]``; a line read beyond that was written but not acknowledged).

    Per device: the longest tail of A's reads that B's reads begin with is A's
    read tail read again (up to ``RE_READ_MAX`` counted in ``re_read``; more is
    ``twice``); then A's reads followed by the rest of B's are checked: a line
    seen before is ``twice``, a line below an earlier one ``reordered``, and an
    acknowledged line never read ``lost``."""
    out = {"lost": 0, "twice": 0, "reordered": 0, "re_read": 0, "read_a": 0, "read_b": 0}
    for cid in sorted(set(acked) | set(a) | set(b)):
        sa, sb = a.get(cid, []), b.get(cid, [])
        out["read_a"] += len(sa)
        out["read_b"] += len(sb)
        overlap = next((m for m in range(min(len(sa), len(sb)), 0, -1)
                        if sa[-m:] == sb[:m]), 0)
        out["re_read"] += min(overlap, RE_READ_MAX)
        out["twice"] += max(0, overlap - RE_READ_MAX)
        seen: set[int] = set()
        last = 0
        for seq in sa + sb[overlap:]:
            if seq in seen:
                out["twice"] += 1
                continue
            seen.add(seq)
            if seq < last:
                out["reordered"] += 1
            else:
                last = seq
        out["lost"] += sum(1 for seq in range(1, acked.get(cid, 0) + 1) if seq not in seen)
    return out


def checks(res: dict[str, Any], max_takeover_s: float) -> list[tuple[str, bool]]:
    """The verdict's checks: (what was checked, with its figures; passed)."""
    take = res["takeover_s (kill to every lease held by B)"]
    acked = res["written_and_acknowledged"]
    offered = res["n"] * res["window_s"]  # one qos line per device per second
    return [
        (f"takeover {take:.3f} s <= {max_takeover_s:g} s", take <= max_takeover_s),
        # the survivor must serve, not just hold the leases: every write acknowledged
        # after the drain, and the writes not held back waiting for acks
        (f"lines unacknowledged after the drain {res['unacked_after_drain']} == 0, "
         f"writes still blocked {res['blocked_writes']} == 0",
         res["unacked_after_drain"] == 0 and res["blocked_writes"] == 0),
        (f"lines written {acked} >= {MIN_WRITTEN:.0%} of N x window = {offered:,.0f}",
         acked >= MIN_WRITTEN * offered),
        (f"acknowledged lines lost {res['acknowledged_lost']} of {acked} == 0",
         res["acknowledged_lost"] == 0 and acked > 0),
        (f"lines read twice {res['read_twice']} == 0 (besides "
         f"{res['re_read_after_takeover (A read tail, read again by B)']} read by both where "
         f"A's reads end and B's begin, at most {RE_READ_MAX} per device: A's read tail, "
         "PROTOCOL.md 4.5; not checked against A's commits)", res["read_twice"] == 0),
        (f"lines out of order {res['read_out_of_order']} == 0",
         res["read_out_of_order"] == 0),
        (f"A read {res['a_read_lines']} and B {res['b_read_lines']} lines, both > 0",
         res["a_read_lines"] > 0 and res["b_read_lines"] > 0),
    ]


def verdict_line(results: list[tuple[str, bool]]) -> str:
    failed = [text for text, ok in results if not ok]
    if failed:
        return f"verdict: FAILED {len(failed)} of {len(results)} checks: " + "; ".join(failed)
    return f"verdict: all {len(results)} checks passed: " + "; ".join(t for t, _ in results)


async def run(args: argparse.Namespace, work: Path, dsn: str) -> dict[str, Any]:
    mosquitto = find_mosquitto()
    if mosquitto is None:
        raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
    broker = Broker("mosquitto", work, mosquitto)
    await broker.start()
    procs: list[Child] = []
    try:
        common = [sys.executable, "-m", "benchmarks.scale_server", "--port",
                  str(broker.port), "--n", str(args.n), "--state-db", dsn,
                  "--timeout-ms", str(args.timeout_ms)]
        a = Child("A", [*common, "--out", str(work / "a.json"), "--client-id", "scale-a",
                        "--read-log", str(work / "a-read.log")], work / "a.log")
        await a.start()
        procs.append(a)
        await a.expect("READY", 120)
        b = Child("B", [*common, "--out", str(work / "b.json"), "--client-id", "scale-b",
                        "--read-log", str(work / "b-read.log"), "--standby"], work / "b.log")
        await b.start()
        procs.append(b)
        await b.expect("STANDBY", 60)
        gen = Child("gen", [sys.executable, "-m", "benchmarks.lite_load", "--port",
                            str(broker.port), "--count", str(args.n), "--ready-s", "60",
                            "--timeout-ms", str(args.timeout_ms), "--tick-ms",
                            str(min(500, args.timeout_ms // 6)), "--drain", "30",
                            "--acked-out", str(work / "acked.json")],
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
        acked = json.loads(await asyncio.to_thread((work / "acked.json").read_text))
    finally:
        for p in procs:
            await p.stop()
        await broker.stop()
    cross = cross_check(acked, read_log(work / "a-read.log"), read_log(work / "b-read.log"))
    lat = stats["latency_ms"]
    return {
        "n": args.n,
        "timeout_ms": args.timeout_ms,
        "window_s": args.window,
        "kill_at_s": args.kill_at,
        "generator_ready": ready,
        "takeover_s (kill to every lease held by B)": round(claimed - t_kill, 3),
        "written_and_acknowledged": result["written"],
        "unacked_after_drain": result["unacked_after_drain"],
        "blocked_writes": result["blocked_writes"],
        "write_lag_max_ms": round(result["lag_max_ms"]),
        "a_read_lines": cross["read_a"],
        "b_read_lines": cross["read_b"],
        "re_read_after_takeover (A read tail, read again by B)": cross["re_read"],
        "acknowledged_lost": cross["lost"],
        "read_twice": cross["twice"],
        "read_out_of_order": cross["reordered"],
        "b_latency_p50_ms": round(pct(lat, 0.5), 1) if lat else None,
        "b_latency_p99_ms": round(pct(lat, 0.99), 1) if lat else None,
        "b_latency_max_ms": round(max(lat), 1) if lat else None,
        "generator_cpu_cores": round(result["cpu_s_window"] / result["wall_s_window"], 3),
        "workdir": str(work),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = Parser(prog=PROG, description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=N_DEVICES, default=2000, metavar="N",
                   help="devices, 1 to 20,000 (default %(default)s)")
    p.add_argument("--window", type=SECONDS, default=20.0, metavar="S",
                   help="seconds the devices write (default %(default)s)")
    p.add_argument("--kill-at", type=SECONDS, default=8.0, metavar="S",
                   help="seconds into the window A is killed: at least 1 s after its start "
                   "and 1 s before its end (default %(default)s)")
    p.add_argument("--timeout-ms", type=LINK_TIMEOUT_MS, default=1500, metavar="MS",
                   help="the link's timeout_ms (default %(default)s)")
    p.add_argument("--max-takeover-s", type=SECONDS, default=5.0, metavar="S",
                   help="the takeover check's bound: the kill to B holding every lease "
                   "(default %(default)s)")
    p.add_argument("--workdir", type=output_folder, default=None, metavar="DIR",
                   help="keep the logs here (default: a new temporary folder, kept)")
    args = p.parse_args(argv)
    if not (1.0 <= args.kill_at <= args.window - 1.0):
        p.error(f"--kill-at {args.kill_at:g} must fall inside --window {args.window:g}, at "
                "least 1 s after its start and 1 s before its end (each device writes one "
                "line a second: both servers must read some)")
    return args


def _error(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    from virtual_bench.postgres import PostgresMissingError, TempPostgres

    args = parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pblink-failover-"))
    try:
        with sigterm_interrupts():
            work.mkdir(parents=True, exist_ok=True)
            with TempPostgres() as pg:
                res = asyncio.run(run(args, work, pg.dsn))
    except KeyboardInterrupt:
        return _error("interrupted: no figures written", 130)
    except (OSError, RuntimeError, TimeoutError, PostgresMissingError,
            subprocess.SubprocessError, json.JSONDecodeError) as exc:
        return _error(f"run failed: {type(exc).__name__}: {exc} (logs in {work})", 1)
    results = checks(res, args.max_takeover_s)
    res["verdict"] = verdict_line(results)
    print(json.dumps(res, indent=1))
    print(res["verdict"])
    return 0 if all(ok for _, ok in results) else EXIT_CHECK_FAILED


if __name__ == "__main__":
    sys.exit(main())
