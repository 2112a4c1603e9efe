"""A logic analyser on the bench's I2C bus: the link messages of each exchange."""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("virtual_bench.harness")  # one logger for the whole bench


class BusSniffer:
    """A logic analyser on the I2C bus: rebuilds the link messages of each
    exchange from the bytes the bus carried (as the receiver saw them, so a
    corrupted frame counts as corrupt here too). Frames are read with
    link_core's codec; a chunk repeated with the same seq is skipped."""

    def __init__(self, on_message: Callable[[str, bytes], None] | None = None) -> None:
        self.on_message = on_message
        self.frames = 0
        self.corrupt = 0
        # exchanges whose frame carried payload one way or both: what a link kept
        # busy needs; the others are polls that found nothing to send
        self.loaded = 0
        self.messages = {"up": 0, "down": 0}
        self._buf = {"up": bytearray(), "down": bytearray()}
        self._last_seq: dict[str, int | None] = {"up": None, "down": None}
        self._parts: dict[str, list[bytes]] = {"up": [], "down": []}

    def transfer(self, write: bool, memaddr: int | None, data: bytes) -> None:
        """One bus transaction's data: reads at 0x00/0x04 carry the Initiator's
        frame (up), writes at 0x80/0x84 the Responder's (down)."""
        direction = "down" if write else "up"
        base = 0x80 if write else 0x00
        if memaddr == base:
            self._buf[direction] = bytearray(data)
        elif memaddr == base + 4:
            self._buf[direction] += data

    def exchange_done(self) -> None:
        """ack rose: both frames of the exchange are complete."""
        from link_core.i2c_tools import decode_block

        loaded = False
        for direction in ("up", "down"):
            raw = bytes(self._buf[direction])
            self._buf[direction] = bytearray()
            if not raw:
                continue
            self.frames += 1
            frame = decode_block(raw)
            if frame is None:
                self.corrupt += 1
                continue
            loaded = loaded or bool(frame.payload)
            if frame.sync or frame.fresh:
                self._last_seq[direction] = None
                self._parts[direction] = []
            if not frame.payload or frame.seq == self._last_seq[direction]:
                continue
            self._last_seq[direction] = frame.seq
            self._parts[direction].append(frame.payload)
            if frame.more:
                continue
            msg = b"".join(self._parts[direction])
            self._parts[direction] = []
            self.messages[direction] += 1
            if self.on_message is not None:
                try:
                    self.on_message(direction, msg)
                except Exception:
                    log.exception("bus sniffer callback failed")
        if loaded:
            self.loaded += 1
