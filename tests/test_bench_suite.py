"""Smoke tests of `pblink bench` (benchmarks/): each family runs in a tiny
configuration (``--tiny``: a few lines, one run) and writes well-formed JSON
rows. Nothing here looks at the figures themselves: speed is measured by
`pblink bench`, never asserted (docs/PERFORMANCE.md)."""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import IN_CI, ROOT

if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import EXTRA_FAMILIES, FAMILIES
from benchmarks.common import Context, Row, check_target, judge_runs, pct, render_table
from benchmarks.runner import EXIT_GOAL_MISSED, run_header, summary_line
from benchmarks.runner import main as bench_main
from benchmarks.scale import not_sustained_note, scale_counts, unsustained

PLOT_OF = {"latency": "latency", "throughput": "throughput", "scale": "scale",
           "esp": "esp_heap", "recovery": "recovery"}
ROW_KEYS = {"family", "name", "unit", "values", "params", "target", "met", "note", "median",
            "min", "max", "q1", "q3", "runs", "samples", "series"}


def _run(family: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"{family}.json"
    code = bench_main(["--tiny", "--only", family, "--out", str(out),
                       "--workdir", str(tmp_path / "work"), *extra])
    doc = json.loads(out.read_text())
    assert doc["families"][family].get("error") is None, doc["families"][family]
    # every family ran: 0 when every goal was met in every run, else EXIT_GOAL_MISSED
    missed = [r for r in doc["rows"] if r["met"] is False]
    assert code == (EXIT_GOAL_MISSED if missed else 0), (code, missed)
    plot = PLOT_OF.get(family)
    if plot is not None:  # the runner draws the family's plot beside the JSON
        png = out.parent / f"{out.stem}-{plot}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    return doc


def _check_rows(doc: dict, family: str) -> None:
    assert doc["machine"]["nproc"] >= 1 and doc["machine"]["cpu_model"]
    assert doc["command"].startswith("pblink bench")
    rows = doc["rows"]
    assert rows, "no figures"
    for row in rows:
        assert set(row) == ROW_KEYS, row
        assert row["family"] == family
        assert isinstance(row["name"], str) and row["name"]
        assert isinstance(row["params"], dict)
        assert row["runs"] == len(row["values"])
        if row["runs"]:
            vals = row["values"]
            assert all(isinstance(v, float) and math.isfinite(v) for v in vals), row
            assert row["min"] <= row["median"] <= row["max"]
    assert family in doc["table"]


def test_row_statistics() -> None:
    r = Row("x", "latency", "ms", [4.0, 1.0, 3.0, 2.0], target="< 5")
    assert (r.median, r.min, r.max, r.runs) == (2.5, 1.0, 4.0, 4)
    assert r.q1 is not None and r.q3 is not None and r.q1 <= r.median <= r.q3
    assert r.met is True
    assert Row("x", "lost", "lines", [1], target="== 0").met is False
    assert Row("x", "empty", "ms", []).median is None
    assert check_target(5, "no number") is None
    assert pct([1, 2, 3, 4], 0.5) == 2 and math.isnan(pct([], 0.5))
    assert "latency" in render_table([r])


def test_verdict_judges_the_worst_run() -> None:
    """A goal is met only when every run meets it: the median never hides a run."""
    dup = Row("scale", "lines duplicated", "lines", [0, 0, 7], target="== 0")
    assert dup.median == 0 and dup.met is False
    assert dup.verdict() == "== 0 (MISSED in 1 of 3 runs)"
    p99 = Row("scale", "latency p99", "ms", [100, 200, 900], target="< 250")
    assert p99.median == 200 and p99.met is False
    assert "MISSED in 1 of 3 runs" in render_table([p99]) and "(met" not in render_table([p99])
    low = Row("t", "lines/s", "lines/s", [150, 120, 90], target=">= 100")
    assert low.met is False and low.runs_missed() == 1
    ok = Row("t", "lines/s", "lines/s", [150, 120, 100], target=">= 100")
    assert ok.met is True and ok.verdict() == ">= 100 (met in every run)"
    assert Row("t", "one", "ms", [3], target="< 5").verdict() == "< 5 (met)"
    assert Row("t", "one", "ms", [9], target="< 5").verdict() == "< 5 (MISSED)"
    assert Row("t", "none", "ms", [], target="< 5").met is None
    assert Row("t", "text", "ms", [1], target="as before").verdict() == "as before"
    assert judge_runs([0, 0, 0], "== 0") is True and judge_runs([0, 1], "== 0") is False
    assert judge_runs([], "== 0") is None and judge_runs([1], "fast") is None


def test_summary_line_and_header() -> None:
    met = Row("scale", "lines reordered", "lines", [0, 0], {"N": 10}, target="== 0")
    missed = Row("scale", "latency p99", "ms", [10, 300], {"N": 5000}, target="< 250")
    assert summary_line([met], {}) == "verdict: all 1 goals met in every run"
    line = summary_line([met, missed], {})
    assert line.startswith("verdict: MISSED 1 of 2 goals: scale latency p99 (N=5000)"), line
    assert "FAILED families: esp" in summary_line([met], {"esp": "RuntimeError: x"})
    head = run_header(40, 200.0, ["scale"], quick=False, tiny=False, repeats=1)
    assert "only scale" in head and "1 run per figure" in head and "full" in head
    head = run_header(260, 800.0, list(FAMILIES), quick=True, tiny=False, repeats=2)
    assert "all families" in head and "quick" in head and "up to 2 runs" in head


def test_table_cuts_no_text() -> None:
    name = "doubles that saw the server before the window"
    params = {"broker": "mosquitto", "N": 10000, "timeout_ms": 1500, "gens": 2,
              "generator": "lite"}
    r = Row("scale", name, "fraction", [1.0], params, note="a note")
    table = render_table([r, Row("scale", "x", "ms", [1.0])])
    assert name in table and "gens=2 generator=lite" in table and "note: a note" in table
    lines = table.splitlines()
    assert lines[3].strip() == "note: a note"
    assert lines[2].index("fraction") == lines[4].rindex("ms")  # columns line up
    assert " 1  fraction" in lines[2]  # the run count (n) stands apart from the unit


def test_scale_counts_and_sustained_reasons() -> None:
    assert scale_counts(Context(options={"scale_n": [100]})) == ([100], [100])
    assert scale_counts(Context(options={"scale_n": [500, 100]})) == ([500, 100], [100, 500])
    assert scale_counts(Context(quick=True)) == ([100], [100])
    assert scale_counts(Context()) == ([100, 1000, 5000, 10000], [100, 200, 300, 500])
    run = {"delivered fraction": 1.0, "latency p99": 1067.0, "lines/s written (N offered)": 200}
    assert unsustained(run, 200) == ["latency p99 1,067 ms > 1,000 ms"]
    assert unsustained(dict(run, **{"latency p99": 20.0}), 200) == []
    assert unsustained(dict(run, **{"latency p99": math.nan}), 200) == [
        "latency p99: no line read"]
    note = not_sustained_note(200, {k: [v] for k, v in run.items()}, "")
    assert note == "N=200 was not sustained: run 1: latency p99 1,067 ms > 1,000 ms"
    assert "its run failed (TimeoutError" in not_sustained_note(200, {}, "TimeoutError")


def test_scale_run_that_times_out_silently_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that raises a bare TimeoutError() (no message) is a failed run with a note,
    and the amqtt step-up stops there: before, the empty message read as "no failure" and
    the note looked up figures the run never had (KeyError 'latency p99')."""
    import asyncio

    from benchmarks import scale

    async def times_out(*args: object, **kwargs: object) -> dict[str, float]:
        raise TimeoutError()

    monkeypatch.setattr(scale, "one_run", times_out)
    ctx = Context(options={"scale_n": [200]})
    rows = asyncio.run(scale.run(ctx))
    failed = [r for r in rows if r.name == "run failed" and r.params["broker"] == "amqtt"]
    assert failed and failed[0].note == "TimeoutError" and failed[0].met is False
    top = [r for r in rows if r.name == "highest N sustained"]
    assert len(top) == 1 and "its run failed (TimeoutError)" in top[0].note


def _zero_run(delivered: float = 0.0, written: float = 0.0) -> dict[str, object]:
    from benchmarks import scale

    res: dict[str, object] = {k: 0.0 for k in scale.UNITS}
    res.update({"delivered fraction": delivered, "lines/s written (N offered)": written,
                "latency p99": 10.0 if written else math.nan, "_generators": 1})
    return res


def test_scale_without_mosquitto_is_never_all_goals_met(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Mosquitto: its runs (where the goals are) cannot run, and the verdict says
    so instead of "all goals met" over the amqtt rows (a new user's report)."""
    import asyncio

    from benchmarks import scale

    async def fake(*args: object, **kwargs: object) -> dict[str, object]:
        return _zero_run(1.0, 100.0)

    monkeypatch.setattr(scale, "one_run", fake)
    rows = asyncio.run(scale.run(Context(options={"scale_n": [100]}, mosquitto=None)))
    failed = [r for r in rows if r.name == "run failed"]
    assert len(failed) == 1 and failed[0].met is False
    assert "mosquitto is not installed" in failed[0].note and "N=100" in failed[0].note
    assert summary_line(rows, {}).startswith("verdict: MISSED")


@pytest.mark.parametrize(("only", "mosquitto", "brokers", "fails"), [
    ("mosquitto", "/usr/sbin/mosquitto", {"mosquitto"}, False),
    ("mosquitto", None, set(), True),  # asked for and missing: a failed run, never skipped
    ("amqtt", None, {"amqtt"}, False),
    (None, "/usr/sbin/mosquitto", {"mosquitto", "amqtt"}, False),
])
def test_scale_broker_option_runs_that_broker_only(
        monkeypatch: pytest.MonkeyPatch, only: str | None, mosquitto: str | None,
        brokers: set[str], fails: bool) -> None:
    """``--scale-broker``: a user checking the N = 5,000 goals need not wait for an
    amqtt run at 5,000 that it cannot sustain (a new user's report)."""
    import asyncio

    from benchmarks import scale

    ran: list[str] = []

    async def fake(ctx: object, kind: str, *args: object, **kwargs: object) -> dict[str, object]:
        ran.append(kind)
        return _zero_run(1.0, 100.0)

    monkeypatch.setattr(scale, "one_run", fake)
    ctx = Context(options={"scale_n": [100], "scale_broker": only}, mosquitto=mosquitto,
                  repeats=1)
    rows = asyncio.run(scale.run(ctx))
    assert set(ran) == brokers
    assert any(r.name == "run failed" for r in rows) is fails


def test_scale_broker_is_a_scale_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["--only", "latency", "--scale-broker", "amqtt"]) == 2
    assert "--scale-broker is a scale option" in capsys.readouterr().err


def test_scale_run_that_wrote_nothing_proves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run in which no line was written has 0 duplicated, 0 reordered and 0
    undelivered: on Mosquitto that is a failed run, on the amqtt step-up an N not
    sustained whose "== 0" rows are not judged (they once read "met")."""
    import asyncio

    from benchmarks import scale

    async def fake(*args: object, **kwargs: object) -> dict[str, object]:
        return _zero_run()

    monkeypatch.setattr(scale, "one_run", fake)
    ctx = Context(options={"scale_n": [1000]}, mosquitto="/usr/sbin/mosquitto", repeats=1)
    rows = asyncio.run(scale.run(ctx))
    mosq = [r for r in rows if r.params.get("broker") == "mosquitto"]
    failed = [r for r in mosq if r.name == "run failed"]
    assert len(failed) == 1 and failed[0].met is False and "no line written" in failed[0].note


def test_scale_step_up_that_wrote_nothing_at_a_later_n_is_not_sustained(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On the amqtt step-up, an N after a sustained one where nothing was written
    is that N not sustained: its "== 0" rows are not judged (they once read "met")."""
    import asyncio

    from benchmarks import scale

    async def fake(ctx: object, kind: str, n: int, *args: object,
                   **kwargs: object) -> dict[str, object]:
        return _zero_run(1.0, float(n)) if n == 100 else _zero_run()

    monkeypatch.setattr(scale, "one_run", fake)
    ctx = Context(options={"scale_n": [100, 1000], "scale_broker": "amqtt"}, repeats=1)
    rows = asyncio.run(scale.run(ctx))
    later = [r for r in rows if r.params.get("N") == 1000]
    assert later and not [r for r in later if r.target == "== 0"]
    assert [r.name for r in rows if r.met is False] == []
    top = [r for r in rows if r.name == "highest N sustained"]
    assert top and top[0].values == [100.0]


def test_scale_step_up_that_wrote_nothing_at_its_first_n_is_a_failed_run(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``--only scale --scale-broker amqtt --scale-n 5000``: no device saw the server,
    nothing was written, and the verdict was "no goals judged" with exit 0 (a new
    user's report). Nothing written at the step-up broker's first N is a failed run."""
    from benchmarks import scale

    async def fake(*args: object, **kwargs: object) -> dict[str, object]:
        return _zero_run()

    monkeypatch.setattr(scale, "one_run", fake)
    out = tmp_path / "out.json"
    code = bench_main(["--only", "scale", "--scale-broker", "amqtt", "--scale-n", "5000",
                       "--no-plots", "--out", str(out), "--workdir", str(tmp_path / "w")])
    assert code == EXIT_GOAL_MISSED
    doc = json.loads(out.read_text())
    failed = [r for r in doc["rows"] if r["name"] == "run failed"]
    assert len(failed) == 1 and "no line written" in failed[0]["note"]
    last = capsys.readouterr().out.strip().splitlines()
    verdict = next(x for x in last if x.startswith("verdict:"))
    assert verdict.startswith("verdict: MISSED 1 of 1 goals: scale run failed"), verdict
    assert doc["verdict"] == verdict


@pytest.mark.parametrize("argv", [["--quick"], ["--scale-n", "1000"],
                                  ["--scale-broker", "amqtt", "--scale-n", "100"], ["--tiny"]])
def test_scale_verdict_says_when_the_n_5000_goals_were_not_run(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        argv: list[str]) -> None:
    """A scale run without N = 5,000 on Mosquitto said "all N goals met in every run":
    true of the "== 0" goals it judged, but issue 13's headline goals were never run.
    The verdict line (and the JSON's) names them as not run."""
    from benchmarks import scale

    async def fake(ctx: object, kind: str, n: int, *args: object,
                   **kwargs: object) -> dict[str, object]:
        return _zero_run(1.0, float(n))

    monkeypatch.setattr(scale, "one_run", fake)
    out = tmp_path / "out.json"
    code = bench_main(["--only", "scale", *argv, "--no-plots", "--out", str(out),
                       "--workdir", str(tmp_path / "w")])
    text = capsys.readouterr().out
    verdict = next(x for x in text.splitlines() if x.startswith("verdict:"))
    assert "goals met in every run" in verdict, verdict
    assert verdict.endswith("; scale's N = 5,000 goals not run (they need --scale-n 5000 "
                            "with Mosquitto)"), verdict
    assert json.loads(out.read_text())["verdict"] == verdict
    assert code == 0


def test_scale_verdict_with_the_n_5000_goals_judged_says_nothing_of_them() -> None:
    rows = [Row("scale", name, "ms", [0.0], {"broker": "mosquitto", "N": 5000,
                                             "timeout_ms": 1500}, target=target)
            for name, target in scale_goals().items()]
    line = summary_line(rows, {}, ["scale"])
    assert "not run" not in line and "met in every run" in line
    assert "not run" not in summary_line(rows[:1], {}, ["latency"])


def scale_goals() -> dict[str, str]:
    from benchmarks.scale import GOALS_5000

    return {"lines duplicated": GOALS_5000["lines duplicated"],
            "lines reordered": GOALS_5000["lines reordered"]}


def test_no_goal_judged_does_not_read_as_success() -> None:
    line = summary_line([Row("recovery", "t", "s", [1.0], {})], {}, ["recovery"])
    assert line.startswith("verdict: no goal judged: ") and "met" not in line, line


def test_run_header_counts_the_runs_the_figures_have() -> None:
    """"up to 3 runs per figure" when every row had n = 1 (scale runs N > 1,000 once)."""
    head = run_header(40, 200.0, ["scale"], quick=False, tiny=False, repeats=3, most_runs=1)
    assert "1 run per figure" in head and "up to" not in head
    head = run_header(40, 200.0, ["scale"], quick=False, tiny=False, repeats=3, most_runs=3)
    assert "up to 3 runs per figure" in head


def test_find_mosquitto_wants_an_executable(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    """A mosquitto that merely exists (not executable) is no mosquitto."""
    from benchmarks import common

    plain = tmp_path / "mosquitto"
    plain.write_text("")
    plain.chmod(0o644)
    monkeypatch.setattr(common.shutil, "which", lambda name: str(plain))
    assert common.find_mosquitto() != str(plain)
    plain.chmod(0o755)
    assert common.find_mosquitto() == str(plain)


def test_family_list() -> None:
    assert set(FAMILIES) == {"latency", "throughput", "scale", "esp", "recovery"}
    assert EXTRA_FAMILIES == ("soak",)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["latency", "throughput", "recovery"])
def test_link_families_tiny(family: str, tmp_path: Path) -> None:
    doc = _run(family, tmp_path)
    _check_rows(doc, family)
    if family == "latency":  # every probe's latency, for the CDF plot
        p50 = [r for r in doc["rows"] if r["name"].endswith("p50") and "ratio" not in r["name"]]
        assert p50 and all(len(r["samples"]) >= 1 for r in p50)


@pytest.mark.slow
def test_scale_tiny(tmp_path: Path) -> None:
    doc = _run("scale", tmp_path)
    _check_rows(doc, "scale")
    names = {(r["name"], r["params"].get("broker")) for r in doc["rows"]}
    assert ("delivered fraction", "amqtt") in names
    for r in doc["rows"]:  # every line delivered, none twice, in order, at every N
        if r["name"] == "delivered fraction":
            assert r["median"] == 1, r
        if r["name"] in ("lines duplicated", "lines reordered", "lines not delivered after drain"):
            assert r["median"] == 0, r
    lite = [r for r in doc["rows"] if r["params"].get("generator") == "lite"]
    if shutil.which("mosquitto"):  # the lite generator runs against Mosquitto
        assert {"generator CPU s per 1000 lines", "idle heartbeats up per device per minute",
                "idle heartbeats down per device per minute"} <= {r["name"] for r in lite}


@pytest.mark.slow
def test_esp_tiny(tmp_path: Path) -> None:
    doc = _run("esp", tmp_path)
    _check_rows(doc, "esp")
    names = {r["name"] for r in doc["rows"]}
    assert "frozen .mpy, total" in names
    assert "smallest -X heapsize that passes" in names
    assert "traffic test failed" not in names  # every traffic run completed
    live = next(r for r in doc["rows"] if r["name"] == "unix heap live peak above import cost")
    series = list(live["series"].values())  # the heap over the traffic test, for the plot
    assert len(series) == 2 and len(series[1]) >= 1
    assert "ESP8266 free heap (32-bit frozen)" in names


@pytest.mark.slow
def test_soak_tiny(tmp_path: Path) -> None:
    doc = _run("soak", tmp_path, "--duration", "12")
    _check_rows(doc, "soak")
    names = {r["name"] for r in doc["rows"]}
    assert {"qos lines lost", "qos lines duplicated", "processes that died on their own"} <= names
    from virtual_bench.timeline import read_timeline

    timeline = read_timeline(tmp_path / "soak-soak-timeline.html")  # beside the JSON
    assert timeline["devices"]["1"]["lines"], "the soak's timeline places its lines"


def test_cli_has_bench() -> None:
    from pblink.cli import command_names

    assert "bench" in command_names()


def _children_in(workdir: Path) -> list[str]:
    """Command lines of the processes whose command line names ``workdir``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(workdir) in cmd and "pblink bench" not in cmd and "benchmarks.runner" not in cmd:
            found.append(cmd)
    return found


@pytest.mark.mosquitto
@pytest.mark.parametrize("family", ["latency", "soak"])
def test_sigterm_stops_the_bench_and_everything_it_started(family: str, tmp_path: Path) -> None:
    """SIGTERM (or Ctrl-C) mid-run: exit 130, no figures, nothing left running. The
    soak's own signal handler ends its run early; that must not pass for a soak of
    the duration asked for (it once printed 'all goals met' and exited 0)."""
    import signal
    import subprocess
    import time

    work = tmp_path / "work"
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.runner", "--only", family, "--tiny",
         "--no-plots", "--workdir", str(work), "--out", str(tmp_path / "out.json"),
         *(["--duration", "600"] if family == "soak" else [])],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60

    def started() -> bool:  # the soak's boards do not name the folder: its files do
        return bool(_children_in(work) if family != "soak"
                    else (work / "soak").is_dir() and any((work / "soak").iterdir()))

    while not started() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert started(), "the bench started no broker or board in time"
    if family == "soak":
        time.sleep(8)  # into the run, as when a user gives up on a long soak
    proc.send_signal(signal.SIGTERM)  # what timeout(1) and CI send
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert "pblink bench: error: interrupted" in err
    assert not (tmp_path / "out.json").exists()
    time.sleep(0.5)
    assert _children_in(work) == [], "processes outlived the bench"


# -- the failover bench (benchmarks/failover.py) ------------------------------------------


@pytest.mark.parametrize(("argv", "says"), [
    (["--n", "0"], "--n: 0 is out of range"),  # hung
    (["--n", "-3"], "--n: -3 is out of range"),  # hung
    (["--timeout-ms", "0"], "--timeout-ms: timeout_ms 0 is not an int"),  # a traceback
    (["--kill-at", "30", "--window", "5"], "--kill-at 30 must fall inside --window 5"),
    (["--window", "0"], "--window: 0 is out of range"),  # a takeover figure, 0 lines read
    (["--kill-at", "0.5"], "--kill-at 0.5 must fall inside --window 20"),
    (["--max-takeover-s", "-1"], "--max-takeover-s: -1 is out of range"),
    (["--workdir", "/etc/passwd"], "--workdir: /etc/passwd is a file, not a folder"),
])
def test_failover_refuses_bad_options(argv: list[str], says: str) -> None:
    """Every option is checked before anything starts: exit 2, one line."""
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "benchmarks.failover", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and says in proc.stderr, proc.stderr
    assert proc.stdout == ""


def test_failover_cross_check_sees_both_processes() -> None:
    """A line A read and B read again is seen (B's own reads alone could not see it):
    A's read tail up to RE_READ_MAX lines per device is PROTOCOL.md 4.5's allowance,
    anything else read twice fails, as do a gap and a line out of order."""
    from benchmarks.failover import RE_READ_MAX, cross_check

    acked = {"d0": 6, "d1": 6}
    clean = cross_check(acked, {"d0": [1, 2, 3], "d1": [1, 2]}, {"d0": [4, 5, 6],
                                                                 "d1": [3, 4, 5, 6]})
    assert clean == {"lost": 0, "twice": 0, "reordered": 0, "re_read": 0, "read_a": 5,
                     "read_b": 7}
    tail = cross_check(acked, {"d0": [1, 2, 3]}, {"d0": [3, 4, 5, 6], "d1": list(range(1, 7))})
    assert tail["re_read"] == 1 and tail["twice"] == 0 and tail["lost"] == 0
    again = cross_check(acked, {"d0": [1, 2, 3, 4]}, {"d0": [2, 5, 6], "d1": list(range(1, 7))})
    assert again["twice"] == 1 and again["re_read"] == 0
    long_tail = cross_check({"d0": 6}, {"d0": [1, 2, 3, 4, 5]}, {"d0": [1, 2, 3, 4, 5, 6]})
    assert long_tail["re_read"] == RE_READ_MAX and long_tail["twice"] == 5 - RE_READ_MAX
    lost = cross_check(acked, {"d0": [1, 2]}, {"d0": [4, 5, 6], "d1": [1, 2, 3, 4, 5]})
    assert lost["lost"] == 2  # d0's 3, d1's 6
    assert cross_check({"d0": 6}, {"d0": [1, 3, 2]}, {"d0": [4, 5, 6]})["reordered"] == 1
    # a line written but never acknowledged may be read or not
    assert cross_check({"d0": 2}, {"d0": [1]}, {"d0": [2, 3]})["lost"] == 0


def test_failover_verdict_fails_each_check() -> None:
    from benchmarks.failover import checks, verdict_line

    good = {"takeover_s (kill to every lease held by B)": 0.4, "written_and_acknowledged": 100,
            "n": 10, "window_s": 10.0, "unacked_after_drain": 0, "blocked_writes": 0,
            "acknowledged_lost": 0, "read_twice": 0, "read_out_of_order": 0,
            "re_read_after_takeover (A read tail, read again by B)": 3,
            "a_read_lines": 50, "b_read_lines": 53}
    assert all(ok for _, ok in checks(good, 5.0))
    assert verdict_line(checks(good, 5.0)).startswith("verdict: all 7 checks passed: ")
    # a survivor that holds the leases but answers nobody (a reviewer froze B): its
    # devices' lines stay unacknowledged, their writes blocked, fewer lines written
    for key, bad in [("takeover_s (kill to every lease held by B)", 6.0),
                     ("acknowledged_lost", 1), ("read_twice", 1), ("read_out_of_order", 2),
                     ("a_read_lines", 0), ("unacked_after_drain", 10), ("blocked_writes", 10),
                     ("written_and_acknowledged", 89)]:
        line = verdict_line(checks({**good, key: bad}, 5.0))
        assert line.startswith("verdict: FAILED 1 of 7 checks: "), (key, line)
    line = verdict_line(checks({**good, "written_and_acknowledged": 0}, 5.0))
    assert line.startswith("verdict: FAILED 2 of 7 checks: "), line


def _pg_or_skip() -> None:
    from benchmarks.common import find_mosquitto
    from virtual_bench.postgres import find_bin_dir

    if find_bin_dir() is None or find_mosquitto() is None:
        message = "PostgreSQL server binaries or mosquitto not installed"
        if IN_CI:  # CI installs both: missing is a failure
            pytest.fail(f"CI requires them: {message}", pytrace=False)
        pytest.skip(message)
    pytest.importorskip("psycopg")


def _processes_naming(folder: Path) -> list[str]:
    """Command lines of the processes (not the failover bench itself) naming ``folder``."""
    return [cmd for cmd in _children_in(folder) if "benchmarks.failover" not in cmd]


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder under /tmp the postgres user can enter (TMPDIR of the failover bench:
    its throw-away PostgreSQL's folder, and so the server's command line, is in it)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="pblink-failover-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.mosquitto
def test_failover_real_run_passes_its_checks(shared_tmp: Path) -> None:
    import os
    import subprocess

    _pg_or_skip()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.failover", "--n", "100", "--window", "5",
         "--kill-at", "2.5", "--workdir", str(shared_tmp / "work")], cwd=ROOT,
        capture_output=True, text=True, timeout=240,
        env=dict(os.environ, TMPDIR=str(shared_tmp)))
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("verdict: all 7 checks passed: takeover "), last
    doc = json.loads(proc.stdout[:proc.stdout.rindex("}") + 1])
    assert doc["acknowledged_lost"] == 0 and doc["written_and_acknowledged"] >= 400
    assert doc["a_read_lines"] + doc["b_read_lines"] - doc[
        "re_read_after_takeover (A read tail, read again by B)"] >= doc[
        "written_and_acknowledged"]
    assert _processes_naming(shared_tmp) == []


@pytest.mark.mosquitto
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_failover_signal_stops_everything_it_started(sig: str, shared_tmp: Path) -> None:
    """``timeout -s TERM 12 python -m benchmarks.failover ...`` left a PostgreSQL, a
    mosquitto and the load generator running. SIGTERM and SIGINT (Ctrl-C) now end
    it as they end ``pblink bench``: exit 130, one "interrupted" line, nothing left."""
    import os
    import signal
    import subprocess
    import time

    _pg_or_skip()
    work = shared_tmp / "work"
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.failover", "--n", "100", "--window", "60",
         "--kill-at", "30", "--workdir", str(work)], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=dict(os.environ, TMPDIR=str(shared_tmp)))
    deadline = time.monotonic() + 120
    seen: dict[int, str] = {}

    def started() -> bool:  # postgres, mosquitto, A, B and the generator
        seen.update(_children_of(proc.pid))
        seen.update(_processes_naming_pids(shared_tmp))
        cmds = list(seen.values())
        return (any("lite_load" in c for c in cmds) and any("pblink-pg-" in c for c in cmds)
                and any("mosquitto" in c for c in cmds))

    while not started() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert started(), "the failover bench started no generator in time"
    time.sleep(1.0)
    seen.update(_children_of(proc.pid))
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert err.strip() == "python -m benchmarks.failover: error: interrupted: no figures written"
    assert out == ""
    time.sleep(0.5)
    alive = [cmd for pid, cmd in seen.items() if _cmdline(pid) == cmd]
    assert alive == [], "processes outlived the failover bench"
    assert _processes_naming(shared_tmp) == [], "processes outlived the failover bench"


def _cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace") or None  # a zombie has none


def _children_of(parent: int) -> dict[int, str]:
    """The live child processes of ``parent``: {pid: command line}."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and (cmd := _cmdline(int(entry.name))):
            found[int(entry.name)] = cmd
    return found


def _processes_naming_pids(folder: Path) -> dict[int, str]:
    return {int(e.name): cmd for e in Path("/proc").iterdir() if e.name.isdigit()
            and (cmd := _cmdline(int(e.name))) and str(folder) in cmd
            and "benchmarks.failover" not in cmd}


def test_verdict_names_a_step_up_that_stopped_below_the_n_asked_for() -> None:
    """``--scale-broker amqtt --scale-n 100 --scale-n 5000``: 5,000 not sustained is
    a figure, not a goal, but the verdict says it (a reviewer read exit 0 and
    "all 3 goals met" with nothing about 5,000)."""
    from benchmarks.runner import step_up_short

    stopped = Row("scale", "highest N sustained", "doubles", [100],
                  {"broker": "amqtt", "timeout_ms": 1500, "tried": "100 5000"})
    line = summary_line([stopped], {}, ["scale"])
    assert "amqtt sustained N = 100, not 5,000" in line, line
    none = Row("scale", "highest N sustained", "doubles", [],
               {"broker": "amqtt", "timeout_ms": 1500, "tried": "5000"})
    assert step_up_short(none).startswith("amqtt sustained no N, not 5,000")
    every = Row("scale", "highest N sustained", "doubles", [500],
                {"broker": "amqtt", "timeout_ms": 1500, "tried": "100 200 300 500"})
    assert step_up_short(every) == ""
