"""The demo server application: ``python -m server_apps.s_app`` (also ``pblink server``).

For each conn_id (default 1 2 3 4) it reads lines from the demo Pyboard
application. Each is a JSON list ``[conn_id, tx_count, rx_count]``; the reply is
``[conn_id, tx_count, rx_count, server_count]``, the same three values plus this
server's own per-connection counter (1 for the first reply after start), written
with ``qos=True, wait=True``. Every line in and out is logged at INFO.

The link state is kept in ``<state-dir>/<client-id>.json`` (default
``.pblink-state/pblink.server.json``), so stopping the server with Ctrl-C or
SIGTERM and starting it again loses and duplicates no line. One process per
client id: a second process with the same one refuses to start with one line
naming ``--client-id``; to split conn_ids over processes give each its own
(docs/SERVER.md).

From Python::

    from server_apps.s_app import serve
    await serve("localhost", 1883, ids=["1", "2"], stop=stop_event)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

from server_apps.link_server import (
    Connection,
    LinkClosedError,
    LinkServer,
)

log = logging.getLogger("pblink.s_app")

DEFAULT_IDS = ("1", "2", "3", "4")
DEFAULT_STATE_DIR = ".pblink-state"
STOP_GRACE_S = 5.0


def reply_for(line: str, server_count: int) -> str | None:
    """The demo's reply to one line, or None when the line is not ``[id, tx, rx]``."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, list) or len(data) != 3:
        return None
    return json.dumps([*data, server_count])


async def _serve_one(conn: Connection, stop: asyncio.Event) -> None:
    count = 0
    while not stop.is_set():
        reading = asyncio.ensure_future(conn.readline())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not reading.done():
                reading.cancel()
        if reading not in done or reading.cancelled():
            return
        try:
            line = reading.result()
        except LinkClosedError:
            return
        log.info("%s <- %s", conn.conn_id, line.rstrip("\n"))
        reply = reply_for(line, count + 1)
        if reply is None:
            log.warning("%s: not a [conn_id, tx_count, rx_count] list: %r", conn.conn_id, line)
            continue
        count += 1
        await conn.write(reply, qos=True, wait=True)
        log.info("%s -> %s", conn.conn_id, reply)


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
    timeout_ms: int = 1500,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Run the demo server until ``stop`` is set (or the task is cancelled).

    ``state_dir=None`` runs without a state file. ``ready`` is set once every
    conn_id is being served. Raises LinkAuthError / ConnectionError from
    LinkServer when the broker refuses or cannot be reached at start.
    """
    stop = stop or asyncio.Event()
    state_path = Path(state_dir) / f"{client_id}.json" if state_dir is not None else None
    async with LinkServer(
        host,
        port,
        root=root,
        client_id=client_id,
        username=username,
        password=password,
        tls=tls,
        timeout_ms=timeout_ms,
        state_path=state_path,
        serve_hint="serve it with `pblink server --ids ... {conn_id}`",
    ) as server:
        conns = [await server.connection(conn_id) for conn_id in ids]
        log.info(
            "demo server on %s:%s, root %r, serving conn_id(s) %s",
            host, port, root, " ".join(ids),
        )
        tasks = [
            asyncio.create_task(_serve_one(c, stop), name=f"s_app-{c.conn_id}") for c in conns
        ]
        pending: set[asyncio.Task[None]] = set()
        if ready is not None:
            ready.set()
        try:
            done, _ = await asyncio.wait(
                [*tasks, asyncio.ensure_future(stop.wait())],
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in done:
                exc = None if task.cancelled() else task.exception()
                if exc is not None:
                    raise exc
            # Stopping: let replies being written finish for a moment.
            _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, LinkClosedError):
                    await task
        if pending:
            log.warning("stopped with %d reply(ies) not written", len(pending))
        log.info("demo server stopping")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m server_apps.s_app",
        description="pblink-mqtt demo server: answers each [id, tx, rx] line with "
        "[id, tx, rx, server_count].",
    )
    p.add_argument("--host", default="localhost", help="MQTT broker host (default localhost)")
    p.add_argument("--port", type=int, default=1883, help="MQTT broker port (default 1883)")
    p.add_argument("--root", default="pblink", help="topic root (default pblink)")
    p.add_argument("--user", default=None, help="MQTT user name")
    p.add_argument("--password", default=None, help="MQTT password")
    p.add_argument("--tls", action="store_true", help="connect with TLS (system CA certificates)")
    p.add_argument("--client-id", default="pblink.server", help="MQTT client id")
    p.add_argument(
        "--ids", nargs="+", default=list(DEFAULT_IDS), metavar="ID",
        help="conn_ids to serve (default 1 2 3 4)",
    )
    p.add_argument(
        "--state-dir", default=DEFAULT_STATE_DIR,
        help=f"folder of the state file (default {DEFAULT_STATE_DIR}; '' for none)",
    )
    p.add_argument("--timeout-ms", type=int, default=1500, help="link timeout (default 1500)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


async def _main_async(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await serve(
        args.host,
        args.port,
        ids=args.ids,
        root=args.root,
        username=args.user,
        password=args.password,
        tls=True if args.tls else None,
        client_id=args.client_id,
        state_dir=args.state_dir or None,
        timeout_ms=args.timeout_ms,
        stop=stop,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(_main_async(args))
    except (ConnectionError, ValueError) as exc:  # LinkAuthError, unreachable, bad conn_id
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
