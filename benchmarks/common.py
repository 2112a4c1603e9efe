"""What the benchmark families share: result rows, statistics, brokers, the machine.

A benchmark family measures each figure once per run and repeats the run
(``Context.repeats``); a :class:`Row` keeps every run's value with its median
and spread (min, max, and the inter-quartile range when there are 4 runs or
more). Nothing here asserts anything about speed: targets are carried as text
and compared in the report only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from virtual_bench.brokers import amqtt_process, mosquitto_process
from virtual_bench.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

log = logging.getLogger("pblink.bench")


# -- rows -------------------------------------------------------------------------------


@dataclass
class Row:
    """One figure: its values over the repeated runs, and how they spread."""

    family: str
    name: str
    unit: str
    values: list[float]
    params: dict[str, Any] = field(default_factory=dict)
    target: str = ""  # e.g. "< 50 ms": compared with every run in the report
    # Every run against the target (judge_runs: the worst run decides), when the
    # target is numeric; None when there is no numeric target or no run.
    met: bool | None = None
    note: str = ""
    median: float | None = None
    min: float | None = None
    max: float | None = None
    q1: float | None = None
    q3: float | None = None
    runs: int = 0
    # What plots need beyond the statistics (benchmarks/plots.py): every single
    # observation behind the figure (e.g. each probe's latency in ms, all runs
    # pooled), and series over time as {axis name: values}, the first key the x axis.
    samples: list[float] = field(default_factory=list)
    series: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        vals = [float(v) for v in self.values if v is not None and not math.isnan(float(v))]
        self.values = [round(v, 6) for v in vals]
        self.runs = len(vals)
        if vals:
            self.median = round(statistics.median(vals), 6)
            self.min = round(min(vals), 6)
            self.max = round(max(vals), 6)
            if len(vals) >= 4:
                q = statistics.quantiles(vals, n=4)
                self.q1, self.q3 = round(q[0], 6), round(q[2], 6)
        if self.met is None and self.target:
            self.met = judge_runs(self.values, self.target)

    def runs_missed(self) -> int:
        """How many runs miss the target (0 without a numeric target)."""
        return sum(check_target(v, self.target) is False for v in self.values)

    def verdict(self) -> str:
        """The target column: ``"< 250 (met)"``; ``"== 0 (MISSED in 1 of 3 runs)"``
        when the worst run misses it; the target alone when it is not judged."""
        if self.met is None:
            return self.target
        if self.met:
            return f"{self.target} (met{' in every run' if self.runs > 1 else ''})"
        missed = self.runs_missed()
        if self.runs > 1 and missed:
            return f"{self.target} (MISSED in {missed} of {self.runs} runs)"
        return f"{self.target} (MISSED)"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_target(target: str) -> tuple[str, float] | None:
    """``"< 50 ms"`` -> ("<", 50.0); None when the target is not a comparison with a number."""
    m = re.match(r"^\s*(<=|>=|<|>|==)\s*([-+0-9.eE]+)", target)
    if not m:
        return None
    try:
        return m.group(1), float(m.group(2))
    except ValueError:
        return None


def check_target(value: float, target: str) -> bool | None:
    """``"< 50"``, ``">= 100"``, ``"== 0"``: the value against it; None if not numeric."""
    parsed = parse_target(target)
    if parsed is None:
        return None
    op, bound = parsed
    return {"<": value < bound, "<=": value <= bound, ">": value > bound,
            ">=": value >= bound, "==": value == bound}[op]


def judge_runs(values: Sequence[float], target: str) -> bool | None:
    """Every run's value against ``target``: True only when each one meets it
    (the worst run decides: the largest value for ``<``/``<=``, the smallest for
    ``>``/``>=``, any other value for ``== 0``); None when the target is not
    numeric or there are no values."""
    verdicts = [check_target(v, target) for v in values]
    if not verdicts or verdicts[0] is None:
        return None
    return all(verdicts)


def missed_rows(rows: Iterable[Row]) -> list[Row]:
    """The rows whose goal was missed (``met`` is False), in order."""
    return [r for r in rows if r.met is False]


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[k]


@dataclass
class Context:
    """What every family gets: the run's size, a scratch folder, a progress printer."""

    quick: bool = False
    repeats: int = 3
    workdir: Path = field(default_factory=lambda: Path("/tmp"))
    verbose: bool = False
    mosquitto: str | None = None  # path of the mosquitto binary, None when missing
    options: dict[str, Any] = field(default_factory=dict)  # family-specific (--scale-n, ...)

    @property
    def tiny(self) -> bool:
        """The smoke-test size (tests/test_bench_suite.py): figures are meaningless."""
        return bool(self.options.get("tiny"))

    def progress(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def subdir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def find_mosquitto() -> str | None:
    """The mosquitto binary: on PATH, else /usr/sbin or /usr/bin (outside a root
    PATH); only a regular file this user may execute, never one that merely exists."""
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/bin/mosquitto"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


# -- interrupts -------------------------------------------------------------------------


def _interrupt(signum: int, frame: Any) -> None:
    # the tasks cancelled on the way out are not errors worth a traceback
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (timeout, CI, kill) ends the block as Ctrl-C does: KeyboardInterrupt,
    so the finally blocks and context managers on the way out stop every process
    the bench started (children started in sessions of their own, which no
    signal to the bench reaches). The caller catches KeyboardInterrupt and exits
    130 with one "interrupted" line (``pblink bench``, ``benchmarks.failover``)."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- brokers ----------------------------------------------------------------------------


# The bench's Mosquitto: this project's broker/mosquitto/mosquitto.conf limits
# (queues sized for a server app that holds every device's traffic), on
# loopback, anonymous, no persistence (a throwaway benchmark broker); the
# listener, set_tcp_nodelay and allow_anonymous lines come from
# virtual_bench.brokers.mosquitto_process.
MOSQUITTO_BENCH_CONF = (
    "max_queued_messages 100000",
    "max_queued_bytes 134217728",
    "max_inflight_messages 1000",
    "max_connections -1",
    "persistence false",
    "log_dest stdout",
    "log_type error",
    "log_type warning",
)


class Broker:
    """A broker child process (Mosquitto or the embedded amqtt) on a free loopback port,
    for a benchmark's event loop: virtual_bench.brokers.BrokerProcess in its own
    session with the open-file limit raised, its log ``workdir/<kind>-<port>.log``.
    ``start`` waits up to 20 s for the port (RuntimeError when it exits first)."""

    def __init__(self, kind: str, workdir: Path, mosquitto: str | None = None) -> None:
        self.kind = kind
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        options: dict[str, Any] = {"log_name": f"{kind}-{port}.log", "new_session": True,
                                   "preexec": raise_nofile, "start_timeout": 20.0}
        if kind == "mosquitto":
            if not mosquitto:
                raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
            self.process = mosquitto_process(workdir, mosquitto, port, MOSQUITTO_BENCH_CONF,
                                             conf_name="mosquitto-{port}.conf", **options)
        else:
            self.process = amqtt_process(workdir, port, **options)

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def address(self) -> tuple[str, int]:
        return self.process.address

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.process.proc

    async def start(self) -> None:
        await self.process.start_async()

    async def stop(self) -> None:
        await self.process.stop_async()

    async def restart(self) -> None:
        await self.process.restart_async()

    def cpu_seconds(self) -> float | None:
        """User + system CPU of the broker process so far (from /proc)."""
        proc = self.process.proc
        return None if proc is None else proc_cpu_seconds(proc.pid)


@contextlib.asynccontextmanager
async def broker(kind: str, workdir: Path, mosquitto: str | None = None) -> AsyncIterator[Broker]:
    b = Broker(kind, workdir, mosquitto)
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


# -- processes and the machine -----------------------------------------------------------


def raise_nofile(limit: int = 65536) -> None:
    """Raise this process's open-file limit (soft up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def peak_rss_kib() -> int:
    """This process's peak resident set size in KiB: ``VmHWM`` of /proc/self/status.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries that over fork and
    execve, so a child started by the bench runner (itself ~75 MiB with its
    imports) reports the runner's peak, not its own. ru_maxrss only where
    /proc is missing."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def proc_cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def machine_info() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError):
        m = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        mem_kib = int(m.group(1)) if m else 0
    mpy = "?"
    with contextlib.suppress(Exception):
        from virtual_bench.procs import micropython_binary

        mp = micropython_binary()
        mpy = subprocess.run(
            [mp, "-c", "import sys; print(sys.implementation.version, sys.version)"],
            capture_output=True, text=True, timeout=10).stdout.strip()
    mosq = "not installed"
    path = find_mosquitto()
    if path:
        with contextlib.suppress(Exception):
            out = subprocess.run([path, "-h"], capture_output=True, text=True, timeout=10)
            mosq = (out.stdout + out.stderr).splitlines()[0].strip()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "micropython": mpy,
        "mosquitto": mosq,
        "kernel": platform.release(),
        "loadavg_start": list(os.getloadavg()),
    }


def run_loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("ms", "s") and abs(value) < 10:
        return f"{value:.2f}" if unit == "s" else f"{value:.1f}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}".rstrip("0").rstrip(".") if unit not in ("ms",) else f"{value:.1f}"
    return f"{value:.3g}"


def param_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def render_table(rows: Iterable[Row]) -> str:
    """One plain-text table: family, figure, params, median, min..max (IQR), runs, unit,
    target with its verdict (Row.verdict). Columns are as wide as their widest cell:
    no text is cut; a row's note goes on its own line below it."""
    rows = list(rows)
    cells = []
    for r in rows:
        spread = f"{fmt(r.min, r.unit)}..{fmt(r.max, r.unit)}" if r.runs else "-"
        if r.q1 is not None:
            spread += f" iqr {fmt(r.q1, r.unit)}-{fmt(r.q3, r.unit)}"
        cells.append((r.family, r.name, param_text(r.params), fmt(r.median, r.unit), spread,
                      str(r.runs), r.unit, r.verdict()))
    titles = ("family", "figure", "params", "median", "spread (min..max)", "n", "unit",
              "target")
    widths = [max([len(t), *(len(c[i]) for c in cells)]) for i, t in enumerate(titles)]
    right = {3, 4, 5}  # numbers are right-aligned

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if i in right else v.ljust(w)
                 for i, (v, w) in enumerate(zip(values, widths, strict=True))]
        # two spaces between columns: one-digit counts (n) never read as part of the unit
        return "  ".join(parts[:-1]) + "  " + values[-1]  # the last column unpadded

    head = line(titles)
    out = [head, "-" * len(head)]
    for r, c in zip(rows, cells, strict=True):
        out.append(line(c).rstrip())
        if r.note:
            out.append(f"{'':<{widths[0]}}    note: {r.note}")
    return "\n".join(out)
