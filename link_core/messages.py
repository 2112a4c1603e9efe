"""Link messages, the Pyboard's and the tools' side (docs/PROTOCOL.md section 2).

``encode_config`` writes the ``C`` message the Pyboard sends; ``is_frame``,
``decode_report`` and ``decode_text`` read what the bridge sends. The kinds,
the rules (``check_config``) and the bridge's own encoders are
``link_core.control``; these are apart so that the ESP8266 bridge, which never
calls them, does not hold them in RAM (docs/FIRMWARE.md "Memory budget").
"""

from link_core.control import (
    FRAME_KINDS,
    REPORT,
    _check_report,
    _load_body,
    check_config,
    dump_list,
)
from link_core.names import MAX_MESSAGE, _show, utf8_valid


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
