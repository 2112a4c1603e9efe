"""`pblink broker`: run the embedded amqtt broker (the default when there is no Mosquitto)."""

from __future__ import annotations

import argparse
from typing import Any

from pblink.common import LOCAL_KINDS, add_command

DESCRIPTION = """\
Run the embedded amqtt broker until Ctrl-C or SIGTERM.

Without --password-file every client is accepted (a development broker).
With it, only the users in the file (`pblink passwd --amqtt FILE USER`; a
line that is not user:<argon2 hash> is refused at start, naming its number); with
--acl (which needs --password-file, with each --server-user, default
pblink.server, in it), each device user (user name = conn_id) is confined to
ROOT/<user>/# and the server users get ROOT/#. For production use Mosquitto (docker-compose.yml,
broker/mosquitto/). amqtt speaks MQTT 3.1.1 only."""


def register(subparsers: Any) -> None:
    from broker.embedded import add_arguments

    parser = add_command(subparsers, "broker", exits=LOCAL_KINDS,
                         help="run the embedded amqtt MQTT broker",
                         description=DESCRIPTION)
    add_arguments(parser)
    parser.set_defaults(func=run, log_boost=1)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from broker.embedded import BrokerStartError, broker_from_args, check_args, serve
    from pblink.common import CliError, UsageError

    try:  # --root, --server-user, every line of --password-file: before anything starts
        check_args(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        asyncio.run(serve(broker_from_args(args)))
    except BrokerStartError as exc:
        raise CliError(f"cannot start the broker on {args.host}:{args.port}: {exc}") from None
    return 0
