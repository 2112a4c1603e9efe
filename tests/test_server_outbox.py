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
    _append_publish0(block, topic.encode(), payload, protocol == mqtt.MQTTv5)
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
        _append_publish0(stream, topic.encode(), payload, False)
    cut = len(stream) - 5
    broker.sendall(stream[:cut])
    assert client.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    assert got == frames[:-1]
    broker.sendall(stream[cut:])
    assert client.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    assert got == frames
    client._sock = None
