"""The server library's exceptions (all importable from ``server_apps``).

Every broker error is a ``ConnectionError``; the state file's errors
(``StateFileError``, ``StateLockedError``) live in :mod:`server_apps.state`.
"""

from __future__ import annotations


class LinkClosedError(ConnectionError):
    """The LinkServer was closed (or not yet entered)."""


class StateLostError(LinkClosedError):
    """The LinkServer closed itself: it lost its state database's session (ended,
    or stalled past ``state_db_timeout_ms``).

    Raised instead of :class:`LinkClosedError` by every method of a server
    (and its Connections) that did so; ``LinkServer.error`` holds it too. The
    process acknowledges nothing more; once the database has ended the
    session, the other processes still connected to it take its conn_ids
    over (after a restart of the database itself every process stops: a
    supervisor restarts them, docs/SERVER.md). The message names the database
    (password hidden) and how many leases the process held.
    """


class BrokerUnreachableError(ConnectionError):
    """No MQTT connection could be opened to the broker at start."""


class LinkRefusedError(ConnectionError):
    """The broker answered CONNECT with a refusal."""

    def __init__(self, broker: str, reason: str) -> None:
        super().__init__(f"MQTT broker {broker} refused the connection: {reason}")
        self.broker = broker
        self.reason = reason


class LinkAuthError(LinkRefusedError):
    """The broker refused the credentials (bad user name or password, not authorised)."""


class ServerIdentityError(ConnectionError):
    """Another running process is connected to the broker as this server's client id."""
