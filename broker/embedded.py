"""The embedded amqtt broker: the default broker when there is no Mosquitto/Docker.

In process::

    async with EmbeddedBroker("127.0.0.1", 0, users={"pblink.server": "pw", "dev1": "pw1"},
                              acl=True) as broker:
        print(broker.port)

As a process (what `pblink broker` and tests/conftest.py run)::

    python -m broker.embedded --host 127.0.0.1 --port 1883 [--password-file F [--acl]]

SIGTERM and SIGINT stop it cleanly (exit status 0).

Without a password file every client is accepted. With one (lines
`user:<argon2 hash>`, written by `pblink passwd --amqtt F` or
`broker.credentials.add_amqtt_user`), only its users get in. With `acl` (which
needs passwords, each server user among their users), each device user is
confined to `<root>/<user>/#` and the server users get `<root>/#` (see
broker/plugins.py for the rules and what amqtt cannot do).

amqtt 0.12.1 facts to keep in mind (broker/README.md has the measured list):
MQTT 3.1.1 only; the last will is not sent for a client that merely goes silent;
messages queued for an offline session arrive with retain=1; a refused CONNECT
can still wipe the persistent session of the client id it names.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import shutil
import signal
import sys
import tempfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from broker.defaults import (
    DEFAULT_CLIENT_ID_PREFIX,
    DEFAULT_MAX_QUEUED,
    DEFAULT_ROOT,
    DEFAULT_SERVER_USER,
)
from link_core.names import check_root
from pblink.common import BROKER_PORT, COUNT

log = logging.getLogger("broker.embedded")  # not __main__ under `python -m`

_PLUGINS = "broker.plugins"


class BrokerStartError(RuntimeError):
    """The broker could not start (port in use, unreadable password file, ...)."""


def build_config(
    host: str,
    port: int,
    *,
    password_file: str | Path | None = None,
    acl: bool = False,
    server_users: Sequence[str] = (DEFAULT_SERVER_USER,),
    root: str = DEFAULT_ROOT,
    device_client_id_prefix: str | None = DEFAULT_CLIENT_ID_PREFIX,
    max_queued: int = DEFAULT_MAX_QUEUED,
    session_expiry_s: int | None = 14 * 24 * 3600,
) -> dict[str, Any]:
    """The amqtt config dict for these options (plugins keyed by dotted path)."""
    plugins: dict[str, Any] = {}
    if password_file is not None:
        plugins["amqtt.plugins.authentication.FileAuthPlugin"] = {
            "password_file": str(password_file)}
    else:
        plugins[f"{_PLUGINS}.OpenAuthPlugin"] = {}
    if acl:
        plugins[f"{_PLUGINS}.DeviceACLPlugin"] = {
            "root": root,
            "server_users": list(server_users),
            "device_client_id_prefix": device_client_id_prefix,
        }
    plugins[f"{_PLUGINS}.QueueLimitPlugin"] = {"max_queued": max_queued}
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "session_expiry_interval": session_expiry_s,
        "plugins": plugins,
    }


def missing_server_user(server_users: Sequence[str], users: Collection[str]) -> str | None:
    """Why the ACL's server users do not fit the password users (None: they do).

    A server user who is not a password user cannot log in, and no one would
    have the whole topic root (the pblink server could not serve any device).
    """
    for user in server_users:
        if user not in users:
            return (f"server user {user!r} is not one of its users (add it with "
                    f"`pblink passwd --server --amqtt FILE {user}`)")
    return None


class EmbeddedBroker:
    """An amqtt broker in this process's event loop; `start()`/`stop()` may repeat."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        users: Mapping[str, str] | None = None,
        password_file: str | Path | None = None,
        acl: bool = False,
        server_users: Sequence[str] | None = None,
        root: str = DEFAULT_ROOT,
        device_client_id_prefix: str | None = DEFAULT_CLIENT_ID_PREFIX,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        """``server_users`` (default ``pblink.server``) goes with ``acl=True``, which
        needs ``users`` or ``password_file`` with each server user in it (ValueError
        here for ``users``; BrokerStartError at start for a file's)."""
        if users is not None and password_file is not None:
            raise ValueError("give users or password_file, not both")
        if server_users is not None and not acl:
            raise ValueError("server_users goes with acl=True (without it every client may "
                             "use every topic)")
        if acl and users is None and password_file is None:
            raise ValueError("acl=True needs users or password_file: it confines each user "
                             "by name, and without passwords any client can claim any name")
        server_users = tuple(server_users) if server_users is not None else (DEFAULT_SERVER_USER,)
        if acl and users is not None and (problem := missing_server_user(server_users, users)):
            raise ValueError(f"users: {problem}")
        check_root(root)  # the devices' and the server's rule (link_core/names.py)
        self.host = host
        self.port = port  # 0: any free port, fixed at the first start (restarts keep it)
        self._users = dict(users) if users is not None else None
        self._password_file = Path(password_file) if password_file is not None else None
        self._tmpdir: str | None = None
        self._options: dict[str, Any] = {
            "acl": acl,
            "server_users": server_users,
            "root": root,
            "device_client_id_prefix": device_client_id_prefix,
            "max_queued": max_queued,
        }
        self._broker: Any = None

    @property
    def running(self) -> bool:
        return self._broker is not None

    def _password_path(self) -> Path | None:
        if self._users is None:
            return self._password_file
        if self._tmpdir is None:
            from broker.credentials import write_amqtt_users

            self._tmpdir = tempfile.mkdtemp(prefix="pblink-amqtt-")
            path = Path(self._tmpdir) / "passwd"
            write_amqtt_users(path, self._users)
        return Path(self._tmpdir) / "passwd"

    async def start(self) -> None:
        """Listen; raises BrokerStartError (with the reason) when that fails."""
        if self._broker is not None:
            return
        from amqtt.broker import Broker  # type: ignore[import-untyped]

        password_path = self._password_path()
        if self._password_file is not None:  # a file of the user's: every line usable
            from broker.credentials import CredentialsError, read_amqtt_file

            try:
                file_users = read_amqtt_file(self._password_file)
            except CredentialsError as exc:
                raise BrokerStartError(f"password file {exc}") from None
            if self._options["acl"] and (problem := missing_server_user(
                    self._options["server_users"], file_users)):
                raise BrokerStartError(f"password file {self._password_file}: {problem}")
        config = build_config(self.host, self.port,
                              password_file=password_path, **self._options)
        amqtt_log = logging.getLogger("amqtt.broker")
        amqtt_log.addFilter(_no_startup_traceback)
        try:
            broker = Broker(config)
            await broker.start()
        except Exception as exc:  # amqtt wraps OSError etc. in BrokerError/PluginInitError
            raise BrokerStartError(_reason(exc)) from exc
        finally:
            amqtt_log.removeFilter(_no_startup_traceback)
        self._broker = broker
        self.port = self._bound_port(broker)
        log.info("amqtt broker listening on %s:%d (%s%s)", self.host, self.port,
                 f"password file {password_path}" if password_path else "no passwords",
                 ", per-device topic confinement" if self._options["acl"] else "")

    def _bound_port(self, broker: Any) -> int:
        if self.port:
            return self.port
        # port 0: ask the listening socket (amqtt 0.12.1 keeps it in _servers)
        try:
            server = broker._servers["default"].instance
            return int(server.sockets[0].getsockname()[1])
        except (AttributeError, KeyError, IndexError):  # pragma: no cover - amqtt internals moved
            raise BrokerStartError("cannot tell which port amqtt bound; give a port") from None

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()
            log.info("amqtt broker on %s:%d stopped", self.host, self.port)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def close(self) -> None:
        await self.stop()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    async def __aenter__(self) -> EmbeddedBroker:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _no_startup_traceback(record: logging.LogRecord) -> bool:
    """Drop amqtt's "Broker startup failed" traceback: BrokerStartError says it in one line."""
    return record.getMessage() != "Broker startup failed" or log.isEnabledFor(logging.DEBUG)


def _reason(exc: BaseException) -> str:
    """The innermost useful message of an amqtt start-up error."""
    seen: BaseException | None = exc
    reason = str(exc) or type(exc).__name__
    while seen is not None:
        if isinstance(seen, OSError):
            return seen.strerror or str(seen)
        text = str(seen)
        if text and "Broker instance can't be started" not in text:
            reason = text
        seen = seen.__cause__ or seen.__context__
    return reason


def _quiet_disconnects(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Log amqtt's unhandled errors for clients that already hung up at debug level.

    amqtt 0.12.1 closes a refused client's socket with write_eof() and lets the
    OSError (ENOTCONN, EPIPE, ECONNRESET) escape its connection callback, which
    asyncio would log as an ERROR with a traceback.
    """
    exc = context.get("exception")
    if isinstance(exc, (ConnectionError, OSError)) and isinstance(exc.errno, int) and (
        exc.errno in (errno.ENOTCONN, errno.EPIPE, errno.ECONNRESET)
    ):
        log.debug("client connection ended abruptly: %s", exc)
        return
    loop.default_exception_handler(context)


async def serve(broker: EmbeddedBroker, stop: asyncio.Event | None = None) -> None:
    """Run `broker` until `stop` is set or SIGTERM/SIGINT arrives."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_disconnects)
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        async with broker:
            await stop.wait()
            log.info("stopping")
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The broker options, shared with `pblink broker`."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=BROKER_PORT, default=1883, help="TCP port (default 1883)")
    parser.add_argument("--password-file", type=Path, metavar="FILE",
                        help="amqtt password file (user:<argon2 hash> lines, see `pblink passwd`); "
                             "without it every client is accepted")
    parser.add_argument("--acl", action="store_true",
                        help="confine each device user to ROOT/<user>/# and server users to "
                             "ROOT/# (needs --password-file)")
    parser.add_argument("--server-user", action="append", metavar="USER",
                        help="a server user for --acl, in the password file (repeatable; "
                             f"default {DEFAULT_SERVER_USER})")
    parser.add_argument("--root", default=DEFAULT_ROOT, help=f"topic root (default {DEFAULT_ROOT})")
    parser.add_argument("--max-queued", type=COUNT, default=DEFAULT_MAX_QUEUED, metavar="N",
                        help=f"messages kept for one offline client (default {DEFAULT_MAX_QUEUED})")


def check_args(args: argparse.Namespace) -> None:
    """The options of `add_arguments` that argparse cannot check alone, checked
    before anything starts: ValueError with a one-line message naming the option
    (`pblink broker` and `python -m broker.embedded` exit 2 with it)."""
    from broker.credentials import CredentialsError, check_user, read_amqtt_file

    check_root(args.root)  # as every pblink command checks --root (pblink.common.check_root)
    for user in args.server_user or ():
        try:
            check_user(user, server=True)
        except CredentialsError as exc:
            raise ValueError(f"--server-user: {exc}") from None
    users: list[str] = []
    if args.password_file is not None:
        try:
            users = read_amqtt_file(args.password_file)
        except CredentialsError as exc:
            raise ValueError(f"--password-file {exc}") from None
    if args.acl and args.password_file is None:
        raise ValueError("--acl needs --password-file: it confines each user by name, and "
                         "without passwords any client can claim any name")
    if args.server_user and not args.acl:
        raise ValueError("--server-user goes with --acl (without it every client may use "
                         "every topic)")
    if args.acl:
        for user in args.server_user or (DEFAULT_SERVER_USER,):
            if user not in users:
                who = (f"--server-user {user!r}" if args.server_user else
                       f"--acl: server user {user!r} (the default; --server-user names others)")
                raise ValueError(f"{who} is not a user in --password-file "
                                 f"{args.password_file} (add it with `pblink passwd --server "
                                 f"--amqtt {args.password_file} {user}`)")


def broker_from_args(args: argparse.Namespace) -> EmbeddedBroker:
    return EmbeddedBroker(
        args.host,
        args.port,
        password_file=args.password_file,
        acl=args.acl,
        server_users=tuple(args.server_user) if args.server_user else None,
        root=args.root,
        max_queued=args.max_queued,
    )


def setup_logging(verbosity: int) -> None:
    """-v: our INFO; -vv: DEBUG, amqtt's INFO too; -vvv: amqtt's DEBUG."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet = logging.WARNING if verbosity < 2 else logging.INFO if verbosity == 2 else logging.DEBUG
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(quiet)


def run(args: argparse.Namespace) -> int:
    """Run the broker from parsed arguments; 0 after a clean stop, 2 for a bad option
    or password file (`check_args`), 1 if it cannot start (e.g. the port is in use)."""
    try:
        check_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    broker = broker_from_args(args)
    try:
        asyncio.run(serve(broker))
    except BrokerStartError as exc:
        print(f"error: cannot start the broker on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broker.embedded",
                                     description="Run the embedded amqtt MQTT broker.")
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="count", default=1,
                        help="more logging (repeatable; default logs start and stop)")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
