"""link_core.control: link message kinds, config and report (PROTOCOL.md 2)."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from link_core import control as C
from link_core import i2c_link, names, schema
from link_core import messages as M

CFG = ["pyb1", 1883, "192.168.1.10", 1500, 60, "myssid", "mypass"]


def test_kinds():
    assert bytes([C.CONFIG, C.QOS, C.UNRELIABLE, C.ACK]) == b"Cqua"
    assert bytes([M.KEEPALIVE, M.SERVER_UP, C.SERVER_DOWN, M.REPORT]) == b"KUDR"
    assert bytes([M.BAD_WIFI, C.BAD_BROKER, C.ERROR]) == b"WBE"
    assert C.MSG_KEEPALIVE[0] == M.KEEPALIVE and C.MSG_SERVER_UP[0] == M.SERVER_UP
    assert C.MSG_SERVER_DOWN[0] == C.SERVER_DOWN and C.MSG_BAD_WIFI[0] == M.BAD_WIFI
    assert M.is_frame(b"q|x") and M.is_frame(b"a|x") and not M.is_frame(b"K")
    assert not M.is_frame(b"")
    assert M.FRAME_KINDS == bytes([C.QOS, C.UNRELIABLE, C.ACK])
    assert names.MAX_MESSAGE == 1152 and i2c_link.MAX_MESSAGE == names.MAX_MESSAGE


def test_config_roundtrip_and_defaults():
    m = M.encode_config(CFG)
    assert m == b'C["pyb1",1883,"192.168.1.10",1500,60,"myssid","mypass","","","pblink",false]'
    full = C.decode_config(m)
    assert full == [*CFG, "", "", "pblink", False]
    assert C.decode_config(m[1:]) == full  # kind byte optional
    assert C.decode_config(M.encode_config(tuple(full))) == full
    names = schema.SETTINGS[0 : (schema.CONFIG_ENTRIES - 1) * schema.COLUMNS : schema.COLUMNS]
    assert dict(zip(names, full, strict=True))["topic_root"] == "pblink"
    # only conn_id, port, host and timeout_ms are required
    short = C.decode_config(b'C["pyb1",1883,"h",1500]')
    assert short == ["pyb1", 1883, "h", 1500, 0, "", "", "", "", "pblink", False]
    assert C.check_config(CFG[:6]) == [*CFG[:6], "", "", "", "pblink", False]


def test_config_with_tuning():
    tuning = {"mqtt_keepalive_s": 30, "keepalive_ms": 500}
    cfg = [*CFG, "", "", "pblink", False, tuning]
    m = M.encode_config(cfg)
    assert m.endswith(b'false,{"keepalive_ms":500,"mqtt_keepalive_s":30}]')  # sorted keys
    assert C.decode_config(m) == cfg
    assert C.decode_config(m)[11] == tuning
    with pytest.raises(ValueError, match=r"^keepalive_ms \[1\] is not an int from 100 to"):
        M.encode_config([*CFG, "", "", "pblink", False, {"keepalive_ms": [1]}])
    with pytest.raises(ValueError, match="flat dict"):  # the encoder's own rule
        C.dump_list([{"a": [1]}])


def test_config_json_is_cpython_compatible():
    cfg = ["pyb-2", 8883, "h", 2000, 0, "café\u2028", 'p"w\\d\x01\n\t\x7f', "u", "pw", "a/b", True]
    m = M.encode_config(cfg)
    assert m[1:] == json.dumps(cfg, separators=(",", ":"), ensure_ascii=False).encode()
    assert C.decode_config(m) == cfg


scalars = st.one_of(st.text(max_size=20), st.integers(-(2**40), 2**40), st.booleans())


@given(
    st.lists(
        st.one_of(scalars, st.dictionaries(st.text(max_size=8), scalars, max_size=4)), max_size=8
    )
)
@settings(max_examples=100, deadline=None)
def test_dump_list_matches_json_dumps(items):
    try:
        expected = json.dumps(
            items, separators=(",", ":"), ensure_ascii=False, sort_keys=True
        ).encode()
    except UnicodeEncodeError:
        return
    try:
        got = C.dump_list(items)
    except UnicodeEncodeError:
        return
    assert got == expected
    assert json.loads(got) == items


@pytest.mark.parametrize(
    ("cfg", "detail"),
    [
        (CFG[:3], "4 to 12 entries"),
        ([*CFG, "", "", "pblink", False, {}, "extra"], "4 to 12 entries"),
        ("pyb1", "4 to 12 entries"),
        ([*CFG, "", "", "pblink", False, []], "tuning"),
        ([*CFG, "", "", "pblink", False, {1: 2}], "tuning key"),
        (["a.b", *CFG[1:]], "conn_id 'a.b'"),
        ([CFG[0], 0, *CFG[2:]], "port"),
        ([CFG[0], 65536, *CFG[2:]], "port"),
        ([CFG[0], True, *CFG[2:]], "port"),
        ([CFG[0], "1883", *CFG[2:]], "port"),
        ([*CFG[:2], "", *CFG[3:]], "host"),
        ([*CFG[:2], None, *CFG[3:]], "host"),
        ([*CFG[:3], 0, *CFG[4:]], "timeout_ms"),
        ([*CFG[:3], 1.5, *CFG[4:]], "timeout_ms"),
        ([*CFG[:4], -1, *CFG[5:]], "report_s"),
        ([*CFG[:5], "s" * 33, CFG[6]], "ssid"),
        ([*CFG[:6], "p" * 65], "wifi_password"),
        ([*CFG, 5], "mqtt_user"),
        ([*CFG, "", "x" * 257], "mqtt_password"),
        ([*CFG, "", "secret"], "mqtt_password is set but mqtt_user is empty"),  # MQTT-3.1.2-22
        ([*CFG, "", "", "bad/"], "topic root"),
        ([*CFG, "", "", "pblink", 1], "tls"),
    ],
)
def test_config_errors(cfg, detail):
    with pytest.raises(ValueError, match=detail):
        M.encode_config(cfg)


@pytest.mark.parametrize(
    "msg",
    [
        b"C",
        b"C{}",
        b"C[1,2",
        b"C\xff",
        b'C["pyb1",1883,"h",1500,60,"s","p","","","pblink",0]',
        b"Cnull",
        b'C"x"',
    ],
)
def test_decode_config_errors(msg):
    with pytest.raises(ValueError):
        C.decode_config(msg)


def test_report():
    assert C.encode_report([3, 17, 21504]) == b"R[3,17,21504]"
    assert M.decode_report(b"R[3,17,21504]") == [3, 17, 21504]
    assert M.decode_report(b"[0,0,0]") == [0, 0, 0]
    for bad in [[1, 2], [1, 2, -3], [1, 2, True], "abc", [1, 2, 3.0]]:
        with pytest.raises(ValueError, match="report"):
            C.encode_report(bad)
    for bad in [b"R[1,2]", b"R[1,2,-3]", b"R[1,2,true]", b"R[1,2,3.5]", b"R", b'R[1,2,"3"]']:
        with pytest.raises(ValueError):
            M.decode_report(bad)


def test_text_messages():
    m = C.encode_text(C.BAD_BROKER, "refused: not authorised")
    assert m == b"Brefused: not authorised"
    assert M.decode_text(m) == "refused: not authorised"
    long = C.encode_text(C.ERROR, "é" * 1000)  # 2000 bytes: cut at a character boundary
    assert len(long) <= names.MAX_MESSAGE and long[0] == C.ERROR
    assert M.decode_text(long) == "é" * ((names.MAX_MESSAGE - 1) // 2)
    with pytest.raises(ValueError, match="kind"):
        C.encode_text(M.REPORT, "x")
    with pytest.raises(ValueError, match="not a str"):
        C.encode_text(C.ERROR, b"x")
    with pytest.raises(ValueError, match="UTF-8"):
        M.decode_text(b"E\xff")
