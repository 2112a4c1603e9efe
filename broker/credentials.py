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
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from link_core.names import check_conn_id

log = logging.getLogger(__name__)

ARGON2_TIME_COST = 2
ARGON2_MEMORY_KIB = 19456
ARGON2_PARALLELISM = 1


BOM = "\ufeff"  # a UTF-8 byte order mark, as Python's utf-8 codec decodes it


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
    """The file's lines; a leading byte order mark dropped (so a rewrite has none:
    amqtt would read it into the first user name, `read_amqtt_file` refuses it)."""
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
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


def _hash_problem(hashed: str) -> str | None:
    """Why amqtt 0.12.1's FileAuthPlugin could never verify a password against
    `hashed`, or None when it can (argon2, as `pblink passwd` writes; amqtt's
    deprecated sha512-crypt ``$6$`` while Python has the crypt module)."""
    import argon2
    from pwdlib.hashers.argon2 import Argon2Hasher

    if Argon2Hasher.identify(hashed):
        try:
            argon2.extract_parameters(hashed)
        except argon2.exceptions.InvalidHashError:
            return "its argon2 hash is damaged"
        return None
    if hashed.startswith("$6$") and sys.version_info < (3, 13):
        return None
    if hashed.startswith("$7$"):
        return ("it has a Mosquitto hash ($7$), which amqtt cannot verify "
                "(write the user with `pblink passwd --amqtt FILE USER`)")
    if hashed.startswith("$"):
        return "its hash is not an argon2 hash (amqtt verifies only those)"
    return "it has no hash (a plain password?)"


def read_amqtt_file(path: str | Path) -> list[str]:
    """The users of an amqtt password file, every line checked as amqtt 0.12.1
    reads it (blank lines and ``#`` comments skipped, ``user:<hash>`` else).

    CredentialsError (one line, starting with the file's name) when the file
    is missing or unreadable, when it starts with a UTF-8 byte order mark
    (amqtt reads it as part of the first line: the first user could never log
    in, or that line would be no comment), when a line is not ``user:<hash>`` with a hash
    amqtt can verify (the first such line's number, the others counted: amqtt
    would skip or keep it and that user could never log in), or when there is
    no user at all (every client would be refused). Line contents are not
    repeated (a stray line may be a password); the user name of a line is.
    """
    path = Path(path)
    if not path.is_file():
        raise CredentialsError(f"{path} does not exist" if not path.exists()
                               else f"{path} is not a file")
    users: list[str] = []
    bad: list[tuple[int, str]] = []
    try:
        with path.open(encoding="utf-8") as lines:  # universal newlines, as amqtt reads it
            for number, raw in enumerate(lines, 1):
                if number == 1 and raw.startswith(BOM):
                    raise CredentialsError(f"{path} line 1: starts with a UTF-8 byte order "
                                           "mark: save it without one")
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                user, sep, hashed = line.partition(":")
                if not sep:
                    bad.append((number, "it is not user:<hash> (no ':')"))
                elif not user or user != user.strip():
                    bad.append((number, f"the user name {user!r} is empty or has spaces "
                                        "around it"))
                elif (problem := _hash_problem(hashed)) is not None:
                    bad.append((number, f"user {user!r}: {problem}"))
                else:
                    users.append(user)
    except UnicodeDecodeError:
        raise CredentialsError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise CredentialsError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if bad:
        number, why = bad[0]
        more = (f" (and {len(bad) - 1} more bad line(s): "
                f"{', '.join(str(n) for n, _ in bad[1:6])}{', ...' if len(bad) > 6 else ''})"
                if len(bad) > 1 else "")
        raise CredentialsError(f"{path} line {number}: {why}{more}")
    if not users:
        raise CredentialsError(f"{path}: no user:<hash> line (add users with "
                               "`pblink passwd --amqtt FILE USER`)")
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
