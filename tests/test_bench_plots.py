"""Plots of `pblink bench` results (benchmarks/plots.py): from a small hand-made
result (tests/data/bench_small.json) and, in tests/test_bench_suite.py, from
real tiny runs of each family (the runner draws them beside its JSON)."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import ROOT

if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks.plots import PLOTS, NothingToPlot, plot_file, write_plots

FIXTURE = ROOT / "tests" / "data" / "bench_small.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    assert width >= 400 and height >= 200, (path, width, height)


def test_every_plot_from_the_fixture_png(tmp_path: Path) -> None:
    files = plot_file(FIXTURE, tmp_path)
    assert sorted(f.name for f in files) == sorted(f"bench_small-{n}.png" for n in PLOTS)
    for f in files:
        assert_png(f)


def test_every_plot_from_the_fixture_svg(tmp_path: Path) -> None:
    files = plot_file(FIXTURE, tmp_path, "svg")
    assert len(files) == len(PLOTS)
    for f in files:
        root = ET.parse(f).getroot()
        assert root.tag.endswith("svg"), f
    text = {f.name.split("-")[-1]: f.read_text() for f in files}
    assert "original 100 ms poll, qos" in text["latency.svg"]
    assert "this design, no qos" in text["latency.svg"]
    assert "n = 8 probes per curve" in text["latency.svg"]
    assert "up, noqos, 100 kHz" in text["throughput.svg"]
    assert "latency p99, amqtt" in text["scale.svg"]
    assert "live heap above import cost, B" in text["esp_heap.svg"]
    assert "WiFi restored -&gt; first line delivered" in text["recovery.svg"]


def test_missing_heap_series_gives_a_note(tmp_path: Path) -> None:
    doc = json.loads(FIXTURE.read_text())
    for row in doc["rows"]:
        row["series"] = {}
    files = write_plots(doc, tmp_path, "noseries", "svg")
    heap = tmp_path / "noseries-esp_heap.svg"
    assert heap in files
    assert "no heap series in this result" in heap.read_text()


def test_plots_only_for_families_present(tmp_path: Path) -> None:
    doc = json.loads(FIXTURE.read_text())
    doc["rows"] = [r for r in doc["rows"] if r["family"] == "recovery"]
    doc["families"] = {"recovery": {}}
    files = write_plots(doc, tmp_path, "rec")
    assert [f.name for f in files] == ["rec-recovery.png"]


def test_not_a_result_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a pblink bench result"):
        plot_file(bad)
    with pytest.raises(ValueError, match="format"):
        write_plots({"rows": []}, tmp_path, "x", "gif")


def test_bench_plot_option_redraws_an_existing_result(tmp_path: Path) -> None:
    copy = tmp_path / "old.json"
    copy.write_text(FIXTURE.read_text())
    r = subprocess.run([sys.executable, "-m", "pblink", "bench", "--plot", str(copy),
                        "--plot-format", "svg"], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "old-latency.svg").exists()
    assert "plot written" in r.stdout
    r = subprocess.run([sys.executable, "-m", "pblink", "bench", "--plot",
                        str(tmp_path / "missing.json")], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "missing.json" in r.stderr


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pblink", "bench", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def _one_line_error(r: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr)


GOOD_LATENCY = {"family": "latency", "name": "echo round trip", "params": {"qos": True},
                "samples": [1.0, 2.0], "values": [1.5], "median": 1.5}
BAD_ROWS = [
    ([1, 2], "rows[1] is int, not an object"),
    ([{"family": "latency"}], "rows[1] has no 'name' a string"),
    ([GOOD_LATENCY, {**GOOD_LATENCY, "samples": ["x"]}], "'samples' is not a list of numbers"),
    ([{**GOOD_LATENCY, "median": "fast"}], "'median' is not a number"),
    ([{"family": "esp", "name": "heap", "params": {}, "series": {"t": 3}}], "'series'"),
    # the right shape, but not what the throughput plot needs (no "dir" param)
    ([{"family": "throughput", "name": "lines/s", "params": {"size": 16}, "median": 3.0,
       "min": 2.0, "max": 4.0, "values": [3.0]}], "the throughput plot cannot use its rows"),
]


@pytest.mark.parametrize("rows, message", BAD_ROWS, ids=[m[:30] for _, m in BAD_ROWS])
def test_bad_rows_are_one_line_errors_and_write_no_file(tmp_path: Path, rows: list,
                                                        message: str) -> None:
    """A result whose rows are of the wrong shape: one line naming the file and the row,
    exit 2, and no plot at all (not the plots before the bad one)."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": [GOOD_LATENCY, *rows]}))
    _one_line_error(_bench("--plot", str(bad)), 2, str(bad), message)
    assert [f.name for f in tmp_path.iterdir()] == ["bad.json"]


def test_unwritable_plot_folder_is_a_one_line_error(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "benchmarks.plots", str(FIXTURE), "--out",
                        "/proc/nope"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    _one_line_error(r, 2, "cannot write the plots", "/proc/nope")


def test_nothing_to_plot_says_so_and_fails(tmp_path: Path) -> None:
    soak = tmp_path / "soak.json"
    soak.write_text(json.dumps({"rows": [{"family": "soak", "name": "lines lost",
                                          "params": {}, "values": [0]}],
                                "families": {"soak": {}}}))
    _one_line_error(_bench("--plot", str(soak)), 2, f"no plottable families in {soak}")
    assert [f.name for f in tmp_path.iterdir()] == ["soak.json"]
    with pytest.raises(NothingToPlot):
        write_plots({"rows": []}, tmp_path, "empty")


@pytest.mark.parametrize("extra", [["--only", "latency"], ["--no-plots"], ["--quick"],
                                   ["--repeats", "2"], ["--out", "x.json"], ["--seed", "0"]])
def test_plot_rejects_the_options_of_a_run(tmp_path: Path, extra: list[str]) -> None:
    """--plot runs nothing: an option of a run beside it would be silently ignored."""
    copy = tmp_path / "old.json"
    copy.write_text(FIXTURE.read_text())
    _one_line_error(_bench("--plot", str(copy), *extra), 2, "--plot runs nothing",
                    extra[0])
    assert [f.name for f in tmp_path.iterdir()] == ["old.json"]


def test_results_that_cannot_be_written_at_the_end_keep_the_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """--out is checked before the run; if it still cannot be written at the end (here its
    folder became a file during the run), the table is on stdout, one line on stderr, exit 1."""
    import argparse
    import shutil

    from benchmarks import runner
    from benchmarks.common import Row

    folder = tmp_path / "results"
    parser = argparse.ArgumentParser()
    runner.add_arguments(parser)
    args = parser.parse_args(["--out", str(folder / "r.json"), "--only", "recovery"])
    assert folder.is_dir()  # created by the up-front check, as --help says

    async def families(ctx: object, names: list[str]) -> tuple[list[Row], dict]:
        shutil.rmtree(folder)
        folder.write_text("a file where the folder was")
        return [Row("recovery", "WiFi cut -> server_ok(False)", "s", [0.25, 0.27])], {
            "recovery": {"rows": 1, "elapsed_s": 0.1}}

    monkeypatch.setattr(runner, "run_families", families)
    assert runner.main_args(args, []) == 1
    out, err = capsys.readouterr()
    assert "WiFi cut -> server_ok(False)" in out and "0.26" in out  # the table
    assert err.count("\n") == 1 and f"results not written to {folder / 'r.json'}" in err


def test_plots_say_what_they_draw() -> None:
    """Legibility that can be checked: the ESP heap's axis from 0, its series named as sampled
    once a second, the row's peak and a target drawn; latency's legend outside the panels;
    throughput's up and down told apart by marker; recovery's median beside its bar."""
    import matplotlib.pyplot as plt

    from benchmarks.plots import plot_esp_heap, plot_latency, plot_recovery, plot_throughput

    doc = json.loads(FIXTURE.read_text())
    for row in doc["rows"]:
        if row.get("series"):
            row["target"] = "< 30000"
    fig = plot_esp_heap(doc)
    assert fig is not None
    ax = fig.axes[0]
    assert ax.get_ylim()[0] == 0
    labels = ax.get_legend_handles_labels()[1]
    assert any("sampled once a second" in label for label in labels), labels
    assert any("median of" in label for label in labels), labels
    assert "target < 30000" in labels
    assert not any(": live heap" in label for label in labels)  # no row name run into it
    plt.close(fig)

    fig = plot_latency(doc)
    assert fig is not None and fig.legends and not any(a.get_legend() for a in fig.axes)
    plt.close(fig)

    fig = plot_throughput(doc)
    assert fig is not None
    handles, labels = fig.axes[0].get_legend_handles_labels()  # errorbar containers
    markers = {label.split(",")[0]: h.lines[0].get_marker()
               for h, label in zip(handles, labels, strict=True)}
    assert markers.get("up") and markers.get("down") and markers["up"] != markers["down"]
    plt.close(fig)

    fig = plot_recovery(doc)
    assert fig is not None
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts and all(t.startswith("median ") for t in texts)
    plt.close(fig)
