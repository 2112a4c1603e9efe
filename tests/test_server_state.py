"""server_apps.state: the durable state file (PROTOCOL.md 4.5), without a broker."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from server_apps import StateFileError
from server_apps.state import ConnState, ServerState, StateStore


def test_missing_file_is_an_empty_unclean_state(tmp_path: Path) -> None:
    state = StateStore(tmp_path / "none.json").load()
    assert state == ServerState(clean=False, conns={})


def test_round_trip_and_atomic_replace(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"  # the folder is created
    store = StateStore(path)
    rx = {"window": 16, "session": "0123abcd", "expected": 7, "recent": [], "buffer": [[9, "x"]]}
    tx = {"session": "89abcdef", "next_id": 3, "window": 16, "timeout_ms": 300,
          "unacked": [[2, "y"]]}
    state = ServerState(clean=True, conns={
        "1": ConnState(rx=rx, unread=["a|b", "ü"], tx=tx),
        "2": ConnState(rx=None, unread=[]),
    })
    store.write(state.to_bytes())
    assert store.load() == state
    assert not (path.parent / "state.json.tmp").exists()
    doc = json.loads(path.read_text())
    assert doc["format"] == "pblink-server-state" and doc["version"] == 1
    assert "tx" not in doc["conns"]["2"] and "rx" not in doc["conns"]["2"]
    # A second write replaces the whole document.
    store.write(ServerState(clean=False, conns={}).to_bytes())
    assert store.load() == ServerState(clean=False, conns={})
    assert store.writes == 2


def test_no_fsync_mode_writes_too(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.json", fsync=False)
    store.write(ServerState(clean=True).to_bytes())
    assert store.load().clean


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"format": "something-else", "version": 1}',
        b'{"format": "pblink-server-state", "version": 99}',
        b'{"format": "pblink-server-state", "version": 1, "conns": []}',
        b'{"format": "pblink-server-state", "version": 1, "conns": {"1": {"unread": [1]}}}',
        b'{"format": "pblink-server-state", "version": 1, "conns": {"1": {"rx": 5}}}',
    ],
)
def test_unusable_file_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(StateFileError, match=r"bad\.json") as info:
        StateStore(path).load()
    assert "move it away" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_readers_never_see_a_torn_file(tmp_path: Path) -> None:
    """os.replace: a concurrent reader sees the old or the new document, never half of one."""
    path = tmp_path / "s.json"
    store = StateStore(path, fsync=False)
    big = ServerState(conns={str(i): ConnState(unread=["x" * 1000] * 20) for i in range(20)})
    small = ServerState(clean=True)
    store.write(small.to_bytes())
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(len(StateStore(path).load().conns))
            except BaseException as exc:  # pragma: no cover - the failure being tested for
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(100):
            store.write((big if i % 2 else small).to_bytes())
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert set(seen) <= {0, 20}
