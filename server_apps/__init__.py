"""Server-side pblink-mqtt: the asyncio link library and the demo server app.

``LinkServer`` (one MQTT connection, many devices) and ``Connection`` (one
device's lines) implement docs/PROTOCOL.md sections 3 to 5 on the server end;
``python -m server_apps.s_app`` is the demo server application.
"""

from server_apps.link_server import (
    BrokerUnreachableError,
    Connection,
    LinkAuthError,
    LinkClosedError,
    LinkRefusedError,
    LinkServer,
    MQTTv5,
    MQTTv311,
    ServerIdentityError,
)
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
]
