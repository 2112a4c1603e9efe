"""What the `pblink` commands share: errors and exit codes, argument types,
logging, broker options.

A command module raises a `CliError` (or one of its kinds below) for anything
the user can fix; `pblink.cli.main` prints it as one line (`pblink <command>:
error: <message>`) on stderr and exits with its code. No traceback for
expected failures. `error_from(exc)` is the one place that maps the library's
exceptions (server_apps, OSError, ...) onto these kinds.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from pblink import settings

# Exit codes (documented in `pblink --help`, built from ERROR_KINDS below).
EXIT_OK = 0
EXIT_ERROR = 1  # anything else that went wrong
EXIT_USAGE = 2  # bad arguments (argparse uses 2 too), e.g. an invalid conn_id
EXIT_UNREACHABLE = 3  # the broker cannot be reached
EXIT_REFUSED = 4  # the broker refused the connection (credentials, not authorised)
EXIT_TIMEOUT = 5  # what we waited for did not happen in time (e.g. no ack)


class CliError(Exception):
    """An expected failure: a one-line message and an exit code."""

    code = EXIT_ERROR
    what = "error"

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(_one_line(message))
        if code is not None:
            self.code = code


class UsageError(CliError):
    code = EXIT_USAGE
    what = "bad arguments (e.g. an invalid conn_id or an out-of-range number)"


class UnreachableError(CliError):
    code = EXIT_UNREACHABLE
    what = "broker unreachable"


class RefusedError(CliError):
    code = EXIT_REFUSED
    what = "broker refused the connection (credentials, not authorised)"


class TimedOutError(CliError):
    code = EXIT_TIMEOUT
    what = "timed out"


ERROR_KINDS: tuple[type[CliError], ...] = (
    CliError, UsageError, UnreachableError, RefusedError, TimedOutError)
# The kinds a command that never connects to a broker can end with; one that
# runs a tool with a time limit (pblink install: mpremote, mpy-cross) can also time out
LOCAL_KINDS: tuple[type[CliError], ...] = (CliError, UsageError)
TOOL_KINDS: tuple[type[CliError], ...] = (CliError, UsageError, TimedOutError)


def exit_codes_help(kinds: tuple[type[CliError], ...] = ERROR_KINDS) -> str:
    """The "exit status: ..." line of a command's --help, for the error kinds it can end with."""
    return "exit status: 0 ok, " + ", ".join(f"{kind.code} {kind.what}" for kind in kinds)


EXIT_CODES_HELP = exit_codes_help()


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def error_from(exc: BaseException) -> CliError | None:
    """The CliError for an exception a command let through, or None (a bug: traceback).

    The one place that maps the kinds of failure to exit codes: the server
    library's broker errors, invalid names (ValueError from link_core's checks),
    file errors, timeouts.
    """
    if isinstance(exc, CliError):
        return exc
    from server_apps import (
        BrokerUnreachableError,
        LinkRefusedError,
        ServerIdentityError,
        StateFileError,
        StateLostError,
    )

    if isinstance(exc, LinkRefusedError):
        return RefusedError(str(exc))
    if isinstance(exc, BrokerUnreachableError):
        return UnreachableError(str(exc))
    # a damaged store, another process's identity, a lost state database session
    if isinstance(exc, (StateFileError, ServerIdentityError, StateLostError)):
        return CliError(str(exc))
    if isinstance(exc, TimeoutError):
        return TimedOutError(str(exc) or "timed out")
    if isinstance(exc, subprocess.TimeoutExpired):  # a tool run with a time limit
        cmd = exc.cmd if isinstance(exc.cmd, str) else " ".join(map(str, exc.cmd[:2]))
        return TimedOutError(f"{cmd} did not finish within {exc.timeout:g} s")
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return CliError(f"{where}{exc.strerror}")
    return None


class Parser(argparse.ArgumentParser):
    """argparse with the one-line error of every other failure (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_one_line(message)} "
                              f"(see `{self.prog} --help`)\n")


# -- argument types: every number and address is parsed here -------------------


def _num(value: float | None) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def number(kind: type[int] | type[float], low: float | None = None, high: float | None = None,
           *, above: float | None = None) -> Callable[[str], Any]:
    """An argparse type: `kind` (int or float) within [low, high] (or > above)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be above {above:g}")
        if (low is not None and value < low) or (high is not None and value > high):
            span = (f"{_num(low)} to {_num(high)}" if low is not None and high is not None
                    else f"at least {_num(low)}" if low is not None else f"at most {_num(high)}")
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {span}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def setting(name: str) -> Callable[[str], Any]:
    """An argparse type for an option that carries device setting `name` (a row of
    link_core/schema.py): an int row takes an integer; the value must obey the row, and a
    bad one gets the row's one-line text (`link_core.control.check_setting`, as on the
    boards, in `pblink install` and `LinkServer`), e.g. ``argument --timeout-ms:
    timeout_ms 5 is not an int from 200 to 3600000`` (exit 2)."""
    row = settings.BY_NAME[name]

    def parse(text: str) -> Any:
        value: Any = text
        if row.type == "int":
            try:
                value = int(text)
            except ValueError:
                pass  # the row's text names the setting and its range
        try:
            return settings.check_setting(name, value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name  # argparse names the type in its messages
    return parse


BROKER_PORT = setting("port")  # an MQTT broker's port, the devices' setting "port"
SECONDS = number(float, above=0)  # a duration or timeout: > 0
# Devices on the virtual bench, conn_ids 1..N: `pblink run`/`demo --devices` and the pytest
# plugin's `devices` (pblink.testing.AppBench); the live view's keys 1-9 choose the device
MAX_DEVICES = 9
COUNT = number(int, 1)  # how many of something: >= 1
MILLISECONDS = number(int, 1)
# a link's timeout_ms: the range of link_core/schema.py, as LinkServer and the boards check it
LINK_TIMEOUT_MS = setting("timeout_ms")


def _address(text: str, port_type: Callable[[str], int]) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, port_type(port)


def address_text(host: str, port: int) -> str:
    """HOST:PORT as typed and as in a URL: an IPv6 host in brackets ([::1]:8080)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def host_port(text: str) -> tuple[str, int]:
    """An argparse type for a broker address: HOST:PORT ([v6]:PORT too) -> (host, port),
    the port checked as --port checks it (the devices' setting "port", 1 to 65535)."""
    host, port = _address(text, BROKER_PORT)
    return setting("host")(host), port


LISTEN_PORT = number(int, 0, 65535)  # 0: the OS picks a free port


def listen_address(text: str) -> tuple[str, int]:
    """An argparse type for where to listen: HOST:PORT, port 0 to 65535 (0: any free)."""
    return _address(text, LISTEN_PORT)


def verbosity_parent() -> argparse.ArgumentParser:
    """`-v` accepted after the command too (`pblink tail -v dev1`)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="more logging on stderr (repeatable)")
    return parent


def add_command(
    subparsers: Any, name: str, *, help: str, description: str | None = None,
    exits: tuple[type[CliError], ...] | None = ERROR_KINDS, **kwargs: Any
) -> argparse.ArgumentParser:
    """Create the parser of one `pblink` command (use from a module's `register()`).

    `exits`: the error kinds the command can end with, listed with their exit
    codes at the end of its --help (`LOCAL_KINDS` for a command that never
    connects to a broker); None when the description states the exit codes itself.
    """
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    epilog = kwargs.pop("epilog", None)
    if exits is not None:
        codes = exit_codes_help(exits)
        epilog = f"{epilog}\n\n{codes}" if epilog else codes
    kwargs["epilog"] = epilog
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help, description=description or help, parents=[verbosity_parent()], **kwargs
    )
    return parser


def setup_logging(verbosity: int) -> None:
    """0: warnings; 1 (-v): info; 2 (-vv): debug; 3 (-vvv): libraries' debug too."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    quiet = logging.WARNING if verbosity < 2 else logging.INFO if verbosity == 2 else logging.DEBUG
    for name in ("amqtt", "transitions", "pblink.server.paho"):
        logging.getLogger(name).setLevel(quiet)
    # paho logs e.g. "Client is not connected" at ERROR while disconnecting; the
    # commands report connection problems themselves, in one line.
    logging.getLogger("pblink.paho").setLevel(logging.CRITICAL if verbosity < 2 else quiet)


def check_conn_id(conn_id: str) -> str:
    """The conn_id, or UsageError with link_core's explanation."""
    from link_core.names import check_conn_id as check

    try:
        return check(conn_id)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def check_root(root: str) -> str:
    from link_core.names import check_root as check

    try:
        return check(root)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def client_id(text: str) -> str:
    """An argparse type for a server's MQTT client id (`pblink server --client-id`):
    `server_apps.state.check_client_id`, the rule LinkServer applies (exit 2)."""
    from server_apps.state import check_client_id

    try:
        return check_client_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


client_id.__name__ = "client id"  # argparse names the type in its messages


def check_state_file(state_dir: str, client_id: str) -> Path:
    """The state file `<state_dir>/<client_id>.json` (`server_apps.state.state_file_path`),
    or UsageError naming --client-id when its name cannot be a file name."""
    from server_apps.state import state_file_path

    try:
        return state_file_path(state_dir, client_id)
    except ValueError as exc:
        raise UsageError(f"--client-id: {exc}") from None


# -- broker connection options --------------------------------------------------

DEFAULT_HOST = "localhost"
DEFAULT_PORT = 1883
DEFAULT_ROOT = "pblink"
BROKER_ENV_HELP = """\
environment: PBLINK_HOST, PBLINK_PORT, PBLINK_USER, PBLINK_PASSWORD (better than
--password, which `ps` shows), PBLINK_ROOT and PBLINK_CAFILE give the defaults of
the broker options."""


def add_broker_options(parser: argparse.ArgumentParser, *, embedded: bool = False,
                       user_help: str | None = None, root_help: str | None = None) -> None:
    """The broker options of every command that connects to a broker:
    --broker HOST:PORT (or --host, --port), --user, --password, --root, --tls,
    --cafile, --connect-timeout, with the environment defaults of BROKER_ENV_HELP.
    Read them with `BrokerOptions.from_args(args)`.

    `embedded=True` (commands that start their own broker unless told otherwise):
    `external_broker(args)` is None, and PBLINK_HOST/PBLINK_PORT are not read,
    unless --broker, --host or --port is given (--port alone: the host is
    $PBLINK_HOST).
    """
    group = parser.add_argument_group("broker")
    group.add_argument("--broker", type=host_port, metavar="HOST:PORT",
                       help="use this MQTT broker instead of starting the embedded one"
                       if embedded else "MQTT broker address, instead of --host and --port")
    group.add_argument("--host", type=setting("host"), help="MQTT broker host" + (
        "" if embedded else f" (default $PBLINK_HOST or {DEFAULT_HOST})"))
    group.add_argument("--port", "--broker-port", dest="port", type=BROKER_PORT,
                       help="MQTT broker port, with --host or $PBLINK_HOST (default "
                       f"{DEFAULT_PORT})" if embedded else
                       f"MQTT broker port (default $PBLINK_PORT or {DEFAULT_PORT})")
    group.add_argument("--user", default=os.environ.get("PBLINK_USER"),
                       help=user_help or "MQTT user name (default $PBLINK_USER; none: anonymous)")
    group.add_argument("--password", default=os.environ.get("PBLINK_PASSWORD"),
                       help="MQTT password (default $PBLINK_PASSWORD, which `ps` does not show)")
    group.add_argument("--root", default=os.environ.get("PBLINK_ROOT", DEFAULT_ROOT),
                       help=root_help or "topic root (default $PBLINK_ROOT or %(default)s)")
    group.add_argument("--tls", action="store_true", help="connect with TLS")
    group.add_argument("--cafile", default=os.environ.get("PBLINK_CAFILE"),
                       help="CA certificate file, implies --tls (default $PBLINK_CAFILE; "
                       "none: the system's CAs)")
    group.add_argument("--connect-timeout", type=SECONDS, default=5.0, metavar="S",
                       help="seconds to wait for the broker (default %(default)s)")
    parser.set_defaults(embedded_broker=embedded)


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
        """The options of `add_broker_options`, checked (UsageError)."""
        if args.broker is not None:
            if args.host is not None or args.port is not None:
                raise UsageError("give --broker HOST:PORT or --host/--port, not both")
            host, port = args.broker
        else:
            env = {} if args.embedded_broker and args.host is None else os.environ
            host = args.host or env.get("PBLINK_HOST") or DEFAULT_HOST
            port = args.port
            if port is None:
                try:
                    port = BROKER_PORT(env.get("PBLINK_PORT", str(DEFAULT_PORT)))
                except argparse.ArgumentTypeError as exc:
                    raise UsageError(f"PBLINK_PORT: {exc}") from None
        try:  # the devices' rules (link_core/schema.py), as LinkServer applies them
            settings.check_setting("host", host)
            settings.check_login(args.user, args.password)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if args.cafile is not None and not os.path.isfile(args.cafile):
            raise UsageError(f"CA file {args.cafile}: no such file")
        return cls(host, port, args.user, args.password, check_root(args.root),
                   bool(args.tls or args.cafile), args.cafile, args.connect_timeout)

    @property
    def address(self) -> str:
        return address_text(self.host, self.port)

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        try:
            return ssl.create_default_context(cafile=self.cafile)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load CA file {self.cafile}: {exc}") from None


def external_broker(args: argparse.Namespace) -> BrokerOptions | None:
    """For `add_broker_options(embedded=True)`: the broker the user named, or
    None to start the embedded one."""
    if args.broker is None and args.host is None:
        if args.port is None:
            return None
        if not os.environ.get("PBLINK_HOST"):
            raise UsageError("--port/--broker-port needs --host or $PBLINK_HOST "
                             "(or give --broker HOST:PORT)")
        args.host = os.environ["PBLINK_HOST"]  # the broker the user named, at this port
    return BrokerOptions.from_args(args)


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
    Raises UnreachableError or RefusedError with a one-line reason.
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
        raise UnreachableError(f"cannot reach MQTT broker {opts.address}: "
                               f"{_os_reason(exc, opts)}") from None
    client.loop_start()
    if not first.wait(opts.connect_timeout):
        stop_paho(client)
        raise UnreachableError(f"MQTT broker {opts.address} did not answer CONNECT within "
                               f"{opts.connect_timeout:g} s")
    reason = result[0]
    if reason.is_failure:
        stop_paho(client)
        who = f"user {opts.user!r}" if opts.user is not None else "anonymous access"
        hint = ""
        if opts.user is not None and not opts.user.startswith(CLIENT_ID_PREFIX) and \
                client_id != f"pblink-{opts.user}":
            # The broker's ACL (broker/): a device's user name is its conn_id and
            # is let in only as the device's own client id, pblink-<conn_id>.
            hint = (f" (device credentials only work with the device's client id "
                    f"pblink-{opts.user}; use the server's credentials)")
        raise RefusedError(f"MQTT broker {opts.address} refused the connection ({who}): "
                           f"{str(reason).lower()}{hint}")
    logging.getLogger("pblink").info("connected to MQTT broker %s as %s", opts.address, client_id)
    return client


def probe_broker(opts: BrokerOptions, client_id: str) -> None:
    """Connect and disconnect once: UnreachableError / RefusedError now rather
    than a run that cannot work."""
    stop_paho(connect_paho(opts, client_id))


def _os_reason(exc: BaseException, opts: BrokerOptions) -> str:
    if isinstance(exc, socket.gaierror):
        return f"unknown host {opts.host!r}"
    if opts.tls and isinstance(exc, (TimeoutError, ssl.SSLError)) and _tcp_connects(opts):
        return (f"TLS handshake failed ({_short(exc, opts)}): is {opts.address} a TLS "
                "listener?")
    return _short(exc, opts)


def _tcp_connects(opts: BrokerOptions) -> bool:
    """Whether a plain TCP connection to the broker succeeds (a TLS failure then
    is the handshake's, not the network's)."""
    try:
        socket.create_connection((opts.host, opts.port), timeout=opts.connect_timeout).close()
    except OSError:
        return False
    return True


def _short(exc: BaseException, opts: BrokerOptions) -> str:
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


CLIENT_ID_PREFIX = "pblink."


def random_client_id(tool: str) -> str:
    """A fresh MQTT client id for one of the tools: ``pblink.<tool>-<8 hex digits>``.

    A device's bridge connects as ``pblink-<conn_id>`` (PROTOCOL.md 4.2) and a
    conn_id never holds a ``.`` (link_core/names.py), so an id starting with
    ``pblink.`` can never take over a device's session (the broker drops the
    older of two clients with one id, MQTT 3.1.1 section 3.1.4) nor fall under
    the broker's device-id rules; the server's default ``pblink.server`` is in
    this namespace too. ``tool``: a short word (``monitor``, ``tail``, ...)."""
    return f"{CLIENT_ID_PREFIX}{tool}-{os.urandom(4).hex()}"


def output_file(text: str) -> Path:
    """An argparse type for a file a command writes at the end of a (long) run.

    Checked now, so a run is never lost to a path that cannot be written: not
    an existing folder, not an existing file without write permission, and a
    file can be created in its folder (tried with a temporary file, which also
    catches read-only and pseudo file systems such as /proc). Missing parent
    folders are created (the commands' --help says so). Raises
    argparse.ArgumentTypeError (exit 2) with a one-line reason."""
    import tempfile

    path = Path(text).expanduser()
    if not text or path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text}: no permission to write it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".pblink-check-"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(
            f"{text}: cannot write a file in {path.parent}: {exc.strerror or exc}") from None
    return path


def output_folder(text: str) -> str:
    """An argparse type for a folder a command writes into (created with its
    parents when the run starts, as `pblink run --workdir` and `pblink server
    --state-dir` do). Checked now and nothing created: not an existing file, not
    under one, and writable (the folder, or its nearest existing parent).
    Raises argparse.ArgumentTypeError (exit 2) with a one-line reason."""
    if not text:
        raise argparse.ArgumentTypeError("'' is not a folder name")
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: cannot create it: {existing} is a file, "
                                         "not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == path:
            raise argparse.ArgumentTypeError(f"{text}: no permission to write in it")
        raise argparse.ArgumentTypeError(f"{text}: cannot create it: no permission to write "
                                         f"in {existing}")
    return text

