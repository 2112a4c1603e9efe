"""server_apps.state: the durable state file (PROTOCOL.md 4.5), without a broker."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from server_apps import StateFileError, StateLockedError
from server_apps.state import (
    ConnState,
    ServerState,
    StateStore,
    check_client_id,
    state_file_path,
)


def _doc(conns: dict[str, object], clean: object = False) -> bytes:
    return json.dumps({"format": "pblink-server-state", "version": 1, "clean": clean,
                       "conns": conns}).encode()


def test_missing_file_is_an_empty_unclean_state(tmp_path: Path) -> None:
    state = StateStore(tmp_path / "none.json").load()
    assert state == ServerState(clean=False, conns={})


def test_round_trip_and_atomic_replace(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"  # the folder is created
    store = StateStore(path)
    rx = {"window": 16, "sessions": [["0123abcd", 7, [[9, "x"]]]]}
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
        # contents this library never writes (issue 9): each would break a contract later
        _doc({"1": {"unread": ["two\nlines"]}}),  # readline() returns one line
        _doc({"1": {"unread": ["trailing\n"]}}),
        _doc({"1": {"unread": ["x" * 1025]}}),  # MAX_LINE
        _doc({"no/slash": {"unread": []}}),  # not a conn_id
        _doc({"1": {"rx": {"window": 16, "sessions": [["NOTHEX00", 1, []]]}}}),
        _doc({"1": {"rx": {"window": 16, "sessions": [["0123abcd", 1, [[99, "far"]]]]}}}),
        _doc({"1": {"tx": {"session": "89abcdef", "next_id": 3, "window": 16,
                           "timeout_ms": 300, "unacked": [[7, "after next_id"]]}}}),
        _doc({"1": {"unread": [], "extra": 1}}),
        _doc({}, clean="yes"),
        # found by a new user's review: these were accepted and silently rewritten
        b'{"format": "pblink-server-state", "version": 1, "conns": {}, "foo": 1}',
        _doc({"1": {"rx": {"window": 16, "sessions": [
            [f"{i:08x}", 1, []] for i in range(5)]}}}),  # more than MAX_SESSIONS
        b'{"format": "pblink-server-state", "version": 1, "conns": {"\xff": {}}}',  # not UTF-8
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


def test_one_process_per_state_file(tmp_path: Path) -> None:
    """The lock (fcntl.flock) refuses a second holder, names the file, the pid and the hint."""
    path = tmp_path / "dir" / "s.json"
    first = StateStore(path)
    first.lock()
    first.lock()  # idempotent
    with pytest.raises(StateLockedError, match=r"s\.json.*in use.*pid \d+.*--client-id") as info:
        StateStore(path).lock(": use --client-id")
    assert "\n" not in str(info.value)
    first.unlock()
    second = StateStore(path)
    second.lock()
    second.unlock()


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    code = (f"from server_apps.state import StateStore\nStateStore({str(path)!r}).lock()\n"
            "print('locked', flush=True)\nimport time\ntime.sleep(60)\n")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
        with pytest.raises(StateLockedError, match=f"pid {proc.pid}"):
            StateStore(path).lock()
    finally:
        proc.kill()  # a crash: no unlock
        proc.wait()
    store = StateStore(path)
    store.lock()
    store.unlock()


def test_save_encodes_only_changed_entries_and_writes_the_same_bytes(tmp_path: Path) -> None:
    """save(state, changed) re-encodes only the changed conn_ids' entries (issue 13), yet
    the file is byte for byte what ServerState.to_bytes() gives, through added and removed
    conn_ids; an entry not named as changed keeps the bytes written for it before."""
    path = tmp_path / "state.json"
    store = StateStore(path, fsync=False)
    conns = {f"d{i}": ConnState(unread=[f"line {i} \u00e9"]) for i in range(5)}
    store.save(ServerState(conns=dict(conns)), set())
    assert path.read_bytes() == ServerState(conns=conns).to_bytes()
    steps: list[tuple[str, ConnState | None]] = [
        ("d1", ConnState(unread=["x", "y"])), ("d9", ConnState()), ("d0", None),
        ("d3", ConnState(unread=[])),
    ]
    for conn_id, entry in steps:
        if entry is None:
            del conns[conn_id]
        else:
            conns[conn_id] = entry
        state = ServerState(clean=conn_id == "d3", conns=dict(conns))
        store.save(state, {conn_id})
        assert path.read_bytes() == state.to_bytes(), conn_id
    conns["d2"] = ConnState(unread=["changed but not named"])
    store.save(ServerState(conns=dict(conns)), set())
    assert json.loads(path.read_text())["conns"]["d2"]["unread"] == ["line 2 \u00e9"]
    assert StateStore(path).load().conns["d1"].unread == ["x", "y"]


# -- the client id: an MQTT client id and the state file's name ------------------------

BAD_CLIENT_IDS = [
    ("", "is empty"),
    ("a/b", "has the character '/' at position 1"),
    ("../../escaped", "has the character '/'"),
    ("..", "contains '..'"),
    ("a\\b", "has the character '\\\\'"),
    ("a\0b", "has the character '\\x00'"),
    ("a\nb", "has the character '\\n'"),
    ("\ud800", "not valid UTF-8"),
    ("é" * 32768, "is 65536 bytes long"),
]


@pytest.mark.parametrize("client_id, message", BAD_CLIENT_IDS, ids=[m for _, m in BAD_CLIENT_IDS])
def test_bad_client_ids_are_refused_with_the_rule(client_id: str, message: str) -> None:
    with pytest.raises(ValueError, match="a client id is 1 to 65535 bytes") as info:
        check_client_id(client_id)
    assert message in str(info.value)


def test_client_ids_mqtt_allows_are_kept(tmp_path: Path) -> None:
    """Longer than the 23 characters a broker must take (Mosquitto takes up to 65535
    bytes), dots, spaces, non-ASCII: all fine, and the state file is in the folder."""
    for client_id in ("pblink.server", "x" * 24, "srv 2", "kühlschrank-1", "a.b"):
        assert check_client_id(client_id) == client_id
        path = state_file_path(tmp_path, client_id)
        assert path.parent == tmp_path and path.name == f"{client_id}.json"
    assert check_client_id("x" * 65535) == "x" * 65535  # an MQTT client id, with no state file
    assert check_client_id(".hidden") == ".hidden"  # a fine MQTT client id


def test_state_file_name_limit_counts_every_file_the_store_makes(tmp_path: Path) -> None:
    """The longest client id with a state file leaves room for the longest file the
    store makes beside it (<id>.json.lock, <id>.json.tmp): lock, write and load work
    at the limit; one byte more is refused before any file is made."""
    from server_apps.state import STATE_CLIENT_ID_MAX_BYTES, STATE_FILE_SUFFIXES

    assert STATE_CLIENT_ID_MAX_BYTES == 245
    assert {".json", ".json.lock", ".json.tmp"} == set(STATE_FILE_SUFFIXES)
    for longest in ("x" * 245, "é" * 122 + "x"):  # 245 bytes, ASCII and two-byte UTF-8
        path = state_file_path(tmp_path, longest)
        assert path.name == longest + ".json"
        store = StateStore(path, fsync=False)
        store.lock()
        try:
            store.save(ServerState(clean=True), ())
            assert store.load().clean is True
        finally:
            store.unlock()
        assert (tmp_path / (longest + ".json.lock")).exists()
    for too_long in ("x" * 246, "é" * 123):  # 246 bytes
        with pytest.raises(ValueError, match=r"too long for a state file name \(246 bytes, "
                                             r"at most 245: the <client-id>\.json\.lock file"):
            state_file_path(tmp_path, too_long)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        name for longest in ("x" * 245, "é" * 122 + "x")
        for name in (longest + ".json", longest + ".json.lock"))


@pytest.mark.parametrize("client_id", [".", ".hidden", ".a.b"])
def test_state_file_of_a_dot_client_id_is_refused(tmp_path: Path, client_id: str) -> None:
    """A client id starting with '.' would hide its state file ('..json' for '.'):
    refused for the state file only (check_client_id takes it: broker, --state-db)."""
    assert check_client_id(client_id) == client_id
    with pytest.raises(ValueError, match=f"client id {client_id!r} starts with '.'.*hidden"):
        state_file_path(tmp_path, client_id)
    assert state_file_path(tmp_path, "a" + client_id).name == f"a{client_id}.json"


@pytest.mark.parametrize("client_id", ["", "a/b", "../escaped"])
def test_link_server_refuses_the_same_client_ids(client_id: str) -> None:
    from server_apps import LinkServer

    with pytest.raises(ValueError, match="a client id is 1 to 65535 bytes"):
        LinkServer(client_id=client_id)
