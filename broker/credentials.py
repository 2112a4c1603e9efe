"""Broker credentials: add or remove a device's or a server's user in password files.

Two formats, one per broker:

- Mosquitto: `user:$7$...` lines, written by Mosquitto's own `mosquitto_passwd`
  (called here; it must be installed: `apt-get install mosquitto`).
- amqtt (the embedded broker's FileAuthPlugin): `user:<argon2 hash>` lines.
  amqtt does not accept Mosquitto's `$7$` hashes, so a user that must work on
  both brokers is written to both files.

A device's user name is its conn_id (the Mosquitto ACL and the amqtt plugin
confine user X to `<root>/X/#`), so it must pass `link_core.names.check_conn_id`.
A server user's name may be anything without `:`; the default `pblink.server`
is deliberately outside the conn_id alphabet so it can never be a device's.

The argon2id parameters (19 MiB, 2 passes, 1 lane: the OWASP minimum) keep a
verification near 50 ms: amqtt verifies in its event loop, so the default
(64 MiB, 3 passes, about 180 ms here) would stall the broker for seconds when
many devices reconnect at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from link_core.names import check_conn_id

log = logging.getLogger(__name__)

ARGON2_TIME_COST = 2
ARGON2_MEMORY_KIB = 19456
ARGON2_PARALLELISM = 1


class CredentialsError(Exception):
    """A user name, password or password file that cannot be used (one-line message)."""


def check_user(name: str, *, server: bool) -> str:
    """Validate a user name: a conn_id for a device, anything MQTT-safe for a server."""
    if server:
        if not name or ":" in name or any(ord(ch) < 32 or ch in "/+#" for ch in name):
            raise CredentialsError(
                f"server user name {name!r} must be non-empty, without ':', '/', '+', '#' "
                "or control characters")
        return name
    try:
        return check_conn_id(name)
    except ValueError as exc:
        raise CredentialsError(str(exc)) from None


def check_password(password: str) -> str:
    if not password:
        raise CredentialsError("the password is empty")
    if "\n" in password or "\r" in password or "\0" in password:
        raise CredentialsError("the password contains a newline or NUL")
    return password


def hash_amqtt_password(password: str) -> str:
    """An argon2id hash that amqtt 0.12.1's FileAuthPlugin verifies."""
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    hasher = Argon2Hasher(time_cost=ARGON2_TIME_COST, memory_cost=ARGON2_MEMORY_KIB,
                          parallelism=ARGON2_PARALLELISM)
    return PasswordHash((hasher,)).hash(check_password(password))


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror}") from None


def _write_atomic(path: Path, lines: list[str], mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("".join(line + "\n" for line in lines))
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise CredentialsError(f"cannot write {path}: {exc.strerror}") from None


def write_amqtt_users(path: str | Path, users: Mapping[str, str | None]) -> None:
    """Add, replace (password given) or remove (password None) users in an amqtt password file.

    Other lines, comments included, are kept; the file is replaced atomically, mode 0600.
    """
    path = Path(path)
    entries = {user: (hash_amqtt_password(pw) if pw is not None else None)
               for user, pw in users.items()}
    out = [line for line in _read_lines(path) if _user_of(line) not in entries]
    out.extend(f"{user}:{hashed}" for user, hashed in entries.items() if hashed is not None)
    _write_atomic(path, out)


def _user_of(line: str) -> str | None:
    if ":" not in line or line.lstrip().startswith("#"):
        return None
    return line.split(":", 1)[0].strip()


def hashed_users(path: str | Path) -> list[str]:
    """The users of an amqtt password file with a usable line ``user:<hash>`` (a
    ``$``-prefixed hash, as `pblink passwd` writes); CredentialsError when the
    file is missing or cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise CredentialsError(f"password file {path} does not exist")
    users = []
    for line in _read_lines(path):
        user = _user_of(line)
        if user and line.split(":", 1)[1].strip().startswith("$"):
            users.append(user)
    return users


def add_amqtt_user(path: str | Path, user: str, password: str) -> None:
    write_amqtt_users(path, {user: password})


def remove_amqtt_user(path: str | Path, user: str) -> bool:
    """Remove `user`; False if it was not there."""
    path = Path(path)
    present = any(_user_of(line) == user for line in _read_lines(path))
    if present:
        write_amqtt_users(path, {user: None})
    return present


def amqtt_users(path: str | Path) -> list[str]:
    return [user for line in _read_lines(Path(path)) if (user := _user_of(line)) is not None]


def mosquitto_passwd_binary() -> str:
    binary = shutil.which("mosquitto_passwd")
    if binary is None:
        raise CredentialsError(
            "mosquitto_passwd is not installed (apt-get install mosquitto); "
            "it writes Mosquitto's password file")
    return binary


def _run_mosquitto_passwd(args: list[str], path: Path) -> None:
    try:
        proc = subprocess.run([mosquitto_passwd_binary(), *args], capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CredentialsError(f"mosquitto_passwd failed on {path}: {exc}") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise CredentialsError(f"mosquitto_passwd failed on {path}: "
                               f"{detail[-1] if detail else f'exit {proc.returncode}'}")


def add_mosquitto_user(path: str | Path, user: str, password: str) -> None:
    """Add or replace `user` in a Mosquitto password file (created if missing).

    Runs `mosquitto_passwd -b` (the password is briefly on its command line,
    visible to other local users in `ps`; run it on a trusted machine).
    """
    path = Path(path)
    check_password(password)
    if ":" in user:
        raise CredentialsError(f"user name {user!r} contains ':'")
    path.parent.mkdir(parents=True, exist_ok=True)
    create = not path.exists()
    args = ["-c", "-b"] if create else ["-b"]
    _run_mosquitto_passwd([*args, str(path), user, password], path)


def remove_mosquitto_user(path: str | Path, user: str) -> bool:
    """Remove `user` (`mosquitto_passwd -D`); False if it was not there."""
    path = Path(path)
    if user not in mosquitto_users(path):
        return False
    _run_mosquitto_passwd(["-D", str(path), user], path)
    return True


def mosquitto_users(path: str | Path) -> list[str]:
    return amqtt_users(path)  # same `user:hash` line shape
