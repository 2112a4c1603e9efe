"""Link messages, the Pyboard's and the tools' side (docs/PROTOCOL.md section 2).

``encode_config`` writes the ``C`` message the Pyboard sends; ``is_frame``,
``decode_report`` and ``decode_text`` read what the bridge sends, as do the
kinds ``KEEPALIVE``, ``SERVER_UP``, ``REPORT``, ``BAD_WIFI``. The other kinds,
the rules (``check_config``) and the bridge's own encoders are
``link_core.control``; these are apart so that the ESP8266 bridge, which never
calls them, does not hold them in RAM (docs/FIRMWARE.md "Memory budget").
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from link_core.control import _check_report, _load_body, check_config, dump_list
from link_core.names import MAX_MESSAGE, _show, utf8_valid

# The kinds only the Pyboard reads (the others are link_core.control's),
# here so that the bridge does not hold their names. ESP8266 -> Pyboard:
KEEPALIVE = const(0x4B)  # 'K' empty, every keepalive_ms (link_core/schema.py)
SERVER_UP = const(0x55)  # 'U' empty, the server application is reachable
REPORT = const(0x52)  # 'R' JSON [connects, report_no, mem_free, mem_errors]
BAD_WIFI = const(0x57)  # 'W' empty, first WiFi connection after boot failed

FRAME_KINDS = b"qua"  # q, u, a: end-to-end frames (link_core.control.QOS, UNRELIABLE, ACK)


def is_frame(msg):
    """True if link message ``msg`` carries an end-to-end frame (kind q, u or a)."""
    return len(msg) > 0 and msg[0] in FRAME_KINDS


def encode_config(cfg):
    """The ``C`` link message (bytes) for a config list (see ``check_config``)."""
    msg = b"C" + dump_list(check_config(cfg))
    if len(msg) > MAX_MESSAGE:
        raise ValueError("config message is " + str(len(msg)) + " bytes, over MAX_MESSAGE")
    return msg


def decode_report(msg):
    """``[connects, report_no, mem_free]`` or ``[..., mem_errors]`` from an ``R``
    message (kind byte optional); ValueError when malformed."""
    return _check_report(_load_body(msg, REPORT, "report"))


def decode_text(msg):
    """The UTF-8 text of a ``B``, ``E`` or ``D`` message (``ValueError`` if not UTF-8)."""
    data = bytes(msg)[1:]
    if not utf8_valid(data):
        raise ValueError("message " + _show(bytes(msg)) + " is not valid UTF-8")
    return data.decode("utf-8")
