"""broker.credentials: amqtt (argon2) and Mosquitto ($7$) password files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from conftest import require_tool
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from broker import credentials as cred


def verify(password: str, hashed: str) -> bool:
    """As amqtt's FileAuthPlugin verifies."""
    return PasswordHash((Argon2Hasher(),)).verify(password, hashed)


def test_amqtt_file_add_replace_remove_keeps_comments(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "amqtt.passwd"
    path.parent.mkdir()
    path.write_text("# users of the embedded broker\n")
    cred.add_amqtt_user(path, "dev1", "one")
    cred.write_amqtt_users(path, {"pblink.server": "srv", "dev2": "two"})
    cred.add_amqtt_user(path, "dev1", "uno")  # replaces
    lines = path.read_text().splitlines()
    assert lines[0] == "# users of the embedded broker"
    assert cred.amqtt_users(path) == ["pblink.server", "dev2", "dev1"]
    hashes = dict(line.split(":", 1) for line in lines[1:])
    assert hashes["dev1"].startswith("$argon2id$")
    assert verify("uno", hashes["dev1"]) and not verify("one", hashes["dev1"])
    assert verify("srv", hashes["pblink.server"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cred.remove_amqtt_user(path, "dev2") is True
    assert cred.remove_amqtt_user(path, "dev2") is False
    assert cred.amqtt_users(path) == ["pblink.server", "dev1"]
    assert not list(path.parent.glob(".amqtt.passwd.*"))  # no temporary files left


def test_argon2_parameters_keep_verification_cheap() -> None:
    hashed = cred.hash_amqtt_password("pw")
    assert f"m={cred.ARGON2_MEMORY_KIB},t={cred.ARGON2_TIME_COST},p=1" in hashed


@pytest.mark.parametrize("name", ["dev1", "A_b-9", "x" * 64])
def test_device_user_is_a_conn_id(name: str) -> None:
    assert cred.check_user(name, server=False) == name


@pytest.mark.parametrize("name", ["", "a/b", "a+b", "#", "a.b", "a b", "é", "x" * 65])
def test_bad_device_user_is_refused_with_the_rule(name: str) -> None:
    with pytest.raises(cred.CredentialsError, match="conn_id"):
        cred.check_user(name, server=False)


def test_server_user_names() -> None:
    assert cred.check_user("pblink.server", server=True) == "pblink.server"
    for bad in ("", "a:b", "a/b", "a\nb"):
        with pytest.raises(cred.CredentialsError):
            cred.check_user(bad, server=True)


@pytest.mark.parametrize("password", ["", "a\nb", "a\0b"])
def test_bad_passwords(password: str) -> None:
    with pytest.raises(cred.CredentialsError):
        cred.check_password(password)


def test_mosquitto_file_via_mosquitto_passwd(tmp_path: Path) -> None:
    require_tool("mosquitto_passwd")
    path = tmp_path / "passwd"
    cred.add_mosquitto_user(path, "dev1", "one")  # creates it
    cred.add_mosquitto_user(path, "dev2", "two")
    cred.add_mosquitto_user(path, "dev1", "uno")  # replaces
    assert sorted(cred.mosquitto_users(path)) == ["dev1", "dev2"]
    assert all(line.split(":", 1)[1].startswith("$7$") for line in path.read_text().splitlines())
    assert cred.remove_mosquitto_user(path, "dev2") is True
    assert cred.remove_mosquitto_user(path, "dev2") is False
    assert cred.mosquitto_users(path) == ["dev1"]


def test_missing_mosquitto_passwd_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(cred.CredentialsError, match="mosquitto_passwd is not installed"):
        cred.add_mosquitto_user(tmp_path / "passwd", "dev1", "pw")
    assert not (tmp_path / "passwd").exists()


# -- reading an amqtt password file as the broker will -------------------------------


def test_read_amqtt_file_takes_what_pblink_passwd_writes(tmp_path: Path) -> None:
    path = tmp_path / "amqtt.passwd"
    cred.write_amqtt_users(path, {"pblink.server": "srv", "dev1": "one"})
    with path.open("a") as out:
        out.write("# a comment\n\n   \n")
    assert cred.read_amqtt_file(path) == ["pblink.server", "dev1"]


BAD_LINES = [
    ("garbage line", "line 2: it is not user:<hash> (no ':')"),
    ("dev9:notahash", "line 2: user 'dev9': it has no hash (a plain password?)"),
    ("dev9:$7$101$abc$def", "line 2: user 'dev9': it has a Mosquitto hash ($7$)"),
    ("dev9:$argon2id$garbage", "line 2: user 'dev9': its hash is not an argon2 hash"),
    ("dev9:$2b$12$abcdefghijklmnopqrstuv", "its hash is not an argon2 hash"),
    (":$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
     "line 2: the user name '' is empty"),
]


@pytest.mark.parametrize("line, message", BAD_LINES, ids=[m[:30] for _, m in BAD_LINES])
def test_read_amqtt_file_names_the_bad_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "amqtt.passwd"
    cred.write_amqtt_users(path, {"dev1": "one"})
    with path.open("a") as out:
        out.write(line + "\n")
    with pytest.raises(cred.CredentialsError) as info:
        cred.read_amqtt_file(path)
    assert str(info.value).startswith(f"{path} line 2: ")
    assert message in str(info.value)
    assert "notahash" not in str(info.value)  # a stray line's content is not repeated


@pytest.mark.parametrize("first", ["dev1-line", "# a comment", "", "dev1-line\r"])
def test_read_amqtt_file_refuses_a_byte_order_mark(tmp_path: Path, first: str) -> None:
    """amqtt reads the file as utf-8, not utf-8-sig: a BOM becomes part of the first
    line (user '\ufeffdev1' could never log in; a comment would be no comment)."""
    good = tmp_path / "good.passwd"
    cred.write_amqtt_users(good, {"dev1": "one", "dev2": "two"})
    lines = good.read_text().splitlines()
    first = first.replace("dev1-line", lines[0])
    path = tmp_path / "bom.passwd"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join([first, *lines[1:]]).encode() + b"\n")
    with pytest.raises(cred.CredentialsError) as info:
        cred.read_amqtt_file(path)
    assert str(info.value) == (f"{path} line 1: starts with a UTF-8 byte order mark: "
                               "save it without one")


def test_pblink_passwd_rewrites_a_bom_file_without_it(tmp_path: Path) -> None:
    """Adding or removing a user in a file with a BOM drops the BOM (and keeps and
    matches the first user), so the rewritten file is one the broker takes."""
    path = tmp_path / "amqtt.passwd"
    cred.write_amqtt_users(path, {"dev1": "one", "dev2": "two"})
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert cred.amqtt_users(path) == ["dev1", "dev2"]
    cred.add_amqtt_user(path, "dev3", "three")
    assert not path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert cred.read_amqtt_file(path) == ["dev1", "dev2", "dev3"]
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert cred.remove_amqtt_user(path, "dev1") is True
    assert cred.read_amqtt_file(path) == ["dev2", "dev3"]


def test_read_amqtt_file_counts_every_bad_line_and_needs_a_user(tmp_path: Path) -> None:
    path = tmp_path / "amqtt.passwd"
    path.write_text("a\nb:x\n# c\nd\n")
    with pytest.raises(cred.CredentialsError,
                       match=r"line 1: .* \(and 2 more bad line\(s\): 2, 4\)"):
        cred.read_amqtt_file(path)
    path.write_text("# only comments\n\n")
    with pytest.raises(cred.CredentialsError, match="no user:<hash> line"):
        cred.read_amqtt_file(path)
    with pytest.raises(cred.CredentialsError, match="does not exist"):
        cred.read_amqtt_file(tmp_path / "none")
