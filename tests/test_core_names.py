"""link_core.names: conn_id, line and topic rules (PROTOCOL.md 3, 4.1)."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from link_core import names
from link_core.lines import check_line, line_bytes
from link_core.names import (
    MAX_LINE,
    Topics,
    check_conn_id,
    check_root,
    client_id,
    utf8_valid,
)
from link_core.topics import parse_topic, wildcard


@pytest.mark.parametrize("conn_id", ["a", "pyb1", "Z-9_x", "-", "_", "x" * 64])
def test_conn_id_ok(conn_id):
    assert check_conn_id(conn_id) == conn_id


@pytest.mark.parametrize(
    ("conn_id", "detail"),
    [
        ("", "is empty"),
        ("/", "character '/' at position 0"),
        ("+", "character '+' at position 0"),
        ("#", "character '#' at position 0"),
        ("a\x00", "character '\\x00' at position 1"),
        ("a.b", "character '.' at position 1"),
        ("a b", "character ' ' at position 1"),
        ("x" * 65, "is 65 characters long"),
        ("café", "character 'é' at position 3"),
        ("a/b", "character '/' at position 1"),
    ],
)
def test_conn_id_bad(conn_id, detail):
    with pytest.raises(ValueError, match=re.escape(detail)) as e:
        check_conn_id(conn_id)
    msg = str(e.value)
    assert repr(conn_id) in msg  # names the offending value
    assert "1 to 64 characters from A-Z a-z 0-9 _ -" in msg  # and the rule


@pytest.mark.parametrize("conn_id", [None, b"pyb1", 5])
def test_conn_id_not_str(conn_id):
    with pytest.raises(ValueError, match="not a str"):
        check_conn_id(conn_id)


@given(st.text(min_size=1, max_size=64))
@settings(max_examples=100, deadline=None)
def test_conn_id_property(s):
    ok = all(c.isascii() and (c.isalnum() or c in "_-") for c in s)
    if ok:
        assert check_conn_id(s) == s
    else:
        with pytest.raises(ValueError):
            check_conn_id(s)


def test_lines_ok():
    assert check_line("hello") == "hello"
    assert check_line("hello\n") == "hello"
    assert check_line(b"hello\n") == "hello"
    assert check_line(bytearray(b"a|b")) == "a|b"
    assert check_line(memoryview("é\r".encode())) == "é\r"
    assert check_line("") == "" and check_line("\n") == ""
    assert check_line("x" * MAX_LINE) == "x" * MAX_LINE
    assert check_line("é" * 512) == "é" * 512  # 1024 bytes
    assert line_bytes("é\n") == "é".encode()


@pytest.mark.parametrize(
    ("line", "detail"),
    [
        ("a\nb", "newline at byte 1"),
        ("\n\n", "newline at byte 0"),
        (b"a\nb\n", "newline at byte 1"),
        ("x" * 1025, "1025 bytes UTF-8 encoded; the limit is MAX_LINE = 1024"),
        ("é" * 513, "1026 bytes"),
        (b"x" * 2000 + b"\n", "2000 bytes"),
        (b"\xff", "not valid UTF-8"),
        (b"ok \xc3", "not valid UTF-8"),  # truncated sequence
        (b"\x80", "not valid UTF-8"),  # lone continuation byte
        (b"\xc0\x80", "not valid UTF-8"),  # overlong NUL
        (b"\xe0\x80\xaf", "not valid UTF-8"),  # overlong '/'
        (b"\xed\xa0\x80", "not valid UTF-8"),  # surrogate
        (b"\xf4\x90\x80\x80", "not valid UTF-8"),  # above U+10FFFF
        (b"\xf8\x88\x80\x80\x80", "not valid UTF-8"),
        ("\udc80", "cannot be encoded as UTF-8"),  # lone surrogate in a str
        (5, "not str or bytes"),
    ],
)
def test_lines_bad(line, detail):
    with pytest.raises(ValueError, match=detail):
        check_line(line)


@given(st.binary(max_size=40))
@settings(max_examples=150, deadline=None)
def test_utf8_valid_agrees_with_cpython(data):
    try:
        data.decode("utf-8")
        expected = True
    except UnicodeDecodeError:
        expected = False
    assert utf8_valid(data) == expected


@given(st.text(max_size=30))
@settings(max_examples=100, deadline=None)
def test_utf8_valid_accepts_all_text(s):
    try:
        b = s.encode()
    except UnicodeEncodeError:
        return
    assert utf8_valid(b)


def test_topics():
    t = Topics("pblink", "pyb1")
    assert (t.up, t.down, t.status) == ("pblink/pyb1/up", "pblink/pyb1/down", "pblink/pyb1/status")
    assert t.base == "pblink/pyb1"
    assert Topics("site/pblink", "x").up == "site/pblink/x/up"
    with pytest.raises(ValueError, match="conn_id"):
        Topics("pblink", "a+b")
    with pytest.raises(ValueError, match="topic root"):
        Topics("pb/+", "a")
    assert wildcard("pblink", "up") == "pblink/+/up"
    with pytest.raises(ValueError):
        wildcard("pblink", "sideways")
    assert client_id("pyb1") == "pblink-pyb1"
    assert names.ONLINE == "online" and names.OFFLINE == "offline"


@pytest.mark.parametrize("root", ["", "/", "a/", "/a", "a//b", "a+", "#", "a b", "x" * 129, 7])
def test_root_bad(root):
    with pytest.raises(ValueError, match="topic root"):
        check_root(root)


def test_parse_topic():
    assert parse_topic("pblink", "pblink/pyb1/up") == ("pyb1", "up")
    assert parse_topic("pblink", b"pblink/pyb1/status") == ("pyb1", "status")
    assert parse_topic("a/b", "a/b/c/down") == ("c", "down")
    for bad in [
        "pblink/pyb1/up/x",
        "pblink/pyb1",
        "pblink//up",
        "other/pyb1/up",
        "pblink/a.b/up",
        "pblinkx/p/up",
        "pblink/p/sideways",
        b"pblink/\xff/up",
    ]:
        assert parse_topic("pblink", bad) is None
