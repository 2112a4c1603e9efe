"""The fault table (virtual_bench/faults.py) and everything that reads it.

Each consumer derives from the table: the demo's keys, its injection and
summary, the --chaos rounds the soak runs, the recovery benchmark's kinds, and
DeviceDouble.inject. Adding a kind is one row and one injector; these tests
fail when a consumer keeps its own list instead.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import random
import time
from typing import Any

import pytest

from virtual_bench.demo import Demo, ExternalBroker, Fault, _fault_line
from virtual_bench.faults import FAULTS, KEYS, fault_kind


def test_every_row_is_complete_and_its_names_are_unique() -> None:
    assert FAULTS, "the table is empty"
    labels = [row.label for row in FAULTS.values()]
    keys = [row.key for row in FAULTS.values()]
    assert len(set(labels)) == len(labels), labels
    assert len(set(keys)) == len(keys), keys
    for kind, row in FAULTS.items():
        assert row.kind == kind
        assert inspect.iscoroutinefunction(row.inject), kind
        assert row.double is None or inspect.iscoroutinefunction(row.double), kind
        assert row.scope in ("device", "lab"), kind
        assert len(row.key) == 1 and not row.key.isdigit() and row.key not in "qQ", kind
        if row.duration_s is not None:
            low, high = row.duration_s
            assert 0 < low <= high, kind
            drawn = row.draw(random.Random(1))
            assert drawn is not None and low <= drawn <= high, kind
        else:
            assert row.draw(random.Random(1)) is None
    assert KEYS == {row.key: row for row in FAULTS.values()}


def test_unknown_kind_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unknown fault kind .flood.*wifi"):
        fault_kind("flood")


def _demo(**kw: Any) -> Demo:
    return Demo(devices=2, view="quiet", out=io.StringIO(), seed=3, **kw)


def test_demo_keys_come_from_the_table() -> None:
    demo = _demo()
    injected: list[tuple[str, str]] = []
    demo.inject = lambda kind, conn_id: injected.append((kind, conn_id))  # type: ignore[method-assign]
    demo._key("2")  # choose dev2
    for row in FAULTS.values():
        demo._key(row.key)
    assert injected == [(kind, "2") for kind in FAULTS]


class _FakeBench:
    def __init__(self, conn_id: str, calls: list[str]) -> None:
        self.conn_id = conn_id
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any, **kw: Any) -> None:
            self._calls.append(f"bench{self.conn_id}.{name}")
        return call


class _FakeLab:
    def __init__(self, calls: list[str]) -> None:
        self.benches = [_FakeBench("1", calls), _FakeBench("2", calls)]
        self.broker = object()  # the demo's own broker
        self._calls = calls

    async def drop_broker(self, seconds: float, wait: bool = False) -> None:
        assert wait, "a lab fault's injector returns when it is over"
        self._calls.append("lab.drop_broker")

    async def restart_server_app(self) -> None:
        self._calls.append("lab.restart_server_app")


async def test_demo_injects_and_records_every_kind_through_its_row() -> None:
    demo = _demo()
    calls: list[str] = []
    demo.lab = _FakeLab(calls)  # type: ignore[assignment]
    for kind in FAULTS:
        before = len(calls)
        await demo._inject(kind, "2")
        assert len(calls) == before + 1, (kind, calls)  # the row's injector ran, once
    faults = demo.tracker.faults
    assert [f.kind for f in faults] == list(FAULTS)
    for f in faults:
        row = FAULTS[f.kind]
        assert f.device == ("all" if row.scope == "lab" else "2")
        assert f.end >= f.t
    assert not any("failed" in line for line in demo.tracker.events), demo.tracker.events


async def test_own_broker_kinds_are_refused_with_an_external_broker() -> None:
    demo = _demo(broker=ExternalBroker("127.0.0.1", 1883))
    calls: list[str] = []
    lab = _FakeLab(calls)
    lab.broker = None  # type: ignore[assignment]
    demo.lab = lab  # type: ignore[assignment]
    own = [k for k, row in FAULTS.items() if row.needs_own_broker]
    assert own, "the table has no kind that needs the lab's own broker"
    for kind in own:
        await demo._inject(kind, "1")
    assert calls == [] and demo.tracker.faults == []
    assert set(demo.chaos_kinds()) == set(FAULTS) - set(own)


async def test_chaos_and_so_the_soak_cycles_every_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.soak import SoakDemo

    demo = SoakDemo(devices=2, chaos=True, duration=None, view="quiet", out=io.StringIO(), seed=7)
    assert demo.chaos_kinds() == list(FAULTS)
    seen: list[str] = []

    class Done(Exception):
        pass

    async def record(kind: str, conn_id: str) -> None:
        seen.append(kind)
        if len(seen) == 2 * len(FAULTS):
            raise Done

    async def no_sleep(seconds: float) -> None:
        return None

    demo._inject = record  # type: ignore[method-assign]
    monkeypatch.setattr(asyncio, "sleep", no_sleep)
    with pytest.raises(Done):
        await demo._chaos(time.monotonic())
    n = len(FAULTS)
    assert sorted(seen[:n]) == sorted(FAULTS) and sorted(seen[n:]) == sorted(FAULTS)


def test_summary_names_each_kind_by_its_label_in_table_order() -> None:
    demo = _demo()
    now = time.monotonic()
    for kind in reversed(FAULTS):
        demo.tracker.fault(Fault(kind, "1", now, now))
    line = _fault_line(demo.tracker)
    positions = [line.index(f"{row.label} 0/1") for row in FAULTS.values()]
    assert positions == sorted(positions), line


def test_recovery_and_soak_name_kinds_of_the_table() -> None:
    from benchmarks import recovery

    assert recovery.MEASURED and set(recovery.MEASURED) <= set(FAULTS)
    assert any(row.resets_esp for row in FAULTS.values())  # what the soak counts boots by


class _FakeDouble:
    timeout_ms = 10

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def go_offline(self, silent: bool = False) -> None:
        self.calls.append("offline silent" if silent else "offline")

    async def go_online(self) -> None:
        self.calls.append("online")


async def test_double_injectors_take_the_device_offline_and_back() -> None:
    doubles = {k: row for k, row in FAULTS.items() if row.double is not None}
    assert doubles, "no kind applies to a DeviceDouble"
    for kind, row in doubles.items():
        assert row.scope == "device", kind
        dev = _FakeDouble()
        assert row.double is not None
        await row.double(dev, 0.0)  # type: ignore[arg-type]
        assert dev.calls[0].startswith("offline") and dev.calls[-1] == "online", (kind, dev.calls)


async def test_device_double_refuses_kinds_it_has_no_part_for() -> None:
    from virtual_bench.device_double import DeviceDouble

    dev = DeviceDouble("1")
    for kind, row in FAULTS.items():
        if row.double is None:
            with pytest.raises(ValueError, match=f"no {row.label}"):
                await dev.inject(kind)
    with pytest.raises(ValueError, match="unknown fault kind"):
        await dev.inject("flood")


def test_bench_md_lists_every_kind_as_in_the_table() -> None:
    from conftest import ROOT

    text = (ROOT / "docs" / "BENCH.md").read_text()
    for row in FAULTS.values():
        assert f"| `{row.kind}` | {row.label} | `{row.key}` |" in text, row.kind
