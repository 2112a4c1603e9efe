"""The server library's durable state file (PROTOCOL.md section 4.5).

One JSON document per server (per MQTT client id), rewritten whole each time:
serialised in the writer thread from a snapshot the event loop took (and no
longer touches), then written to ``<path>.tmp``, flushed (and
fsync'ed unless disabled) and renamed over ``<path>`` with :func:`os.replace`,
so a reader sees either the old or the new document, never a torn one.

Document layout (``"format": "pblink-server-state", "version": 1``)::

    {"format": "pblink-server-state", "version": 1,
     "clean": false,                 # true only when written by a clean shutdown
     "conns": {
        "<conn_id>": {
            "rx": {...},             # link_core Receiver.snapshot(): the device's
                                     # session, next expected id, reorder buffer
            "unread": ["line", ...], # acknowledged lines the app has not read yet
            "tx": {...}              # link_core Sender.snapshot(); present only
        }                            # while it is valid (see below)
     }}

``tx`` (the server's own sender state: session, next id, unacknowledged frames)
is written by a clean shutdown. An entry keeps it while this run has not taken
that conn_id over (an unclaimed conn_id's state is carried over untouched); as
soon as a conn_id is claimed and the process runs, its entry is written without
``tx``, so after a crash that conn_id starts a new sender session. The file-level
``clean`` flag says whether the last writer exited cleanly (for logs and tools).

One writer per file: a running server holds an exclusive ``fcntl.flock`` on
``<path>.lock`` (:meth:`StateStore.lock`), so a second process given the same
file refuses to start (:class:`StateLockedError`) instead of overwriting the
first one's entries with an older copy. The lock dies with its process, so a
crash leaves no stale lock behind.

The file is input like any other: :meth:`StateStore.load` checks every entry
(conn_id, receive and sender state, unread lines) and raises
:class:`StateFileError` naming the file for anything this library could not
have written, rather than hand the application a line that breaks the
``readline()`` contract.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from link_core import endpoint, lines, names

log = logging.getLogger("pblink.server.state")

FORMAT = "pblink-server-state"
VERSION = 1


CLIENT_ID_MAX_BYTES = 65535  # MQTT 3.1.1 section 1.5.3: a UTF-8 string of at most 65535 bytes
STATE_SUFFIX = ".json"
LOCK_SUFFIX = ".lock"  # StateStore.lock_path: <state file>.lock
TMP_SUFFIX = ".tmp"  # StateStore.write: <state file>.tmp, renamed over the state file
# every file the store makes beside the state file, named <client-id> + one of these
STATE_FILE_SUFFIXES = (STATE_SUFFIX, STATE_SUFFIX + LOCK_SUFFIX, STATE_SUFFIX + TMP_SUFFIX)
NAME_MAX_BYTES = 255  # a file name, on Linux, macOS and Windows alike
_LONGEST_SUFFIX = max(STATE_FILE_SUFFIXES, key=lambda suffix: len(suffix.encode()))
# the longest client id with a state file (245): its longest file still a file name
STATE_CLIENT_ID_MAX_BYTES = NAME_MAX_BYTES - len(_LONGEST_SUFFIX.encode())
_CLIENT_ID_RULE = (
    "a client id is 1 to 65535 bytes of UTF-8 without control characters, '/', '\\' or '..' "
    "(it names the state file <state-dir>/<client-id>.json)"
)


def _show(text: str, limit: int = 60) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit + 5 else shown[:limit] + "...'"


def check_client_id(client_id: object) -> str:
    """Return ``client_id`` if it can be a server's MQTT client id and its state file name.

    The one rule for ``LinkServer(client_id=...)``, ``pblink server --client-id``
    and the state file ``<state_dir>/<client_id>.json``: a str of 1 to 65535
    UTF-8 bytes (MQTT 3.1.1 section 1.5.3 and 3.1.3.1; Mosquitto takes every
    such id, not only the 23 characters a broker must accept), no control
    character (U+0000 is forbidden in MQTT strings, the others would be in a
    file name), no ``/`` or ``\\`` and no ``..`` (so the state file stays a
    plain name in its folder). Otherwise ``ValueError`` naming the id and the rule.
    """
    if not isinstance(client_id, str):
        raise ValueError(f"client id {client_id!r} is not a str: {_CLIENT_ID_RULE}")
    shown = _show(client_id)
    if not client_id:
        raise ValueError(f"client id '' is empty: {_CLIENT_ID_RULE}")
    try:
        size = len(client_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"client id {shown} is not valid UTF-8 (a lone surrogate): "
                         f"{_CLIENT_ID_RULE}") from None
    if size > CLIENT_ID_MAX_BYTES:
        raise ValueError(f"client id {shown} is {size} bytes long: {_CLIENT_ID_RULE}")
    for i, ch in enumerate(client_id):
        if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 or ch in "/\\":
            raise ValueError(f"client id {shown} has the character {ch!r} at position {i}: "
                             f"{_CLIENT_ID_RULE}")
    if ".." in client_id:
        raise ValueError(f"client id {shown} contains '..': {_CLIENT_ID_RULE}")
    return client_id


def state_file_path(state_dir: str | os.PathLike[str], client_id: str) -> Path:
    """``<state_dir>/<client_id>.json``, the state file of the server ``client_id``.

    ``ValueError`` for a client id that ``check_client_id`` refuses, that
    starts with ``.`` (a hidden state file, ``..json`` for ``.``: the id stays
    valid for the broker and with no state file or a state database), or
    whose state file or a file the store makes beside it
    (``STATE_FILE_SUFFIXES``: ``.json``, ``.json.lock``, ``.json.tmp``) would
    be longer than a file name may be (255 bytes: an id of at most
    ``STATE_CLIENT_ID_MAX_BYTES``, 245 bytes); the path is always a file
    directly in ``state_dir``.
    """
    check_client_id(client_id)
    if client_id.startswith("."):
        raise ValueError(f"client id {_show(client_id)} starts with '.', which would make the "
                         f"state file {client_id + STATE_SUFFIX!r} hidden: give a client id "
                         "that does not start with '.', or no state file")
    size = len(client_id.encode("utf-8"))
    if size > STATE_CLIENT_ID_MAX_BYTES:
        raise ValueError(f"client id {_show(client_id)} is too long for a state file "
                         f"name ({size} bytes, at most {STATE_CLIENT_ID_MAX_BYTES}: the "
                         f"<client-id>{_LONGEST_SUFFIX} file the store makes beside it must fit "
                         f"a file name, {NAME_MAX_BYTES} bytes): "
                         "give a shorter client id, or no state file")
    name = client_id + STATE_SUFFIX
    path = Path(state_dir) / name
    if path.parent != Path(state_dir) or path.name != name:  # pragma: no cover - the rule above
        raise ValueError(f"client id {_show(client_id)} would leave the state folder")
    return path


class StateFileError(ValueError):
    """The state file exists but cannot be used (unreadable, not JSON, wrong format, bad entry)."""


class StateLockedError(StateFileError):
    """Another running process holds the state file (see :meth:`StateStore.lock`)."""


@dataclass
class ConnState:
    """What the state file holds for one conn_id."""

    rx: dict[str, Any] | None = None
    unread: list[str] = field(default_factory=list)
    tx: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"unread": list(self.unread)}
        if self.rx is not None:
            doc["rx"] = self.rx
        if self.tx is not None:
            doc["tx"] = self.tx
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> ConnState:
        """The entry, checked as this library writes it; ``ValueError`` otherwise.

        ``rx`` must restore into a Receiver and ``tx`` into a Sender (the
        link_core checks), every unread line must be a line ``readline()`` can
        return (``check_line``: no newline, at most ``MAX_LINE`` bytes).
        """
        if not isinstance(doc, dict):
            raise ValueError("entry is not an object")
        unknown = set(doc) - {"rx", "tx", "unread"}
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)}")
        rx, tx, unread = doc.get("rx"), doc.get("tx"), doc.get("unread", [])
        if rx is not None:
            if not isinstance(rx, dict):
                raise ValueError("rx is not an object")
            sessions = rx.get("sessions", [])
            if isinstance(sessions, list) and len(sessions) > endpoint.MAX_SESSIONS:
                # the Receiver keeps (and so this library writes) at most MAX_SESSIONS
                raise ValueError(f"rx has {len(sessions)} sessions, at most "
                                 f"{endpoint.MAX_SESSIONS} are ever written")
            endpoint.Receiver().restore(rx)
        if tx is not None:
            if not isinstance(tx, dict):
                raise ValueError("tx is not an object")
            endpoint.Sender.restore(tx)
        if not isinstance(unread, list):
            raise ValueError("unread is not a list of strings")
        for line in unread:
            if not isinstance(line, str) or lines.check_line(line) != line:
                raise ValueError(f"unread line {str(line)[:40]!r} is not a line readline() returns")
        return cls(rx=rx, unread=unread, tx=tx)


@dataclass
class ServerState:
    """The whole document: whether the last run exited cleanly, and per-conn state."""

    clean: bool = False
    conns: dict[str, ConnState] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "clean": self.clean,
            "conns": {cid: st.to_json() for cid, st in sorted(self.conns.items())},
        }
        return _dumps(doc).encode()


def _dumps(doc: Any) -> str:
    """The state file's JSON: compact, UTF-8 as is."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


class Store(Protocol):
    """What a LinkServer needs of a durable state store (:class:`StateStore` is the file one).

    The blocking methods (``lock``, ``load``, ``save``) are run in a thread.
    ``where``: the store's address for messages (the file's path).
    ``lock(hint)``: become its one writer or raise :class:`StateLockedError`
    (``hint`` ends the message); ``unlock()`` releases it. ``exists()``: there is
    stored state (for the start-up log). ``load()``: the stored state, an empty
    one when there is none; :class:`StateFileError` when it cannot be used.
    ``save(state, changed)``: store ``state`` atomically (the whole of it is
    valid after the call, or the old one); ``changed`` names the conn_ids whose
    entries changed since the last save (all claimed ones when
    ``state.clean``), so that a store with one record per conn_id writes only
    those. Raises on failure (the group commit logs it and retries).
    """

    @property
    def where(self) -> str: ...
    def lock(self, hint: str = "") -> None: ...
    def unlock(self) -> None: ...
    def exists(self) -> bool: ...
    def load(self) -> ServerState: ...
    def save(self, state: ServerState, changed: Collection[str]) -> None: ...


class StateStore:
    """Reads and atomically rewrites one state file (a :class:`Store`)."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.writes = 0
        self._lock_fd: int | None = None
        self._encoded: dict[str, bytes] = {}  # conn_id -> its '"<conn_id>":{...}' as last written
        self._order: list[str] = []  # the conn_ids of the last document, sorted

    @property
    def where(self) -> str:
        """The file's path, for messages."""
        return str(self.path)

    def exists(self) -> bool:
        """The file exists."""
        return self.path.exists()

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + LOCK_SUFFIX)

    def lock(self, hint: str = "") -> None:
        """Take the exclusive lock on the file for this process (blocking call: short).

        Raises :class:`StateLockedError` naming the file and the holder's pid
        when another process holds it; ``hint`` (e.g. which option to change)
        ends the message. Idempotent; :meth:`unlock` releases it.
        """
        if self._lock_fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateLockedError(
                f"state file {self.path} is in use by another running server process "
                f"(pid {holder}){hint}"
            ) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release the lock taken by :meth:`lock` (the lock file stays: harmless)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def load(self) -> ServerState:
        """The stored state; an empty, not-clean state when the file does not exist.

        Raises StateFileError for a file that exists but is not a valid state
        document: starting afresh would silently lose acknowledged lines.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return ServerState()
        except OSError as exc:
            raise StateFileError(f"cannot read state file {self.path}: {exc}") from exc
        try:
            doc = json.loads(raw.decode("utf-8"))  # a decoding error names its byte
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} document")
            unknown = set(doc) - {"format", "version", "clean", "conns"}
            if unknown:
                raise ValueError(f"unknown key(s) {sorted(unknown)}")
            if doc.get("version") != VERSION:
                raise ValueError(f"unsupported version {doc.get('version')!r}")
            conns_doc = doc.get("conns", {})
            if not isinstance(conns_doc, dict):
                raise ValueError("conns is not an object")
            if not isinstance(doc.get("clean", False), bool):
                raise ValueError("clean is not true or false")
            conns = {}
            for cid, entry in conns_doc.items():
                try:
                    conns[names.check_conn_id(cid)] = ConnState.from_json(entry)
                except ValueError as exc:
                    raise ValueError(f"conn_id {cid!r}: {exc}") from None
            return ServerState(clean=doc.get("clean", False), conns=conns)
        except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError included
            raise StateFileError(
                f"state file {self.path} is not usable ({exc}); "
                "move it away to start afresh (acknowledged but unread lines in it would be lost)"
            ) from exc

    def save(self, state: ServerState, changed: Collection[str]) -> None:
        """Write the whole document; blocking.

        The bytes are those of ``state.to_bytes()``, but only the entries of
        the ``changed`` conn_ids (and of conn_ids this store has not written
        before) are encoded anew: the others are the bytes this store wrote
        for them last time. So a batch costs JSON encoding for the devices
        that had something new, not for all of them (docs/PERFORMANCE.md
        "Server scale"); the file is still rewritten whole.
        """
        self.write(self._document(state, changed))

    def _document(self, state: ServerState, changed: Collection[str]) -> bytes:
        encoded = self._encoded
        conns = state.conns
        if len(conns) != len(self._order) or not all(c in conns for c in self._order):
            self._order = sorted(conns)
            for gone in encoded.keys() - conns.keys():
                del encoded[gone]
        for conn_id in changed:
            encoded.pop(conn_id, None)
        parts = []
        for conn_id in self._order:
            part = encoded.get(conn_id)
            if part is None:
                part = encoded[conn_id] = (
                    json.dumps(conn_id) + ":" + _dumps(conns[conn_id].to_json())
                ).encode()
            parts.append(part)
        head = _dumps({"format": FORMAT, "version": VERSION, "clean": state.clean, "conns": {}})
        return head[:-2].encode() + b",".join(parts) + b"}}"

    def write(self, data: bytes) -> None:
        """Atomically replace the file with ``data`` (blocking: run it in a thread)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + TMP_SUFFIX)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        if self.fsync:
            self._fsync_dir()
        self.writes += 1

    def _fsync_dir(self) -> None:
        try:
            fd = os.open(self.path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
