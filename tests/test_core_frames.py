"""link_core.frames: end-to-end frame codec (PROTOCOL.md 3)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from link_core import frames
from link_core.frames import (
    HEARTBEAT,
    check_session,
    decode,
    encode_ack,
    encode_qos,
    encode_unreliable,
    new_session,
)

S = "3fa2c901"


def test_examples_from_the_protocol():
    assert encode_qos(S, 17, 15, "[1, 2, 3]") == b"q|3fa2c901|17|15|[1, 2, 3]"
    assert encode_unreliable(S, "hello") == b"u|3fa2c901|hello"
    assert encode_ack(S, 17) == b"a|3fa2c901|17"
    assert HEARTBEAT == b"h"
    assert decode(b"q|3fa2c901|17|15|[1, 2, 3]") == ("q", S, 17, 15, "[1, 2, 3]")
    assert decode(b"u|3fa2c901|hello") == ("u", S, None, None, "hello")
    assert decode(b"a|3fa2c901|17") == ("a", S, 17, None, None)
    assert decode(b"h") == ("h", None, None, None, None)


def test_decode_accepts_bytes_like_and_str_and_one_trailing_newline():
    f = b"q|3fa2c901|1|1|a|b"
    assert decode(bytearray(f)) == decode(memoryview(f)) == decode(f.decode())
    assert decode(f + b"\n")[4] == "a|b"
    assert decode(b"h\n")[0] == "h"


def test_new_session():
    assert new_session(b"\x3f\xa2\xc9\x01") == S
    assert new_session(bytes(4)) == "00000000"
    with pytest.raises(ValueError, match="4 random bytes"):
        new_session(b"abc")
    assert check_session(S) == S
    for bad in ["3FA2C901", "3fa2c90", "3fa2c9011", "3fa2c90g", 5]:
        with pytest.raises(ValueError, match="8 lowercase hex"):
            check_session(bad)


def test_ids_wrap_and_base_rules():
    assert encode_qos(S, 0, 65535, "x") == b"q|3fa2c901|0|65535|x"
    assert decode(b"q|3fa2c901|3|65534|x")[2:4] == (3, 65534)
    with pytest.raises(ValueError, match="base"):
        encode_qos(S, 5, 6, "x")
    with pytest.raises(ValueError, match="base is after id"):
        decode(b"q|3fa2c901|5|6|x")
    with pytest.raises(ValueError, match=r"0\.\.65535"):
        encode_qos(S, 65536, 1, "x")
    with pytest.raises(ValueError, match=r"0\.\.65535"):
        encode_ack(S, -1)
    with pytest.raises(ValueError, match=r"0\.\.65535"):
        encode_ack(S, True)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\n",
        b"x",
        b"hh",
        b"h|",
        b"q",
        b"q|",
        b"q|3fa2c901|1|1",
        b"q|3FA2C901|1|1|x",
        b"q|3fa2c90|1|1|x",
        b"q|3fa2c901|65536|1|x",
        b"q|3fa2c901|-1|1|x",
        b"q|3fa2c901|+1|1|x",
        b"q|3fa2c901| 1|1|x",
        b"q|3fa2c901||1|x",
        b"q|3fa2c901|123456|1|x",
        b"a|3fa2c901|1|2",
        b"a|3fa2c901",
        b"a|3fa2c901|x",
        b"u|3fa2c901",
        b"u|3fa2c901|bad\xff",
        b"u|3fa2c901|a\nb",
        b"u|3fa2c901|" + b"x" * 1025,
        b"z|3fa2c901|x",
        b"Q|3fa2c901|1|1|x",
        b"q|3fa2c901|1|1|\xed\xa0\x80",
        b"q|3fa2c901|1|1|x\n\n",
        b"\xff",
    ],
)
def test_decode_errors(payload):
    with pytest.raises(ValueError):
        decode(payload)


def test_encode_errors():
    with pytest.raises(ValueError, match="session"):
        encode_unreliable("nope", "x")
    with pytest.raises(ValueError, match="newline"):
        encode_unreliable(S, "a\nb")
    with pytest.raises(ValueError, match="MAX_LINE"):
        encode_qos(S, 1, 1, "x" * 1025)


lines = st.text(max_size=60).filter(lambda s: "\n" not in s)


@given(
    session=st.binary(min_size=4, max_size=4).map(new_session),
    msg_id=st.integers(0, 65535),
    back=st.integers(0, 32767),
    line=lines,
)
@settings(max_examples=100, deadline=None)
def test_roundtrip(session, msg_id, back, line):
    try:
        line.encode()
    except UnicodeEncodeError:
        return
    base = (msg_id - back) & 0xFFFF
    assert decode(encode_qos(session, msg_id, base, line)) == ("q", session, msg_id, base, line)
    assert decode(encode_unreliable(session, line)) == ("u", session, None, None, line)
    assert decode(encode_ack(session, msg_id)) == ("a", session, msg_id, None, None)


@given(st.binary(max_size=40))
@settings(max_examples=150, deadline=None)
def test_decode_never_crashes(data):
    try:
        k = decode(data)
    except ValueError:
        return
    assert k[0] in (frames.QOS, frames.UNRELIABLE, frames.ACK, frames.HB)
