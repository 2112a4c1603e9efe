"""server_apps.link_server's shortcuts past paho's per-packet costs (issue 13), without a broker.

The server hands its QoS 0 frames to paho as ready-made PUBLISH packets and
reads with its own buffer (``_Client``): these tests hold both to what paho
itself sends and receives.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from server_apps.link_server import _append_publish0, _Client


def _field(topic: bytes) -> bytes:
    """A topic as a PUBLISH carries it: 2-byte length, then the bytes."""
    return len(topic).to_bytes(2, "big") + topic


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def _paho_publish_bytes(protocol: mqtt.MQTTProtocolVersion, topic: str, payload: bytes,
                        sock: socket.socket) -> bytes:
    """The PUBLISH packet paho itself queues for ``publish(topic, payload, qos=0)``."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    client._sock = sock  # a socket, so that paho queues the packet
    queued: list[bytes] = []
    client._packet_queue = (  # type: ignore[method-assign]
        lambda command, packet, mid, qos, info=None: queued.append(bytes(packet))
        or mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    )
    client.publish(topic, payload, qos=0)
    client._sock = None
    return queued[0]


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5])
@pytest.mark.parametrize("size", [1, 2, 120, 127, 128, 1100, 16_383, 16_384, 2_100_000])
def test_ready_made_publish_is_the_packet_paho_sends(
    protocol: mqtt.MQTTProtocolVersion, size: int, pair: tuple[socket.socket, socket.socket]
) -> None:
    topic = "pblink/dev_\u00e9-1/down"
    payload = bytes(i % 251 for i in range(size))
    block = bytearray()
    _append_publish0(block, _field(topic.encode()), payload, protocol == mqtt.MQTTv5)
    assert bytes(block) == _paho_publish_bytes(protocol, topic, payload, pair[0])


def test_buffered_reading_hands_every_waiting_packet_over_at_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """One loop_read() takes every complete packet the socket holds (paho's own takes one),
    through packets split across reads, and keeps a partial one for the next read."""
    ours, broker = pair
    ours.setblocking(False)
    client = _Client(CallbackAPIVersion.VERSION2, client_id="t")
    got: list[tuple[str, bytes]] = []
    client.on_message = lambda c, u, msg: got.append((msg.topic, msg.payload))
    client._sock = ours
    frames = [(f"pblink/d{i}/up", b"q|0badcafe|%d|%d|line %d" % (i, i, i) * (1 + i * 4))
              for i in range(30)]
    stream = bytearray()
    for topic, payload in frames:
        _append_publish0(stream, _field(topic.encode()), payload, False)
    cut = len(stream) - 5
    broker.sendall(stream[:cut])
    assert client.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    assert got == frames[:-1]
    broker.sendall(stream[cut:])
    assert client.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    assert got == frames
    client._sock = None


def _publish1(topic: bytes, payload: bytes, pid: int) -> bytes:
    """A QoS 1 PUBLISH packet as a broker sends it (MQTT 3.1.1 3.3)."""
    body = len(topic).to_bytes(2, "big") + topic + pid.to_bytes(2, "big") + payload
    n, head = len(body), bytearray(b"\x32")
    while True:
        head.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            break
    return bytes(head) + body


def test_quick_path_hands_publishes_over_in_order_and_acks_each(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """With ``on_publishes`` set (MQTT 3.1.1) the client parses QoS 0 and 1 PUBLISH packets
    itself: every message reaches the callback once, in stream order, also around a packet
    cut across reads and a packet of another type, which paho's own code takes; each QoS 1
    message gets its PUBACK, after it was handed over, in one block."""
    ours, broker = pair
    ours.setblocking(False)
    broker.settimeout(2)
    client = _Client(CallbackAPIVersion.VERSION2, client_id="t")
    order: list[tuple[bytes, bytes]] = []  # as handed over, by either path
    quick: list[tuple[bytes, bytes]] = []
    client.on_publishes = lambda batch: (quick.extend(batch), order.extend(batch))
    client.on_message = lambda c, u, msg: order.append((msg.topic.encode(), msg.payload))
    client._sock = ours
    # over RECV_SIZE (64 KiB) in all: one recv() ends inside a packet, which paho's code then
    # completes and hands over (on_message) after the ones before it
    msgs = [(b"pblink/d%d/up" % i, b"q|0badcafe|%d|%d|" % (i, i) + b"x" * (2000 + i * 9))
            for i in range(40)]
    stream = bytearray()
    for i, (topic, payload) in enumerate(msgs):
        if i % 2:
            stream += _publish1(topic, payload, 1000 + i)
        else:
            _append_publish0(stream, _field(topic), payload, False)
        if i == 20:
            stream += b"\xd0\x00"  # PINGRESP: paho's own code
    cut = len(stream) - 7
    broker.sendall(stream[:cut])
    assert client.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    broker.sendall(stream[cut:])
    assert client.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    assert order == msgs  # each once, in stream order
    assert len(msgs) - 3 <= len(quick) < len(msgs)  # only those cut across reads go through paho
    assert all(type(t) is bytes and type(p) is bytes for t, p in quick)
    assert client._packet_write() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    acks = broker.recv(65536)
    assert acks == b"".join(b"\x40\x02" + (1000 + i).to_bytes(2, "big")
                            for i in range(40) if i % 2)
    client._sock = None


def test_joined_writes_keep_every_packet_and_its_order(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """Queued packets go out joined into one send(), byte for byte in queue order."""
    ours, broker = pair
    broker.settimeout(2)
    client = _Client(CallbackAPIVersion.VERSION2, client_id="t")
    client._sock = ours
    packets = [bytes([0x40, 2, 0, i]) for i in range(1, 30)]
    for p in packets:
        client._out_packet.append({"command": mqtt.PUBACK, "mid": 0, "qos": 1, "pos": 0,
                                   "to_process": len(p), "packet": p, "info": None})
    assert client._packet_write() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    assert not client._out_packet
    assert broker.recv(65536) == b"".join(packets)
    client._sock = None


@pytest.mark.parametrize("payload", [
    b"h", b"h\n", b"q|0badcafe|1|1|hello", b"q|0badcafe|17|15|[1, 2, 3]\n",
    b"q|0badcafe|0|65535|wrapped", b"q|0badcafe|00007|7|a|b|c", b"q|0badcafe|5|5|",
    b"q|0badcafe|1|1|caf\xc3\xa9", b"q|0badcafe|65535|65535|" + b"x" * 1024,
    b"a|0badcafe|3", b"u|0badcafe|free text",
    # malformed: frames.decode's ValueError, same text
    b"q|0badcafe|65536|1|x", b"q|0badcafe|1|65536|x", b"q|0badcafe|1|2|base after id",
    b"q|0badcafe|1|1|" + b"x" * 1025, b"q|0badcafe|1|1|\xed\xa0\x80", b"q|0badcafe|1|1|\xc0\xaf",
    b"q|0badcafe|1|1|two\nlines", b"q|0badcafe|1|1|x\n\n", b"q|0BADCAFE|1|1|x",
    b"q|0badcaf|1|1|x", b"q|0badcafe|123456|1|x", b"q|0badcafe|-1|1|x", b"q|0badcafe|1|1",
    b"q|0badcafe| 1|1|x", b"hh", b"", b"\n",
])
def test_quick_decode_agrees_with_frames_decode(payload: bytes) -> None:
    """The server's quick frame parser gives what link_core's decoder gives, errors included."""
    from link_core import frames
    from server_apps.connection import _decode

    try:
        expected: object = frames.decode(payload)
    except ValueError as exc:
        expected = ("ValueError", str(exc))
    try:
        got: object = _decode(payload)
    except ValueError as exc:
        got = ("ValueError", str(exc))
    assert got == expected
    assert type(got) is type(expected)
