"""What the `pblink` commands share: errors and exit codes, logging, broker options.

A command module raises `CliError(message, code)` for anything the user can fix;
`pblink.cli.main` prints it as one line (`pblink <command>: error: <message>`) on
stderr and exits with `code`. No traceback for expected failures.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Exit codes (documented in `pblink --help`).
EXIT_OK = 0
EXIT_ERROR = 1  # anything else that went wrong
EXIT_USAGE = 2  # bad arguments (argparse uses 2 too), e.g. an invalid conn_id
EXIT_UNREACHABLE = 3  # the broker cannot be reached
EXIT_REFUSED = 4  # the broker refused the connection (credentials, not authorised)
EXIT_TIMEOUT = 5  # what we waited for did not happen in time (e.g. no ack)

EXIT_CODES_HELP = (
    "exit status: 0 ok, 1 error, 2 bad arguments (e.g. an invalid conn_id), "
    "3 broker unreachable, 4 broker refused the connection (credentials), 5 timed out"
)


class CliError(Exception):
    """An expected failure: a one-line message and an exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def verbosity_parent() -> argparse.ArgumentParser:
    """`-v` accepted after the command too (`pblink tail -v dev1`)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="more logging on stderr (repeatable)")
    return parent


def add_command(
    subparsers: Any, name: str, *, help: str, description: str | None = None, **kwargs: Any
) -> argparse.ArgumentParser:
    """Create the parser of one `pblink` command (use from a module's `register()`)."""
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help, description=description or help, parents=[verbosity_parent()], **kwargs
    )
    return parser


def setup_logging(verbosity: int) -> None:
    """0: warnings; 1 (-v): info; 2 (-vv): debug; 3 (-vvv): libraries' debug too."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet = logging.WARNING if verbosity < 2 else logging.INFO if verbosity == 2 else logging.DEBUG
    for name in ("amqtt", "transitions", "pblink.server.paho"):
        logging.getLogger(name).setLevel(quiet)
    # paho logs e.g. "Client is not connected" at ERROR while disconnecting; the
    # commands report connection problems themselves, in one line.
    logging.getLogger("pblink.paho").setLevel(logging.CRITICAL if verbosity < 2 else quiet)


def check_conn_id(conn_id: str) -> str:
    """The conn_id, or CliError(EXIT_USAGE) with link_core's explanation."""
    from pblink import _link

    try:
        return _link.check_conn_id(conn_id)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def check_root(root: str) -> str:
    from pblink import _link

    try:
        return _link.check_root(root)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


# -- broker connection options --------------------------------------------------

DEFAULT_HOST = "localhost"
DEFAULT_PORT = 1883


def add_broker_options(parser: argparse.ArgumentParser, *, user_help: str | None = None) -> None:
    """--host --port --user --password --root --tls --cafile --connect-timeout.

    Defaults come from the environment when set: PBLINK_HOST, PBLINK_PORT,
    PBLINK_USER, PBLINK_PASSWORD (better than --password, which `ps` shows).
    """
    env = os.environ
    group = parser.add_argument_group("broker")
    group.add_argument("--host", default=env.get("PBLINK_HOST", DEFAULT_HOST),
                       help="MQTT broker host (default $PBLINK_HOST or %(default)s)")
    group.add_argument("--port", type=int, default=int(env.get("PBLINK_PORT", DEFAULT_PORT)),
                       help="MQTT broker port (default $PBLINK_PORT or %(default)s)")
    group.add_argument("--user", default=env.get("PBLINK_USER"),
                       help=user_help or "MQTT user name (default $PBLINK_USER; none: anonymous)")
    group.add_argument("--password", default=env.get("PBLINK_PASSWORD"),
                       help="MQTT password (default $PBLINK_PASSWORD, which `ps` does not show)")
    group.add_argument("--root", default="pblink", help="topic root (default %(default)s)")
    group.add_argument("--tls", action="store_true", help="connect with TLS")
    group.add_argument("--cafile", help="CA certificate file for --tls (default: system CAs)")
    group.add_argument("--connect-timeout", type=float, default=5.0, metavar="S",
                       help="seconds to wait for the broker (default %(default)s)")


@dataclass
class BrokerOptions:
    host: str
    port: int
    user: str | None
    password: str | None
    root: str
    tls: bool
    cafile: str | None
    connect_timeout: float

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BrokerOptions:
        return cls(args.host, args.port, args.user, args.password, check_root(args.root),
                   bool(args.tls or args.cafile), args.cafile, args.connect_timeout)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        try:
            return ssl.create_default_context(cafile=self.cafile)
        except (OSError, ssl.SSLError) as exc:
            raise CliError(f"cannot load CA file {self.cafile}: {exc}") from None


def connect_paho(
    opts: BrokerOptions,
    client_id: str,
    *,
    setup: Callable[[Any], None] | None = None,
    on_connected: Callable[[Any], None] | None = None,
    on_lost: Callable[[str], None] | None = None,
) -> Any:
    """A connected paho client (MQTT 3.1.1, clean session, network thread running).

    `setup(client)` runs before connecting (set on_message, on_subscribe, ... there).
    `on_connected(client)` runs in paho's thread after every successful CONNACK
    (subscribe there: a clean session forgets subscriptions across reconnects);
    `on_lost(reason)` after a connection that had been up is lost (paho reconnects).
    Raises CliError with EXIT_UNREACHABLE or EXIT_REFUSED and a one-line reason.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                         protocol=mqtt.MQTTv311)
    if opts.user is not None:
        client.username_pw_set(opts.user, opts.password)
    context = opts.ssl_context()
    if context is not None:
        client.tls_set_context(context)
    client.reconnect_delay_set(1, 30)
    client.connect_timeout = opts.connect_timeout
    client.enable_logger(logging.getLogger("pblink.paho"))
    first = threading.Event()
    result: list[Any] = []
    was_up = threading.Event()

    def _on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not first.is_set():
            result.append(reason)
            first.set()
        if reason.is_failure:
            return
        was_up.set()
        if on_connected is not None:
            on_connected(c)

    def _on_disconnect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if was_up.is_set() and on_lost is not None:
            on_lost(str(reason))

    client.on_connect = _on_connect
    client.on_disconnect = _on_disconnect
    if setup is not None:
        setup(client)
    try:
        client.connect(opts.host, opts.port, keepalive=30)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise CliError(f"cannot reach MQTT broker {opts.address}: {_os_reason(exc, opts)}",
                       EXIT_UNREACHABLE) from None
    client.loop_start()
    if not first.wait(opts.connect_timeout):
        stop_paho(client)
        raise CliError(f"MQTT broker {opts.address} did not answer CONNECT within "
                       f"{opts.connect_timeout:g} s", EXIT_UNREACHABLE)
    reason = result[0]
    if reason.is_failure:
        stop_paho(client)
        who = f"user {opts.user!r}" if opts.user is not None else "anonymous access"
        raise CliError(f"MQTT broker {opts.address} refused the connection ({who}): "
                       f"{str(reason).lower()}", EXIT_REFUSED)
    logging.getLogger("pblink").info("connected to MQTT broker %s as %s", opts.address, client_id)
    return client


def _os_reason(exc: BaseException, opts: BrokerOptions) -> str:
    if isinstance(exc, socket.gaierror):
        return f"unknown host {opts.host!r}"
    if isinstance(exc, TimeoutError):
        return f"timed out after {opts.connect_timeout:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def stop_paho(client: Any) -> None:
    client.on_disconnect = None
    try:
        client.disconnect()
    finally:
        client.loop_stop()


def random_client_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(4).hex()}"
