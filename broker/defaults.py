"""Defaults shared by the broker tooling (no third-party imports here)."""

DEFAULT_ROOT = "pblink"
# A name outside the conn_id alphabet (A-Z a-z 0-9 _ -), so no device can ever be
# registered under the server's user name by accident.
DEFAULT_SERVER_USER = "pblink.server"
# The bridge's client id is "pblink-<conn_id>" (docs/PROTOCOL.md 4.2).
DEFAULT_CLIENT_ID_PREFIX = "pblink-"
# Messages kept for one offline client (Mosquitto: max_queued_messages).
DEFAULT_MAX_QUEUED = 100_000
