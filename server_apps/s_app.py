"""The demo server application: ``pblink server`` (also ``python -m server_apps.s_app``).

For each conn_id (default 1 2 3 4) it reads lines from the demo Pyboard
application. Each is a JSON list ``[conn_id, tx_count, rx_count]``; the reply is
``[conn_id, tx_count, rx_count, server_count]``, the same three values plus this
server's own per-connection counter (1 for the first reply after start), written
with ``qos=True, wait=True``. Every line in and out is logged at INFO.

The link state is kept in ``<state-dir>/<client-id>.json`` (default
``.pblink-state/pblink.server.json``; with ``--state-db`` in a PostgreSQL
table shared by several processes instead, docs/SERVER.md), so stopping the server with Ctrl-C or
SIGTERM and starting it again loses and duplicates no line. One process per
client id: a second process with the same one refuses to start with one line
naming ``--client-id``; to split conn_ids over processes give each its own
(docs/SERVER.md).

From Python::

    from server_apps.s_app import serve
    await serve("localhost", 1883, ids=["1", "2"], stop=stop_event)

``app(server, conn_ids)`` is the same application on a LinkServer of yours;
it is the shape of a server application that ``pblink server --app`` and
``pblink run --server-app`` run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from link_core import names
from server_apps.link_server import (
    Connection,
    LinkClosedError,
    LinkServer,
)
from server_apps.state import StateFileError, state_file_path
from server_apps.store_pg import DEFAULT_TIMEOUT_MS as DEFAULT_DB_TIMEOUT_MS

log = logging.getLogger("pblink.s_app")

DEFAULT_IDS = ("1", "2", "3", "4")
DEFAULT_STATE_DIR = ".pblink-state"
STOP_GRACE_S = 5.0
CLAIM_WAIT_S = 1.0  # app() logs that it serves after this long at most


def reply_for(line: str, server_count: int) -> str | None:
    """The demo's reply to one line, or None when the line is not ``[id, tx, rx]``."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, list) or len(data) != 3:
        return None
    return json.dumps([*data, server_count])


async def _serve_one(claim: asyncio.Task[Connection], writes: set[asyncio.Task[None]]) -> None:
    try:
        conn = await claim
    finally:
        claim.cancel()  # when this task is cancelled first
    log.info("%s: serving", conn.conn_id)
    count = 0
    async for line in conn:
        log.info("%s <- %s", conn.conn_id, line.rstrip("\n"))
        reply = reply_for(line, count + 1)
        if reply is None:
            log.warning("%s: not a [conn_id, tx_count, rx_count] list: %r", conn.conn_id, line)
            continue
        count += 1
        # A line that was read gets its reply even if the app is stopped now:
        # the write runs as its own task, which app() lets finish.
        write = asyncio.create_task(_reply(conn, reply))
        writes.add(write)
        write.add_done_callback(writes.discard)
        await asyncio.shield(write)


async def _reply(conn: Connection, reply: str) -> None:
    await conn.write(reply, qos=True, wait=True)
    log.info("%s -> %s", conn.conn_id, reply)


async def app(server: LinkServer, conn_ids: Sequence[str]) -> None:
    """The demo server application on a started ``server``, until cancelled.

    The callable ``pblink server --app`` and ``pblink run --server-app`` take
    (this one is their default): awaited with the LinkServer and the conn_ids
    to serve. On cancellation, replies being written get ``STOP_GRACE_S``
    (5.0) seconds to finish.
    """
    # One claim per conn_id, each on its own: with a shared state database
    # (LinkServer(state_db=...)) a conn_id another process holds is served once
    # its lease comes free; with a state file every claim is done at once.
    claims = [asyncio.create_task(server.connection(c), name=f"s_app-claim-{c}")
              for c in conn_ids]
    await asyncio.wait(claims, timeout=CLAIM_WAIT_S)
    log.info("demo server on %s, root %r, serving conn_id(s) %s%s",
             server.broker, server.root, " ".join(conn_ids),
             "" if all(c.done() for c in claims) else " (some wait for their lease)")
    writes: set[asyncio.Task[None]] = set()
    tasks = [asyncio.create_task(_serve_one(claim, writes), name=f"s_app-{c}")
             for claim, c in zip(claims, conn_ids, strict=True)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if writes:
            _, pending = await asyncio.wait(writes, timeout=STOP_GRACE_S)
            if pending:
                log.warning("stopped with %d reply(ies) not written", len(pending))
        log.info("demo server stopping")


async def serve(
    host: str = "localhost",
    port: int = 1883,
    *,
    ids: Sequence[str] = DEFAULT_IDS,
    root: str = "pblink",
    username: str | None = None,
    password: str | None = None,
    tls: ssl.SSLContext | bool | None = None,
    client_id: str = "pblink.server",
    state_dir: str | Path | None = DEFAULT_STATE_DIR,
    state_db: str | None = None,
    state_db_timeout_ms: int = DEFAULT_DB_TIMEOUT_MS,
    timeout_ms: int = 1500,
    connect_timeout: float = 10.0,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    application: Callable[[LinkServer, Sequence[str]], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """Run a server application until ``stop`` is set (or the task is cancelled).

    ``ids`` defaults to ``DEFAULT_IDS``, ``("1", "2", "3", "4")``;
    ``state_dir`` to ``DEFAULT_STATE_DIR``, ``".pblink-state"``.
    ``application(server, ids)`` defaults to the demo, ``app``; it is
    cancelled when ``stop`` is set, and if it raises, ``AppError`` is raised
    from its exception (it returning ends the run too).

    ``state_dir=None`` runs without a state file (else
    ``<state_dir>/<client_id>.json``); ``state_db`` (a PostgreSQL URL) keeps
    it in a database that several processes share instead (``state_dir`` is
    then not used; giving both a ``state_dir`` other than the default and
    ``state_db`` is up to the caller: ``pblink server`` refuses it). ``ready``
    is set once the server is started. ``state_db_timeout_ms`` bounds each
    database operation (LinkServer's). The server is told it serves ``ids``
    (LinkServer ``serves``): none of their devices heard before the
    application asks for it is reported as not served. Raises ValueError for an invalid conn_id,
    root or client_id (``server_apps.state.check_client_id``) before
    connecting, and LinkAuthError / LinkRefusedError / BrokerUnreachableError
    from LinkServer when the broker refuses or cannot be reached at start.
    Errors of the server library itself are raised as they are, not as
    ``AppError``: ``StateFileError`` (a damaged stored entry, naming the store
    and the conn_id) and ``StateLostError`` (the server closed itself: its
    state database session was lost; raised even when the application goes
    on running).
    """
    for conn_id in ids:
        names.check_conn_id(conn_id)
    stop = stop or asyncio.Event()
    state_path = (state_file_path(state_dir, client_id)
                  if state_dir is not None and state_db is None else None)
    async with LinkServer(
        host, port, root=root, client_id=client_id, username=username, password=password,
        tls=tls, timeout_ms=timeout_ms, state_path=state_path, state_db=state_db,
        connect_timeout=connect_timeout, serves=ids, state_db_timeout_ms=state_db_timeout_ms,
        serve_hint="serve it with `pblink server --ids ... {conn_id}`",
    ) as server:
        task = asyncio.create_task((application or app)(server, ids), name="server-app")
        stopping = asyncio.create_task(stop.wait())
        failing = asyncio.create_task(server.wait_error())
        if ready is not None:
            ready.set()
        try:
            await asyncio.wait({task, stopping, failing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            failing.cancel()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, LinkClosedError):
                try:
                    await task
                except Exception as exc:
                    if server.error is not None:
                        pass  # raised below: the server closed itself
                    elif isinstance(exc, StateFileError):  # the store's, naming it: not the app's
                        raise
                    else:
                        raise AppError(f"the server application raised "
                                       f"{type(exc).__name__}: {exc}") from exc
        if server.error is not None:
            raise server.error


class AppError(Exception):
    """The server application given to ``serve`` raised (``__cause__``)."""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m server_apps.s_app ARGS`` is ``pblink server ARGS``."""
    from pblink.cli import main as pblink_main

    return pblink_main(["server", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
