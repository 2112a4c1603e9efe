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

from benchmarks.plots import PLOTS, plot_file, write_plots

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
    assert "original 100 ms poll, qos (n=8)" in text["latency.svg"]
    assert "this design, no qos (n=8)" in text["latency.svg"]
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
