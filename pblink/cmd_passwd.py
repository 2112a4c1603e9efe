"""`pblink passwd USER`: add (or remove) broker credentials for a device or a server app."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from pblink.common import LOCAL_KINDS, add_command

DESCRIPTION = """\
Add or replace a user in the broker password file(s), or remove it (--delete).

  --mosquitto FILE   Mosquitto's password file (written with mosquitto_passwd,
                     which must be installed); docker-compose.yml mounts
                     broker/mosquitto/passwd. Restart or SIGHUP Mosquitto after.
  --amqtt FILE       the embedded broker's file (`pblink broker --password-file
                     FILE`): user:<argon2 hash> lines. amqtt cannot read
                     Mosquitto's hashes, so give both to use both brokers.

A device's user name is its conn_id (the ACLs confine user X to <root>/X/#), so
it must be a valid conn_id. --server marks a server application's user (any
name without ':'; the default ACL knows `pblink.server`). The password comes
from --password, from stdin with --password-stdin, or is asked for twice."""

EPILOG = """\
examples:
  pblink passwd --server --mosquitto broker/mosquitto/passwd pblink.server
  pblink passwd --mosquitto broker/mosquitto/passwd --amqtt amqtt.passwd dev1
  echo secret | pblink passwd --password-stdin --amqtt amqtt.passwd dev2
  pblink passwd --delete --mosquitto broker/mosquitto/passwd dev2"""


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "passwd", exits=LOCAL_KINDS,
                         help="add or remove broker credentials",
                         description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("user", metavar="USER", help="the device's conn_id, or a server user name")
    parser.add_argument("--mosquitto", type=Path, metavar="FILE",
                        help="Mosquitto password file (created if missing)")
    parser.add_argument("--amqtt", type=Path, metavar="FILE",
                        help="amqtt password file (created if missing)")
    parser.add_argument("--server", action="store_true",
                        help="a server application's user, not a device")
    parser.add_argument("--delete", action="store_true", help="remove the user instead")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--password", help="the password (visible in `ps`: prefer the others)")
    source.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of stdin")
    parser.set_defaults(func=run)


def _password(args: argparse.Namespace) -> str:
    from pblink.common import UsageError

    if args.password is not None:
        return str(args.password)
    if args.password_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    if not sys.stdin.isatty():
        raise UsageError("no password: give --password or --password-stdin "
                         "(stdin is not a terminal to ask on)")
    first = getpass.getpass(f"password for {args.user}: ")
    if getpass.getpass("again: ") != first:
        raise UsageError("the two passwords differ")
    return first


def run(args: argparse.Namespace) -> int:
    from broker import MOSQUITTO_ACL
    from broker import credentials as cred
    from pblink.common import CliError, UsageError

    if args.mosquitto is None and args.amqtt is None:
        raise UsageError("say which password file(s): --mosquitto FILE and/or --amqtt FILE")
    try:
        user = cred.check_user(args.user, server=args.server)
    except cred.CredentialsError as exc:
        raise UsageError(str(exc)) from None
    try:
        if args.mosquitto is not None:
            cred.mosquitto_passwd_binary()  # fail before writing anything
        if args.delete:
            found = []
            if args.mosquitto is not None and cred.remove_mosquitto_user(args.mosquitto, user):
                found.append(str(args.mosquitto))
            if args.amqtt is not None and cred.remove_amqtt_user(args.amqtt, user):
                found.append(str(args.amqtt))
            if not found:
                files = " or ".join(str(f) for f in (args.mosquitto, args.amqtt) if f is not None)
                raise CliError(f"{user}: not found in {files}, nothing removed")
            print(f"removed {user} from {', '.join(found)}")
            return 0
        try:
            password = cred.check_password(_password(args))
        except cred.CredentialsError as exc:
            raise UsageError(str(exc)) from None
        written = []
        if args.mosquitto is not None:
            cred.add_mosquitto_user(args.mosquitto, user, password)
            written.append(str(args.mosquitto))
        if args.amqtt is not None:
            cred.add_amqtt_user(args.amqtt, user, password)
            written.append(str(args.amqtt))
    except cred.CredentialsError as exc:
        raise CliError(str(exc)) from None
    kind = "server user" if args.server else "device"
    print(f"{kind} {user}: written to {', '.join(written)}")
    if args.server and args.mosquitto is not None and not _in_acl(MOSQUITTO_ACL, user):
        print(f"note: {MOSQUITTO_ACL} grants {MOSQUITTO_ACL.parent.name}'s root only to the "
              f"server users it names: add `user {user}` and `topic readwrite pblink/#` there",
              file=sys.stderr)
    return 0


def _in_acl(acl: Path, user: str) -> bool:
    try:
        lines = acl.read_text().splitlines()
    except OSError:
        return True  # nothing to advise about
    return any(line.split() == ["user", user] for line in lines)
