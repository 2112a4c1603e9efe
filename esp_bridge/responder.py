# The I2C Responder (docs/PROTOCOL.md 1.2): the ESP8266 side of the link.
#
# The Pyboard (Initiator, I2C target at 0x12 with a 256-byte memory) raises
# syn when its block is at memory 0x00. An IRQ on both edges of syn sets a
# ThreadSafeFlag; the task below then carries out exactly four bus
# transactions, feeds link_core's LinkEndpoint, raises ack, and lowers it
# again once syn is low. A bus error (OSError from SoftI2C) aborts the
# exchange without raising ack: the Initiator times out and retries. A
# MemoryError (no room for a completed message on a fragmented heap) leaves
# that chunk unacknowledged: the exchange goes on, the Pyboard resends it.
from micropython import const
import asyncio

from link_core import i2c_link
from link_core.i2c_link import BLOCK_MAX, HEADER, CHUNK_MAX, LinkEndpoint, RESPONDER

# wiring of the seed (GPIO numbers)
SCL = const(0)
SDA = const(2)
SYN = const(5)
ACK = const(4)
I2C_HZ = const(400000)


class Responder:
    """Moves blocks between the bus and a LinkEndpoint(RESPONDER).

    i2c, syn, ack: a SoftI2C and two Pins; None builds them from the seed's
    wiring. tx_queue, rx_queue: the LinkEndpoint's message bounds (when the
    received queue is full its blocks carry HOLD and the Pyboard stops
    sending payload).
    """

    def __init__(self, i2c=None, syn=None, ack=None, tx_queue: int = 6, rx_queue: int = 4) -> None:
        if i2c is None or syn is None or ack is None:
            from machine import Pin, SoftI2C

            if ack is None:
                ack = Pin(ACK, Pin.OUT, value=0)
            if syn is None:
                syn = Pin(SYN, Pin.IN)
            if i2c is None:
                i2c = SoftI2C(scl=Pin(SCL), sda=Pin(SDA), freq=I2C_HZ)
        self.i2c = i2c
        self.syn = syn
        self.ack = ack
        ack.value(0)
        self.link = LinkEndpoint(RESPONDER, tx_queue, rx_queue)
        # one block buffer both ways: the block read is taken by on_block before
        # build_block writes the answer over it
        self._rx = bytearray(BLOCK_MAX)
        self._rxv = memoryview(self._rx)
        self._hdr = self._rxv[:HEADER]
        self._flag = asyncio.ThreadSafeFlag()
        self._rx_ev = asyncio.Event()  # a complete message arrived
        self._tx_ev = asyncio.Event()  # room in the outgoing queue
        self._failed = False  # bus error in this exchange: wait for syn low
        # True while the event loop is blocked in a call that still runs
        # scheduled IRQ handlers (DNS lookup): exchanges then run in the handler
        self.inline = False
        self._gone = 0  # messages that left the outgoing queue (sent or dropped)
        self.exchanges = 0
        self.bus_errors = 0
        self.mem_errors = 0  # MemoryErrors caught in exchanges (the chunk is resent)
        syn.irq(handler=self._irq, trigger=syn.IRQ_RISING | syn.IRQ_FALLING)

    def _irq(self, _pin) -> None:
        if self.inline:
            self._service()
        else:
            self._flag.set()

    def blocking(self, on: bool) -> None:
        """Bracket a blocking call (e.g. getaddrinfo) so exchanges go on meanwhile."""
        self.inline = on
        if not on:
            self._flag.set()

    def kick(self) -> None:
        """Re-examine the handshake lines (a lost edge costs one tick, not a reset)."""
        self._flag.set()

    # ----- messages -----

    def get_nowait(self):
        """The oldest complete message from the Pyboard (bytes) or None."""
        return self.link.pop_message()

    async def get(self):
        """Wait for the next message from the Pyboard."""
        while True:
            m = self.link.pop_message()
            if m is not None:
                return m
            self._rx_ev.clear()
            await self._rx_ev.wait()

    def put_nowait(self, msg, first: bool = False) -> bool:
        """Queue a message for the Pyboard; False when the queue is full."""
        return self.link.queue_message(msg, first)

    async def put(self, msg, limit: int = 0) -> None:
        """Queue a message, waiting while limit (default: the whole queue) is reached."""
        link = self.link
        while not link.can_queue() or (limit and link.tx_pending >= limit):
            self._tx_ev.clear()
            await self._tx_ev.wait()
        link.queue_message(msg)

    async def room(self, limit: int) -> None:
        """Wait until fewer than limit messages are queued for the Pyboard."""
        link = self.link
        while not link.can_queue() or link.tx_pending >= limit:
            self._tx_ev.clear()
            await self._tx_ev.wait()

    # ----- the bus -----

    def exchange(self) -> bool:
        """One exchange, steps 2.1 to 2.4 of PROTOCOL.md 1.2. False on a bus error.

        Reads into the preallocated block buffer and builds the answer in it:
        no per-exchange allocation beyond two memoryview slices."""
        i2c = self.i2c
        buf = self._rx
        bv = self._rxv
        hdr = self._hdr
        link = self.link
        try:
            i2c.readfrom_mem_into(i2c_link.I2C_ADDR, i2c_link.MEM_INITIATOR, hdr)
            n = buf[3]
            if n <= CHUNK_MAX:
                block = bv[: n + 6]
                i2c.readfrom_mem_into(i2c_link.I2C_ADDR, i2c_link.MEM_INITIATOR + 4, block[4:])
            else:
                block = hdr  # too long: corrupt, counted, ignored
            try:
                link.on_block(block)
            except MemoryError:
                self.mem_errors += 1  # its chunk stays unacknowledged: resent
            ln = link.build_block(buf)
            i2c.writeto_mem(i2c_link.I2C_ADDR, i2c_link.MEM_RESPONDER, hdr)
            i2c.writeto_mem(i2c_link.I2C_ADDR, i2c_link.MEM_RESPONDER + 4, bv[4:ln])
        except OSError:
            self.bus_errors += 1
            return False
        except MemoryError:  # a slice: no ack, the Initiator retries the exchange
            self.mem_errors += 1
            return False
        self.exchanges += 1
        if link.rx_pending:
            self._rx_ev.set()
        gone = link.messages_out + link.dropped
        if gone != self._gone:  # room was made: wake a waiting put()/room()
            self._gone = gone
            self._tx_ev.set()
        return True

    def _service(self) -> None:
        """Act on the handshake lines: exchange on syn high, ack low on syn low."""
        syn = self.syn
        ack = self.ack
        if syn.value():
            if not ack.value() and not self._failed:
                if self.exchange():
                    ack.value(1)
                else:
                    self._failed = True  # no ack: the Initiator times out, retries
        else:
            self._failed = False
            if ack.value():
                ack.value(0)

    async def run(self) -> None:
        flag = self._flag
        flag.set()  # syn may already be high
        while True:
            await flag.wait()
            self._service()
