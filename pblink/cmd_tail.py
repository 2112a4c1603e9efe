"""`pblink tail CONN_ID`: watch one device's traffic, like mosquitto_sub."""

from __future__ import annotations

import argparse
import collections
import logging
import os
import queue
import signal
import sys
import time
from types import FrameType
from typing import Any

from pblink.common import BROKER_ENV_HELP, COUNT, SECONDS, add_broker_options, add_command

log = logging.getLogger("pblink.tail")

DESCRIPTION = f"""\
Subscribe to a device's up, down and status topics and print what goes by,
decoded (docs/PROTOCOL.md 3): one output line per data line and per status
change, until Ctrl-C:

    up: <line>          a line from the device to the server app
    down: <line>        a line from a server app to the device
    status: online      the bridge's retained status (online/offline)

A qos line retransmitted with the same session and id is printed once.
--frames shows every frame with its kind, session and id (acks, heartbeats
and retransmissions included). tail only listens: it acknowledges nothing.
Connect with the server's credentials: a device's credentials are let in only
with the device's own client id (pblink-<conn_id>), which tail does not use.

{BROKER_ENV_HELP}"""


QUIET_S = 10.0  # seconds without a message before tail says so


class QuietWatch:
    """Says when nothing at all has come on a device's topics for ``after_s`` seconds.

    ``heard(now)`` on every message; ``due(now)`` is True once per quiet spell.
    Nothing at all (not even a retained status) means the device never
    connected with this conn_id, root and broker, or the ACL hides it.
    """

    def __init__(self, after_s: float, now: float) -> None:
        self.after_s = after_s
        self._last = now
        self._told = False

    def heard(self, now: float) -> None:
        self._last = now
        self._told = False

    def due(self, now: float) -> bool:
        if self._told or now - self._last < self.after_s:
            return False
        self._told = True
        return True


class TailPrinter:
    """Turns messages on one device's topics into output lines."""

    def __init__(self, up: str, down: str, status: str, *, frames: bool = False,
                 timestamps: bool = False, memory: int = 1024) -> None:
        self.leaves = {up: "up", down: "down", status: "status"}
        self.frames = frames
        self.timestamps = timestamps
        self._seen: dict[str, collections.OrderedDict[tuple[str, int], None]] = {
            "up": collections.OrderedDict(), "down": collections.OrderedDict()}
        self._memory = memory
        self._status: str | None = None

    def _stamp(self, text: str) -> str:
        if not self.timestamps:
            return text
        now = time.time()
        clock = time.strftime("%H:%M:%S", time.localtime(now))
        return f"{clock}.{int(now * 1000) % 1000:03d} {text}"

    def _repeat(self, leaf: str, session: str, msg_id: int) -> bool:
        seen = self._seen[leaf]
        key = (session, msg_id)
        if key in seen:
            seen.move_to_end(key)
            return True
        seen[key] = None
        if len(seen) > self._memory:
            seen.popitem(last=False)
        return False

    def message(
        self, topic: str, payload: bytes, retained: bool = False
    ) -> tuple[str | None, bool]:
        """(output line or None, whether it is a data line)."""
        from link_core.frames import ACK, QOS, UNRELIABLE, decode

        leaf = self.leaves.get(topic)
        if leaf is None:
            return None, False
        if leaf == "status":
            text = payload.decode("utf-8", "replace")
            if text == self._status and not self.frames:
                return None, False
            self._status = text
            return self._stamp(f"status: {text}{' (retained)' if retained else ''}"), False
        try:
            kind, session, msg_id, base, line = decode(payload)
        except ValueError as exc:
            log.warning("%s: malformed frame: %s", topic, exc)
            if not self.frames:
                return None, False
            text = payload[:200].decode("utf-8", "replace")
            return self._stamp(f"{leaf}: [malformed] {text}"), False
        if kind == QOS:
            assert session is not None and msg_id is not None
            repeat = self._repeat(leaf, session, msg_id)
            if self.frames:
                mark = " (repeat)" if repeat else ""
                text = f"{leaf} q {session} #{msg_id} base {base}{mark}: {line}"
                return self._stamp(text), not repeat
            return (None, False) if repeat else (self._stamp(f"{leaf}: {line}"), True)
        if kind == UNRELIABLE:
            if self.frames:
                return self._stamp(f"{leaf} u {session}: {line}"), True
            return self._stamp(f"{leaf}: {line}"), True
        if not self.frames:
            return None, False
        if kind == ACK:
            return self._stamp(f"{leaf} a {session} #{msg_id}"), False
        return self._stamp(f"{leaf} h"), False


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "tail", help="print a device's lines and status changes",
                         description=DESCRIPTION)
    parser.add_argument("conn_id", metavar="CONN_ID", help="the device's connection id")
    parser.add_argument("--frames", action="store_true",
                        help="show every frame: kind, session, id; acks, heartbeats, repeats")
    parser.add_argument("-t", "--timestamps", action="store_true", help="prefix local time")
    parser.add_argument("-n", "--count", type=COUNT, metavar="N",
                        help="exit after N data lines (exit 5 if --timeout comes first)")
    parser.add_argument("--timeout", type=SECONDS, metavar="S", help="exit after S seconds")
    add_broker_options(parser)
    parser.set_defaults(func=run)


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from link_core.names import Topics
    from pblink.common import (
        BrokerOptions,
        RefusedError,
        TimedOutError,
        check_conn_id,
        connect_paho,
        random_client_id,
        stop_paho,
    )

    conn_id = check_conn_id(args.conn_id)
    opts = BrokerOptions.from_args(args)
    topics = Topics(opts.root, conn_id)
    up, down, status = topics.up, topics.down, topics.status
    printer = TailPrinter(up, down, status, frames=args.frames, timestamps=args.timestamps)
    events: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=10_000)

    def setup(client: Any) -> None:
        client.on_message = lambda c, u, msg: events.put(("msg", msg.topic, bytes(msg.payload),
                                                          bool(msg.retain)))
        client.on_subscribe = lambda c, u, mid, codes, props: events.put(("suback", codes))

    def on_connected(client: Any) -> None:
        client.subscribe([(up, 1), (down, 1), (status, 1)])

    def on_lost(reason: str) -> None:
        events.put(("lost", reason))

    previous = signal.signal(signal.SIGTERM, _sigterm)
    client = connect_paho(opts, random_client_id("tail"), setup=setup,
                          on_connected=on_connected, on_lost=on_lost)
    deadline = time.monotonic() + args.timeout if args.timeout is not None else None
    lines = 0
    quiet = QuietWatch(QUIET_S, time.monotonic())
    try:
        while args.count is None or lines < args.count:
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                if args.count is not None:
                    raise TimedOutError(f"{lines} of {args.count} line(s) within "
                                        f"{args.timeout:g} s")
                break
            try:
                event = events.get(timeout=wait)
            except queue.Empty:
                if quiet.due(time.monotonic()):
                    log.warning(
                        "nothing on %s/%s/# for %g s: is a device configured with conn_id %s, "
                        "topic root %s and this broker (%s), and is it powered? With an ACL, "
                        "are its credentials for user %s?", opts.root, conn_id, QUIET_S,
                        conn_id, opts.root, opts.address, conn_id)
                continue
            if event[0] == "msg":
                quiet.heard(time.monotonic())
                out, is_line = printer.message(event[1], event[2], event[3])
                if out is not None:
                    print(out, flush=True)
                lines += is_line
            elif event[0] == "suback":
                refused = [code for code in event[1] if code.is_failure]
                if refused:
                    raise RefusedError(f"MQTT broker {opts.address} refused the subscription "
                                       f"to {opts.root}/{conn_id}/...: "
                                       f"{str(refused[0]).lower()}")
                log.info("subscribed to %s, %s, %s", up, down, status)
            elif event[0] == "lost":
                log.warning("lost the MQTT broker %s (%s); reconnecting", opts.address, event[1])
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `pblink tail X | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_paho(client)
    return 0
