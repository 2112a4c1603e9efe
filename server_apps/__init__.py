"""Server-side pblink-mqtt: the asyncio link library and the demo server app.

``LinkServer`` (one MQTT connection, many devices) and ``Connection`` (one
device's lines) implement docs/PROTOCOL.md sections 3 to 5 on the server end;
``python -m server_apps.s_app`` is the demo server application.
Modules: ``link_server`` (LinkServer: the paho bridge, routing, group commit),
``connection`` (Connection: one device's protocol), ``lines`` (the line queue
and ``async for``), ``state`` (the durable state store), ``errors``.
"""

from server_apps.connection import Connection
from server_apps.errors import (
    BrokerUnreachableError,
    LinkAuthError,
    LinkClosedError,
    LinkRefusedError,
    ServerIdentityError,
    StateLostError,
)
from server_apps.link_server import LinkServer, MQTTv5, MQTTv311
from server_apps.state import StateFileError, StateLockedError

__all__ = [
    "BrokerUnreachableError",
    "Connection",
    "LinkAuthError",
    "LinkClosedError",
    "LinkRefusedError",
    "LinkServer",
    "MQTTv5",
    "MQTTv311",
    "ServerIdentityError",
    "StateFileError",
    "StateLockedError",
    "StateLostError",
]
