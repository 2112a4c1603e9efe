"""`pblink send CONN_ID LINE`: send one line to a device and wait for its ack."""

from __future__ import annotations

import argparse
import logging
import os
import queue
import time
from typing import Any

from pblink.common import (
    BROKER_ENV_HELP,
    MILLISECONDS,
    SECONDS,
    add_broker_options,
    add_command,
)

log = logging.getLogger("pblink.send")

DESCRIPTION = f"""\
Send one line to a device, as a short-lived server-side sender with its own
session (docs/PROTOCOL.md 3.1): publish a qos frame on <root>/<conn_id>/down,
retransmit it while the device is not known to be offline, and exit 0 when the
device acknowledges it (exit 5 after --timeout; the frame may still be
delivered later from the broker's queue). --no-qos sends a `u` frame once and
exits: it may be lost.

A qos send opens its own sender session towards the device. The device tracks
up to four sender sessions at once (docs/PROTOCOL.md 3.2), so a server
application writing to the same device at the same time is not disturbed. send
listens only for its own ack: it never acknowledges (and so never takes) lines
the device sends.

{BROKER_ENV_HELP}"""


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "send", help="send one line to a device (waits for the ack)",
                         description=DESCRIPTION)
    parser.add_argument("conn_id", metavar="CONN_ID", help="the device's connection id")
    parser.add_argument("line", metavar="LINE", help="the line (UTF-8, at most 1024 bytes)")
    parser.add_argument("--no-qos", dest="qos", action="store_false",
                        help="send once without acknowledgement (may be lost)")
    parser.add_argument("--timeout", type=SECONDS, default=10.0, metavar="S",
                        help="seconds to wait for the ack (default %(default)s)")
    parser.add_argument("--retry-ms", type=MILLISECONDS, default=1500, metavar="MS",
                        help="first retransmission wait, doubling up to 8x (default %(default)s)")
    add_broker_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from link_core import frames, lines, names
    from link_core.endpoint import Sender
    from pblink.common import (
        BrokerOptions,
        TimedOutError,
        UsageError,
        check_conn_id,
        connect_paho,
        random_client_id,
        stop_paho,
    )
    from server_apps.clock import now_ms

    conn_id = check_conn_id(args.conn_id)
    try:
        line = lines.check_line(args.line)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    opts = BrokerOptions.from_args(args)

    topics = names.Topics(opts.root, conn_id)
    up, down, status = topics.up, topics.down, topics.status
    sender = Sender(frames.new_session(os.urandom(4)), 1, args.retry_ms)
    events: queue.Queue[tuple[Any, ...]] = queue.Queue()

    def setup(client: Any) -> None:
        client.on_message = lambda c, u, msg: events.put(("msg", msg.topic, bytes(msg.payload)))
        client.on_subscribe = lambda c, u, mid, codes, props: events.put(("suback", codes))

    def on_connected(client: Any) -> None:
        if args.qos:
            client.subscribe([(up, 1), (status, 1)])

    started = time.monotonic()
    client = connect_paho(opts, random_client_id("send"), setup=setup,
                          on_connected=on_connected)
    try:
        if not args.qos:
            info = client.publish(down, sender.unreliable(line), qos=0)
            info.wait_for_publish(timeout=max(0.1, args.timeout))
            log.info("sent %r to %s without qos (session %s)", line, conn_id, sender.session)
            return 0
        deadline = started + args.timeout
        _wait_suback(events, deadline, opts.address, conn_id)
        client.publish(down, sender.send(line, now_ms()), qos=1)
        device = "unknown"
        while time.monotonic() < deadline:
            try:
                event = events.get(timeout=min(0.05, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                event = None
            if event is not None and event[0] == "msg":
                topic, payload = event[1], event[2]
                if topic == status:
                    new = payload.decode("utf-8", "replace")
                    if new == "online" and device == "offline":  # back: resend at once
                        for frame in sender.resend_all(now_ms()):
                            client.publish(down, frame, qos=1)
                    device = new
                    log.info("device %s is %s", conn_id, device)
                    continue
                try:
                    got = frames.decode(payload)
                except ValueError:
                    continue
                if got.kind == frames.ACK and sender.on_ack(got.session, got.msg_id):
                    log.info("%s acknowledged %r after %.0f ms", conn_id, line,
                             (time.monotonic() - started) * 1000)
                    return 0
                if got.kind != frames.ACK:
                    device = "online"  # it is talking
            for frame in sender.due(now_ms(), device != "offline"):
                log.debug("retransmitting to %s", conn_id)
                client.publish(down, frame, qos=1)
        raise TimedOutError(
            f"no acknowledgement from device {conn_id} within {args.timeout:g} s "
            f"(device status: {device}); the line may still be delivered from the broker's queue")
    finally:
        stop_paho(client)


def _wait_suback(events: queue.Queue[tuple[Any, ...]], deadline: float, address: str,
                 conn_id: str) -> None:
    from pblink.common import RefusedError, TimedOutError

    pending: list[tuple[Any, ...]] = []
    try:
        while True:
            try:
                event = events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimedOutError(f"MQTT broker {address} did not confirm the "
                                    "subscription") from None
            if event[0] != "suback":
                pending.append(event)
                continue
            refused = [code for code in event[1] if code.is_failure]
            if refused:
                raise RefusedError(f"MQTT broker {address} refused the subscription to "
                                   f"{conn_id}'s topics: {str(refused[0]).lower()}")
            return
    finally:
        for event in pending:  # retained status and the like, in order
            events.put(event)

