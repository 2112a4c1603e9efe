"""Smoke tests of `pblink bench` (benchmarks/): each family runs in a tiny
configuration (``--tiny``: a few lines, one run) and writes well-formed JSON
rows. Nothing here looks at the figures themselves: speed is measured by
`pblink bench`, never asserted (docs/PERFORMANCE.md)."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
from conftest import ROOT

if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import EXTRA_FAMILIES, FAMILIES
from benchmarks.common import Row, check_target, pct, render_table
from benchmarks.runner import main as bench_main

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
    assert code == 0
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
    r = Row("x", "latency", "ms", [4.0, 1.0, 3.0, 2.0], target="< 3")
    assert (r.median, r.min, r.max, r.runs) == (2.5, 1.0, 4.0, 4)
    assert r.q1 is not None and r.q3 is not None and r.q1 <= r.median <= r.q3
    assert r.met is True
    assert Row("x", "lost", "lines", [1], target="== 0").met is False
    assert Row("x", "empty", "ms", []).median is None
    assert check_target(5, "no number") is None
    assert pct([1, 2, 3, 4], 0.5) == 2 and math.isnan(pct([], 0.5))
    assert "latency" in render_table([r])


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
