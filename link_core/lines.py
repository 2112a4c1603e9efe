"""Lines: validation of the text lines the end applications send (PROTOCOL.md 0 and 3).

``check_line`` and ``line_bytes`` raise ``ValueError`` naming the line and the
rule. Used by the Pyboard's ``AppBase``, the frame codec and the server
library; apart from ``link_core.names`` so that the ESP8266 bridge, which
relays frames without reading their lines, does not hold these functions in
RAM (docs/FIRMWARE.md "Memory budget").
"""

from link_core.names import MAX_LINE, _show, utf8_valid


def _show_line(data, text):
    """A line for an error message: its text, never a bytes repr."""
    if text is None:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeError:
            return "of " + str(len(data)) + " bytes"
    return _show(text)


def _line_bytes(line, strip):
    """Validate a line; return (bytes, str_or_None). Internal."""
    text = None
    if isinstance(line, str):
        text = line
        try:
            data = line.encode("utf-8")
        except UnicodeError:
            data = None
        if data is None:
            raise ValueError("line " + _show(line) + " cannot be encoded as UTF-8")
    elif isinstance(line, (bytes, bytearray, memoryview)):
        data = bytes(line)
    else:
        raise ValueError("line " + _show(line) + " is not str or bytes")
    n = len(data)
    if strip and n and data[n - 1] == 10:
        n -= 1
        data = data[:n]
        if text is not None:
            text = text[:-1]
    if n > MAX_LINE:
        raise ValueError(
            "line "
            + _show_line(data, text)
            + " is "
            + str(n)
            + " bytes UTF-8 encoded; the limit is MAX_LINE = "
            + str(MAX_LINE)
        )
    i = data.find(b"\n")
    if i >= 0:
        raise ValueError(
            "line "
            + _show_line(data, text)
            + " has a newline at byte "
            + str(i)
            + ": a line is one line (only one trailing newline is allowed, and removed)"
        )
    if n and max(data) >= 0x80 and not utf8_valid(data):
        raise ValueError("line " + _show_line(data, None) + " is not valid UTF-8")
    return data, text


def check_line(line):
    """Validate one line and return it as ``str`` without its newline.

    ``line`` is ``str`` or UTF-8 bytes (``bytes``, ``bytearray``,
    ``memoryview``). One trailing ``\\n`` is removed. ``ValueError`` if the
    rest has a ``\\n``, is longer than ``MAX_LINE`` bytes UTF-8 encoded, or is
    not valid UTF-8 (bytes input; str input with lone surrogates).
    """
    data, text = _line_bytes(line, True)
    if text is None:
        text = data.decode("utf-8")
    return text


def line_bytes(line):
    """Like ``check_line`` but return the line's UTF-8 ``bytes``."""
    return _line_bytes(line, True)[0]
