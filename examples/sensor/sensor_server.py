"""The server application of the sensor example: logs readings, answers alarms.

Run it against a broker with ``pblink server --app examples/sensor/sensor_server.py:app``,
or with the Pyboard app on the virtual bench::

    pblink run --board-app examples/sensor/sensor_app.py:Sensor \\
               --server-app examples/sensor/sensor_server.py:app
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from server_apps import Connection, LinkServer

log = logging.getLogger("sensor")


async def serve_device(conn: Connection) -> None:
    async for line in conn:
        kind, _, rest = line.rstrip("\n").partition(" ")
        if kind == "alarm":
            log.warning("%s: alarm %s", conn.conn_id, rest)
            await conn.write(f"alarm {rest} noted")  # qos=True, wait=True
        else:
            log.info("%s: %s", conn.conn_id, line.rstrip("\n"))


async def app(server: LinkServer, conn_ids: Sequence[str]) -> None:
    """Serve every device until cancelled."""
    conns = [await server.connection(conn_id) for conn_id in conn_ids]
    await asyncio.gather(*(serve_device(conn) for conn in conns))
