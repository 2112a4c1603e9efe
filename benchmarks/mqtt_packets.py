"""MQTT 3.1.1 packets built and split by hand, for the load generators.

The scale benchmark's devices (``benchmarks.lite_load``) and the profiling
driver (``benchmarks.scale_mux``) speak MQTT over raw sockets, without a
client library per device, so that their cost stays small beside the server's.
Packet layout: MQTT 3.1.1, section 2 (fixed header, remaining length) and 3.
"""

from __future__ import annotations


def _varint(n: int) -> bytes:
    """The remaining length ``n`` (0 to 268,435,455) in MQTT's 1 to 4 bytes (2.2.3)."""
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(b: bytes) -> bytes:
    """A length-prefixed string (1.5.3)."""
    return len(b).to_bytes(2, "big") + b


def packet(first: int, body: bytes) -> bytes:
    """One packet: fixed header byte ``first``, remaining length, ``body``."""
    return bytes([first]) + _varint(len(body)) + body


def connect_packet(client_id: str, keepalive: int, will_topic: str | None = None,
                   clean: bool = False) -> bytes:
    """CONNECT (3.1). With ``will_topic``: a retained will ``offline`` at QoS 1, as the bridge's."""
    flags = 0x02 if clean else 0
    will = b""
    if will_topic is not None:
        flags |= 0x04 | 0x08 | 0x20  # will, will QoS 1, will retain
        will = string(will_topic.encode()) + string(b"offline")
    body = (string(b"MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big")
            + string(client_id.encode()) + will)
    return packet(0x10, body)


def publish_packet(topic: bytes, payload: bytes, qos: int, pid: int = 1,
                   retain: bool = False) -> bytes:
    """PUBLISH (3.3) at QoS 0 or 1 (packet id ``pid`` for QoS 1)."""
    head = 0x30 | (qos << 1) | (1 if retain else 0)
    body = string(topic) + (pid.to_bytes(2, "big") if qos else b"") + payload
    return packet(head, body)


def subscribe_packet(topic: bytes, qos: int, pid: int = 1) -> bytes:
    """SUBSCRIBE (3.8) to one topic filter."""
    return packet(0x82, pid.to_bytes(2, "big") + string(topic) + bytes([qos]))


def next_packet(buf: bytes | bytearray, i: int) -> tuple[int, int] | None:
    """(body start, body end) of the packet whose fixed header is at ``buf[i]``,
    or None while the buffer does not hold all of it yet."""
    n = len(buf)
    if n - i < 2:
        return None
    mult, length, j = 1, 0, i + 1
    while j < n:
        b = buf[j]
        length += (b & 0x7F) * mult
        mult *= 128
        j += 1
        if not b & 0x80:
            break
    else:
        return None
    if j + length > n:
        return None
    return j, j + length
