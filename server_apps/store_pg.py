"""The server library's durable state on PostgreSQL, shared by several processes.

The file store (:mod:`server_apps.state`) is one file per server process. This
store keeps the same per-conn_id entries (:class:`~server_apps.state.ConnState`:
receive state, acknowledged-but-unread lines, sender state after a clean stop)
in one table that any number of server processes, on any hosts, share::

    pblink_link_state(root text, conn_id text, entry jsonb, owner text,
                      updated_at timestamptz, PRIMARY KEY (root, conn_id))

:meth:`PgStore.open` creates the table if missing and refuses one of another
shape (:data:`COLUMNS`) with :class:`StateDbError` saying so.
``entry`` is exactly the JSON object the state file holds for a conn_id
(``ConnState.to_json()``), checked on the way in with ``ConnState.from_json``
like a state file entry (:class:`~server_apps.state.StateFileError` when it
could not have been written by this library, JSON ``null`` included; the
message names the database, root and conn_id and the ``DELETE`` that starts
the conn_id afresh).

Ownership (the lease)
---------------------
A conn_id is served by exactly one process at a time: the one whose database
session holds the PostgreSQL advisory lock
``hashtextextended('pblink/<table>/<root>/<conn_id>', 0)`` (session-level;
``<table>`` is the OID of the ``pblink_link_state`` table the session's
``search_path`` finds, so deployments in other schemas of one database, whose
state is in other tables, never share a lease). The
database enforces it: ``pg_try_advisory_lock`` succeeds for one session only,
and PostgreSQL drops every lock of a session when the session ends, which it
notices at once when the process dies (kill -9 included: the kernel closes the
socket) and, for a host that vanishes, within the TCP keepalive set on the
session (``tcp_keepalives_idle`` 5 s, ``_interval`` 2 s, ``_count`` 3: about
11 s). The writes of a process go over the session that holds its locks, so a
process whose session ended can no longer commit anything: its acks, which go
out only after a commit, stop with it.

:meth:`PgStore.claim` waits for the lease: every conn_id waiting for one is
tried in one query every ``poll_ms`` (default 250 ms), so a conn_id whose
owner died is taken over within ``poll_ms`` of the database noticing.

Commits (PROTOCOL.md 4.5, group commit)
---------------------------------------
:meth:`PgStore.write` upserts, in one transaction, the entries that changed
since the last commit. ``LinkServer`` calls it before it publishes the acks
of a batch, exactly as it writes the state file, so an acknowledged line is
in the database before the device hears of it, and the process that takes
a conn_id over continues its receive state: no acknowledged line is lost and
the link accepts none twice. As with the state file, reads are committed with
the next batch: the lines a killed process's application read after its last
commit (with ``wait=True`` writers, the last line or two of a device) are
read again by the application of the process that takes over.

Where: ``dsn`` is a ``postgresql://`` or ``postgres://`` URL, or a libpq
``key=value`` connection string (``host=db dbname=pblink user=pblink``):
:func:`check_dsn` refuses anything else (an empty string, which libpq would
take as "the local defaults", another scheme, a bare word) with ``ValueError``
before anything connects.

A session that is lost (the database restarted or unreachable, the backend
terminated) is noticed at the next statement: a commit, a lease poll, or the
liveness query sent every ``LIVENESS_S`` (1 s) while nothing else runs. The
store then fails for good (:class:`StateDbError` from every call) and calls
``on_lost``: its owner must stop acknowledging (``LinkServer`` closes itself,
docs/SERVER.md).

Every database operation of the store is bounded on the client side by
``timeout_ms`` (default ``DEFAULT_TIMEOUT_MS``, 5 s): a session that hangs
without ending (a frozen backend or host, a stalled disk under the database)
answers no statement, and TCP keepalives see nothing wrong with it. An
operation that overruns logs one ERROR line naming the database and the bound,
and the session is then lost as above (the connection is closed; the database
drops its leases once it ends the frozen session). One that takes more than
half the bound logs a WARNING (at most one per ``SLOW_WARN_EVERY_S``).

Connection options: the store adds its TCP keepalive settings to the
``options`` of ``dsn`` (a user's ``-c search_path=...`` is kept, and wins over
the store's for a setting given in both), and names its session
``application_name`` ``pblink <owner>`` unless ``dsn`` gives one.

psycopg 3 (``pip install 'pblink-mqtt[postgres]'``) is imported when a store
is opened, so the file store needs no database driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from server_apps.state import ConnState, StateFileError

log = logging.getLogger("pblink.server.store_pg")

TABLE: Final = "pblink_link_state"
SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    root text NOT NULL,
    conn_id text NOT NULL,
    entry jsonb NOT NULL,
    owner text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (root, conn_id)
)"""
# Serialises concurrent CREATE TABLE IF NOT EXISTS of processes starting together.
_SCHEMA_LOCK: Final = 0x70626C696E6B  # "pblink"
_LOCK_KEY: Final = "hashtextextended('pblink/' || %s::text || '/' || {col}, 0)"
LIVENESS_S: Final = 1.0  # a claimed-only store checks its session this often
DEFAULT_TIMEOUT_MS: Final = 5000  # the client-side bound of one database operation
MIN_TIMEOUT_MS: Final = 100
MAX_TIMEOUT_MS: Final = 600_000
SLOW_WARN_EVERY_S: Final = 10.0  # at most one "slow database" warning this often
_T = TypeVar("_T")
# The table's columns as SCHEMA makes them (pg_catalog.format_type names).
COLUMNS: Final = {"root": "text", "conn_id": "text", "entry": "jsonb", "owner": "text",
                  "updated_at": "timestamp with time zone"}
# A libpq key=value connection string: one or more key = value pairs, a value bare
# (no space, quote or backslash) or single-quoted with \' and \\ escapes.
_CONNINFO: Final = re.compile(
    r"\s*(?:[A-Za-z_][A-Za-z0-9_]*\s*=\s*(?:'(?:[^'\\]|\\.)*'|[^\s'\\]+)\s*)+")
_KEEPALIVE: Final = ("-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 "
                     "-c tcp_keepalives_count=3")


class StateDbError(StateFileError):
    """The state database cannot be used (unreachable, refused, not pblink's table,
    or the session was lost)."""


_PAIR: Final = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?:'(?:[^'\\]|\\.)*'|[^\s'\\]+)")
# what names a database rather than leaving it to libpq's defaults
_NAMING_KEYS: Final = frozenset({"host", "hostaddr", "dbname", "service"})


def check_dsn(dsn: str) -> str:
    """``dsn`` if it names a PostgreSQL database, else ``ValueError`` (one line, password hidden).

    Accepted: a ``postgresql://`` or ``postgres://`` URL (libpq's two
    schemes) with a host or a database name, or a libpq ``key=value``
    connection string with at least one of ``host``, ``hostaddr``, ``dbname``,
    ``service``. Refused: anything else, the empty string and a bare
    ``postgresql://`` or ``password=...`` included (libpq would connect to
    whatever its defaults name: a surprise, not a choice).
    """
    if not isinstance(dsn, str):
        raise ValueError(f"not a postgresql:// URL: {dsn!r}")
    text = dsn.strip()
    if re.match(r"postgres(?:ql)?://", text):  # libpq: lower case only
        url = urlsplit(text)
        if url.hostname or url.path.strip("/"):
            return _check_options(dsn)
    elif "://" not in text and _CONNINFO.fullmatch(text):
        if _NAMING_KEYS & {m.group(1) for m in _PAIR.finditer(text)}:
            return _check_options(dsn)
    raise ValueError(
        f"not a postgresql:// URL: {redact(dsn)!r} (give postgresql://USER:PASSWORD@HOST/DB, "
        "postgres://..., or a libpq key=value string naming host or dbname, such as "
        "'host=db dbname=pblink')")


def _check_options(dsn: str) -> str:
    """``dsn`` if libpq knows each of its options (``PQconninfoParse``: a typo such as
    ``?conect_timeout=5`` or ``sslmod=require``) and psycopg can read its
    ``connect_timeout``; else ``ValueError`` (one line, password hidden). Values
    libpq checks only when it connects (``sslmode=wrong``, ``port=x``) fail there,
    with libpq's own message. Without psycopg installed nothing more is checked:
    opening the store then says how to install it."""
    try:
        from psycopg import Error
        from psycopg.conninfo import conninfo_to_dict, timeout_from_conninfo
    except ImportError:
        return dsn
    try:
        timeout_from_conninfo(conninfo_to_dict(dsn))
    except Error as exc:
        raise ValueError(f"{redact(dsn)!r}: {str(exc).strip()}") from None
    return dsn


def check_timeout_ms(value: object) -> int:
    """``value`` if it is a valid bound of one database operation (an int from
    ``MIN_TIMEOUT_MS`` to ``MAX_TIMEOUT_MS`` milliseconds), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or not (
            MIN_TIMEOUT_MS <= value <= MAX_TIMEOUT_MS):
        raise ValueError(f"state database timeout {value!r} ms: give a whole number of "
                         f"milliseconds from {MIN_TIMEOUT_MS} to {MAX_TIMEOUT_MS}")
    return value


def connect_kwargs(dsn: str, owner: str) -> dict[str, Any]:
    """What :meth:`PgStore.open` passes to ``psycopg.AsyncConnection.connect`` besides
    ``dsn`` (which they override, key by key): ``options`` is the store's keepalive
    settings followed by the ``options`` of ``dsn`` (so the user's are kept, and
    win for a setting given in both); ``application_name`` is ``pblink <owner>``
    unless ``dsn`` names one. Read with psycopg's own conninfo parser."""
    from psycopg.conninfo import conninfo_to_dict

    given = conninfo_to_dict(dsn)
    user = str(given.get("options") or "").strip()
    kwargs: dict[str, Any] = {"options": f"{_KEEPALIVE} {user}" if user else _KEEPALIVE}
    if not given.get("application_name"):
        kwargs["application_name"] = f"pblink {owner}"[:63]
    return kwargs


def redact(dsn: str) -> str:
    """``dsn`` for messages: the password of a URL (up to its last ``@``) or of a
    ``password=`` pair (quoted or not) is replaced by ``***``."""
    dsn = re.sub(r"(://[^:/@]*:).*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|\S+)", r"\1***", dsn)


class PgStore:
    """Per-conn_id link state in PostgreSQL, leased by one process at a time.

    Args:
        dsn: a ``postgresql://`` (or ``postgres://``) URL or a libpq
            ``key=value`` connection string (:func:`check_dsn`).
        root: the topic root: conn_ids of different roots are different rows
            and different leases.
        owner: written beside each entry (the server's client id), for people
            reading the table; ownership itself is the advisory lock.
        poll_ms: how often conn_ids waiting for a lease are tried, at least
            10. Default 250.
        on_lost: called once, with the :class:`StateDbError`, when the
            session is lost (see the module docstring). Default ``None``.
        timeout_ms: the client-side bound of every database operation (a
            statement, a commit, the liveness query; connecting gets at least
            the ``connect_timeout`` of ``dsn``), ``MIN_TIMEOUT_MS`` to
            ``MAX_TIMEOUT_MS``. One that overruns loses the session. Default
            ``DEFAULT_TIMEOUT_MS`` (5000).

    Raises:
        ValueError: ``dsn`` is not a PostgreSQL URL or connection string
            (:func:`check_dsn`), ``poll_ms`` is under 10, ``timeout_ms`` is
            out of range (:func:`check_timeout_ms`).

    The interface mirrors :class:`server_apps.state.StateStore` where it can
    (``path`` names the store in messages, ``writes`` counts commits), with
    async methods: :meth:`open`, :meth:`claim`, :meth:`write`, :meth:`close`.
    """

    def __init__(self, dsn: str, *, root: str, owner: str, poll_ms: int = 250,
                 on_lost: Callable[[StateDbError], None] | None = None,
                 timeout_ms: int = DEFAULT_TIMEOUT_MS) -> None:
        check_dsn(dsn)
        if poll_ms < 10:
            raise ValueError(f"poll_ms={poll_ms} is too small (at least 10)")
        self.timeout_s = check_timeout_ms(timeout_ms) / 1000
        self._slow_told = -SLOW_WARN_EVERY_S
        self.dsn = dsn
        self.path = redact(dsn)
        self.where = self.path  # as Store.where: what messages name
        self.root = root
        # what the lease keys start with: the table's OID and the root, so that
        # processes whose search_path finds another table never share leases
        self._lease_ns = root
        self.owner = owner
        self.poll_s = poll_ms / 1000
        self.writes = 0
        self._conn: Any = None  # psycopg.AsyncConnection
        self._written: dict[str, str] = {}  # conn_id -> entry JSON last committed
        self._held: set[str] = set()  # conn_ids whose lease this session holds
        self._wanted: dict[str, asyncio.Future[ConnState]] = {}
        self._waiters: dict[str, int] = {}
        # One statement or transaction at a time on the session: a claim's UPDATE must
        # not land inside a commit's transaction (psycopg does not hold its lock across one).
        self._lock = asyncio.Lock()
        self._claimer: asyncio.Task[None] | None = None
        self._lost: str | None = None
        self.on_lost = on_lost

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        """Connect (one session for leases and commits) and create the table if missing.

        Raises:
            StateDbError: psycopg is not installed, or the database cannot be
                reached or refuses; the message names the database (password
                hidden).
        """
        try:
            import psycopg
        except ImportError as exc:
            raise StateDbError(
                "the PostgreSQL state store needs psycopg 3: pip install 'pblink-mqtt[postgres]'"
            ) from exc
        from psycopg.conninfo import conninfo_to_dict, timeout_from_conninfo

        kwargs = connect_kwargs(self.dsn, self.owner)
        params = conninfo_to_dict(self.dsn)
        connect_s = self.timeout_s  # or the connect_timeout the dsn gives, if longer
        if params.get("connect_timeout"):
            connect_s = max(connect_s, float(timeout_from_conninfo(params)))

        async def setup() -> dict[str, str]:
            async with self._conn.transaction():
                await self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                await self._conn.execute(SCHEMA)
                cur = await self._conn.execute(
                    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                    (TABLE,))
                columns = dict(await cur.fetchall())
                cur = await self._conn.execute("SELECT %s::regclass::oid", (TABLE,))
                row = await cur.fetchone()
                self._lease_ns = f"{row[0]}/{self.root}"
                return columns

        try:
            self._conn = await self._bounded(
                "connecting", lambda: psycopg.AsyncConnection.connect(
                    self.dsn, autocommit=True, **kwargs), connect_s)
            columns = await self._bounded("creating the table", setup)
        except (psycopg.Error, TimeoutError) as exc:
            await self.close()
            raise StateDbError(f"state database {self.path}: {_one_line(exc)}") from exc
        wrong = sorted(f"{name} {columns.get(name, 'missing')} (not {kind})"
                       for name, kind in COLUMNS.items() if columns.get(name) != kind)
        if wrong:
            await self.close()
            raise StateDbError(
                f"state database {self.path}: table {TABLE} is not pblink's shape: "
                f"{', '.join(wrong)}; rename or drop it (pblink creates it as in "
                "server_apps/store_pg.py SCHEMA), or use another database")
        self._claimer = asyncio.create_task(self._claim_loop(), name="pblink-pg-claim")
        log.info("state database %s: connected as owner %s", self.path, self.owner)

    async def _bounded(self, what: str, op: Callable[[], Awaitable[_T]],
                       bound_s: float | None = None) -> _T:
        """``await op()``, bounded by ``timeout_s`` (or ``bound_s``): ``TimeoutError``
        naming the database, ``what`` and the bound when it overruns.

        The operation runs on its own task, which an overrun abandons rather than
        cancels (psycopg answers a cancellation by asking the server to cancel the
        query and waiting for it, which a frozen backend never does), closing the
        connection instead. Cancelling the caller cancels the operation."""
        bound = self.timeout_s if bound_s is None else bound_s
        task: asyncio.Future[_T] = asyncio.ensure_future(op())
        start = time.monotonic()
        try:
            done, _ = await asyncio.wait({task}, timeout=bound)
        except asyncio.CancelledError:
            task.cancel()
            task.add_done_callback(_forget)
            raise
        took = time.monotonic() - start
        if not done:
            task.add_done_callback(_forget)
            if self._conn is not None:  # the session is lost: closing it now ends the
                with contextlib.suppress(Exception):  # abandoned operation without a
                    await self._conn.close()  # cancel request to the frozen backend
            raise TimeoutError(
                f"no answer within {bound:g} s while {what} (the bound of a state database "
                "operation: timeout_ms, pblink server --state-db-timeout-ms)")
        if took > bound / 2 and start - self._slow_told >= SLOW_WARN_EVERY_S:
            self._slow_told = start
            log.warning("state database %s is slow: %s took %.1f s (more than half the "
                        "%g s bound; at the bound this process stops)",
                        self.path, what, took, bound)
        return task.result()

    async def close(self) -> None:
        """Close the session: PostgreSQL releases every lease this process held. Idempotent."""
        claimer, self._claimer = self._claimer, None
        if claimer is not None:
            claimer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await claimer
        for fut in self._wanted.values():
            if not fut.done():
                fut.cancel()
        self._wanted.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    # -- leases ----------------------------------------------------------------

    async def claim(self, conn_id: str) -> ConnState:
        """Wait for the lease on ``conn_id``, then its stored entry (empty when there is none).

        The entry's sender state (``tx``, written by a clean stop) is returned
        and, in the same step, removed from the row: the caller continues that
        session, and a crash of the caller makes the next owner start anew.

        Waits as long as another process holds it. Cancelling the wait gives
        up the claim.

        Raises:
            StateFileError: the stored entry is not one this library writes.
            StateDbError: the database session was lost.
        """
        if self._lost is not None:
            raise StateDbError(self._lost)
        fut = self._wanted.get(conn_id)
        if fut is None:
            fut = self._wanted[conn_id] = asyncio.get_running_loop().create_future()
        self._waiters[conn_id] = self._waiters.get(conn_id, 0) + 1  # callers of this claim
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            if self._waiters[conn_id] == 1:  # the last caller gives the claim up
                if not fut.done():
                    if self._wanted.get(conn_id) is fut:
                        del self._wanted[conn_id]
                    fut.cancel()
                elif not fut.cancelled() and fut.exception() is None:
                    await self._release(conn_id)  # got it just now: give it back
            raise
        finally:
            self._waiters[conn_id] -= 1
            if not self._waiters[conn_id]:
                del self._waiters[conn_id]

    def is_waiting(self, conn_id: str) -> bool:
        """A :meth:`claim` of ``conn_id`` waits for its lease (another process holds it)."""
        fut = self._wanted.get(conn_id)
        return fut is not None and not fut.done()

    def waiting_count(self) -> int:
        """How many conn_ids :meth:`claim` waits for."""
        return sum(1 for fut in self._wanted.values() if not fut.done())

    async def _claim_loop(self) -> None:
        idle = 0.0  # seconds since the session was last used by this loop
        while True:
            wanted = [cid for cid, fut in self._wanted.items() if not fut.done()]
            try:
                if wanted:
                    async with self._lock:
                        await self._bounded("trying leases",
                                            functools.partial(self._try_claim, wanted))
                    idle = 0.0
                elif idle >= LIVENESS_S:  # notice a lost session with nothing else to do
                    async with self._lock:
                        await self._bounded("checking the session (SELECT 1)",
                                            lambda: self._conn.execute("SELECT 1"))
                    idle = 0.0
            except Exception as exc:
                self._session_lost(exc)
                return
            await asyncio.sleep(self.poll_s)
            idle += self.poll_s

    async def _try_claim(self, wanted: list[str]) -> None:
        conn = self._conn
        key = _LOCK_KEY.format(col="c")
        cur = await conn.execute(
            f"SELECT c FROM unnest(%s::text[]) AS c WHERE pg_try_advisory_lock({key})",
            (wanted, self._lease_ns),
        )
        got = [row[0] for row in await cur.fetchall()]
        if not got:
            return
        cur = await conn.execute(
            f"SELECT conn_id, entry FROM {TABLE} WHERE root = %s AND conn_id = ANY(%s)",
            (self.root, got),
        )
        rows = {cid: entry for cid, entry in await cur.fetchall()}
        # The sender state of a clean stop is continued by this process: drop it from
        # the rows now, in one statement, so that after a crash of this process the
        # next owner starts a new sender session (PROTOCOL.md 4.5, as the file does).
        with_tx = [cid for cid, entry in rows.items() if isinstance(entry, dict) and "tx" in entry]
        if with_tx:
            await conn.execute(
                f"UPDATE {TABLE} SET entry = entry - 'tx', owner = %s, updated_at = now() "
                "WHERE root = %s AND conn_id = ANY(%s)", (self.owner, self.root, with_tx))
        for cid in got:
            fut = self._wanted.pop(cid, None)
            entry = rows.get(cid)  # JSON null is a damaged entry, not a missing row
            try:
                state = ConnState.from_json(entry) if cid in rows else ConnState()
            except ValueError as exc:
                err = StateFileError(
                    f"state database {self.path}, root {self.root!r}, conn_id {cid!r}: "
                    f"stored entry {_excerpt(entry)}: {exc}; this library did not write it: "
                    f"delete its row (DELETE FROM {TABLE} WHERE root = '{self.root}' AND "
                    f"conn_id = '{cid}') to start afresh (acknowledged but unread lines in it "
                    "are then lost)")
                await self._unlock(cid)
                if fut is not None and not fut.done():
                    fut.set_exception(err)
                continue
            if fut is None or fut.done():  # nobody waits any more
                await self._unlock(cid)
                continue
            if isinstance(entry, dict):
                stored = {k: v for k, v in entry.items() if k != "tx"}
                self._written[cid] = json.dumps(stored, sort_keys=True, separators=(",", ":"),
                                                ensure_ascii=False)
            self._held.add(cid)
            log.info("%s: lease taken (state database %s)", cid, self.path)
            fut.set_result(state)

    async def _release(self, conn_id: str) -> None:
        if self._lost is not None:
            return
        async with self._lock:
            try:
                await self._bounded("giving a lease back", lambda: self._unlock(conn_id))
            except TimeoutError as exc:
                self._session_lost(exc)

    async def _unlock(self, conn_id: str) -> None:  # caller holds self._lock
        with contextlib.suppress(Exception):
            await self._conn.execute(
                f"SELECT pg_advisory_unlock({_LOCK_KEY.format(col='%s::text')})",
                (self._lease_ns, conn_id),
            )
        self._written.pop(conn_id, None)
        self._held.discard(conn_id)

    def _session_lost(self, exc: BaseException) -> None:
        first = self._lost is None
        if self._lost is None:
            if isinstance(exc, TimeoutError):
                log.error("state database %s: %s; the session counts as lost", self.path,
                          _one_line(exc))
            held = len(self._held)
            self._lost = (
                f"lost the session with state database {self.path} ({_one_line(exc)}): " + (
                    f"this process held {held} lease(s) and acknowledges nothing more; the "
                    "database hands them to another server process once it has ended the "
                    "session; restart this one" if held else
                    "this process held no lease; restart it") +
                " (when the database itself went away every server process of it stops: "
                "a supervisor restarts them)"
            )
        for fut in self._wanted.values():
            if not fut.done():
                fut.set_exception(StateDbError(self._lost))
        self._wanted.clear()
        if first and self.on_lost is not None:
            self.on_lost(StateDbError(self._lost))

    # -- commits ---------------------------------------------------------------

    async def write(self, conns: dict[str, ConnState]) -> None:
        """Commit the entries of leased conn_ids that changed, in one transaction.

        Raises:
            StateDbError: the write failed; the session is then deemed lost
                (its leases may be another process's by now), and every later
                write fails too.
        """
        if self._lost is not None:
            raise StateDbError(self._lost)
        rows = []
        for cid, st in conns.items():
            text = json.dumps(st.to_json(), sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False)
            if self._written.get(cid) != text:
                rows.append((cid, text))
        if rows:
            async def commit() -> None:
                async with self._conn.transaction(), self._conn.cursor() as cur:
                    await cur.executemany(
                        f"INSERT INTO {TABLE} (root, conn_id, entry, owner) "
                        "VALUES (%s, %s, %s::jsonb, %s) ON CONFLICT (root, conn_id) DO UPDATE "
                        "SET entry = EXCLUDED.entry, owner = EXCLUDED.owner, updated_at = now()",
                        [(self.root, cid, text, self.owner) for cid, text in rows],
                    )

            try:
                async with self._lock:
                    if self._lost is not None:  # lost while this commit waited for the lock
                        raise StateDbError(self._lost)
                    await self._bounded(f"committing {len(rows)} row(s)", commit)
            except Exception as exc:
                self._session_lost(exc)
                raise StateDbError(self._lost or str(exc)) from exc
            for cid, text in rows:
                self._written[cid] = text
        self.writes += 1


def _forget(task: asyncio.Future[Any]) -> None:
    """Done callback of an abandoned operation: its outcome no longer matters."""
    if not task.cancelled():
        task.exception()


def _excerpt(entry: Any) -> str:
    text = json.dumps(entry, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
