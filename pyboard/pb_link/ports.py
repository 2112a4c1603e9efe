# I2C port adapters for the Initiator (docs/PROTOCOL.md 1.1, 1.2).
#
# A port moves one block each way per exchange and knows nothing of the
# blocks' meaning. The caller writes its block into `port.out` (at least
# BLOCK_MAX bytes), then `await port.exchange()` returns the Responder's
# block as a buffer (valid until the next exchange) or None when the
# handshake or a bus transfer timed out.
#
#   TargetPort: machine.I2CTarget with a 256-byte memory (non-blocking).
#       `out` is a view of mem[0x00:0x80]; the Responder writes mem[0x80:].
#   SlavePort:  pyb.I2C in SLAVE mode (blocking, as the original pb_link),
#       following the Responder's fixed transaction sequence.
#
# Memory coherence: the block is complete in `out` before syn rises, and
# the reply is read only after ack has risen (and before syn falls).
import asyncio
from time import ticks_diff, ticks_ms

from machine import Pin
from micropython import const

TYPE_CHECKING = False
if TYPE_CHECKING:  # type annotations only: MicroPython ignores them
    import pyb
    from machine import I2CTarget

from link_core.i2c_link import CHUNK_MAX, HEADER, MEM_RESPONDER

# PROTOCOL.md 1.1: the Initiator's block at 0x00, the Responder's at MEM_RESPONDER (= half)


def make_port(i2c, syn: Pin, ack: Pin, timeout_ms: int) -> "TargetPort | SlavePort":
    """The port for hardware[0]: a tuple (I2CTarget, mem) or a pyb.I2C slave."""
    if isinstance(i2c, tuple):
        return TargetPort(i2c[0], i2c[1], syn, ack, timeout_ms)
    return SlavePort(i2c, syn, ack, timeout_ms)


class _Port:
    out: memoryview  # the Initiator's block goes here before exchange()

    def __init__(self, syn: Pin, ack: Pin, timeout_ms: int) -> None:
        self._syn = syn
        self._ack = ack
        self.timeout_ms = timeout_ms
        self.failures = 0  # exchanges that timed out
        self._flag = asyncio.ThreadSafeFlag()  # type: ignore[attr-defined]
        self._rx = bytearray(MEM_RESPONDER)
        syn.value(0)
        ack.irq(handler=self._irq, trigger=Pin.IRQ_RISING | Pin.IRQ_FALLING)
        # One ticker wakes the ack waiter now and then so that timeouts need
        # no per-exchange allocation (asyncio.wait_for_ms makes a task).
        self._tick_ms = max(1, min(100, timeout_ms // 8))
        self._ticker = asyncio.create_task(self._tick())

    def _irq(self, _pin: Pin) -> None:
        self._flag.set()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep_ms(self._tick_ms)  # type: ignore[attr-defined]
            self._flag.set()

    async def _wait_ack(self, level: int) -> bool:
        # True once ack reads `level`, False after timeout_ms. Callers test
        # the level first: a coroutine call allocates, a pin read does not.
        t0 = ticks_ms()
        ack = self._ack
        while ack.value() != level:
            if ticks_diff(ticks_ms(), t0) >= self.timeout_ms:
                return False
            await self._flag.wait()
        return True

    async def _finish(self, ok: bool) -> "bytearray | None":
        """End an exchange (PROTOCOL.md 1.2 steps 4-5): syn low, wait for ack low."""
        self._syn.value(0)
        if self._ack.value() and not await self._wait_ack(0):
            ok = False
        if not ok:
            self.failures += 1
            return None
        return self._rx

    def close(self) -> None:
        self._syn.value(0)
        self._ack.irq(handler=None)
        self._ticker.cancel()


class TargetPort(_Port):
    def __init__(
        self, target: "I2CTarget", mem: bytearray, syn: Pin, ack: Pin, timeout_ms: int
    ) -> None:
        if len(mem) < 2 * MEM_RESPONDER:
            raise ValueError("I2CTarget memory must be 256 bytes")
        super().__init__(syn, ack, timeout_ms)
        self._target = target
        mv = memoryview(mem)
        self._mem = mem
        self.out = mv[0:MEM_RESPONDER]
        self._in = mv[MEM_RESPONDER : MEM_RESPONDER + MEM_RESPONDER]

    async def exchange(self) -> "bytearray | None":
        ack = self._ack
        syn = self._syn
        if ack.value() and not await self._wait_ack(0):  # last exchange not over
            self.failures += 1
            return None
        # A Responder that raises ack without writing leaves this corrupt
        # (version nibble 0) instead of the previous reply.
        self._mem[MEM_RESPONDER] = 0
        syn.value(1)
        ok = ack.value() == 1 or await self._wait_ack(1)
        if ok:
            self._rx[:] = self._in
        return await self._finish(ok)

    def close(self) -> None:
        super().close()
        self._target.deinit()


class SlavePort(_Port):
    # pyb.I2C slave: the Responder's transactions (1.2) seen from the slave:
    #   readfrom_mem(0x12, 0x00, 4)      -> recv(1) + send(4)
    #   readfrom_mem(0x12, 0x04, n + 2)  -> recv(1) + send(n + 2)
    #   writeto_mem(0x12, 0x80, header)  -> recv(5)
    #   writeto_mem(0x12, 0x84, m + 2)   -> recv(m + 3)
    # Each blocks for up to timeout_ms (pyb raises OSError on timeout).
    def __init__(self, i2c: "pyb.I2C", syn: Pin, ack: Pin, timeout_ms: int) -> None:
        super().__init__(syn, ack, timeout_ms)
        self._i2c = i2c
        self._tx = bytearray(MEM_RESPONDER)
        self.out = memoryview(self._tx)
        self._one = bytearray(1)
        self._hdr = bytearray(5)
        self._hdr_in = memoryview(self._hdr)[1:5]
        self._rxv = memoryview(self._rx)

    async def exchange(self) -> "bytearray | None":
        ack = self._ack
        syn = self._syn
        if ack.value() and not await self._wait_ack(0):  # last exchange not over
            self.failures += 1
            return None
        i2c = self._i2c
        t = self.timeout_ms
        tx = self.out
        n = self._tx[3]
        rx = self._rxv
        one = self._one
        hdr = self._hdr
        ok = False
        syn.value(1)
        try:
            # Each transfer starts with the memory address the controller
            # uses; a wrong one means the two sides are out of step.
            i2c.recv(one, timeout=t)
            if one[0] == 0x00:
                i2c.send(tx[0:HEADER], timeout=t)
                i2c.recv(one, timeout=t)
                if one[0] == HEADER:
                    i2c.send(tx[HEADER : HEADER + n + 2], timeout=t)
                    i2c.recv(hdr, timeout=t)
                    m = hdr[4]
                    if hdr[0] == MEM_RESPONDER and m <= CHUNK_MAX:
                        rx[0:HEADER] = self._hdr_in
                        # rx[3] takes the address byte, then is put back.
                        i2c.recv(rx[HEADER - 1 : HEADER + m + 2], timeout=t)
                        if rx[3] == MEM_RESPONDER + HEADER:
                            rx[3] = m
                            ok = ack.value() == 1 or await self._wait_ack(1)
        except OSError:
            ok = False
        return await self._finish(ok)

    def close(self) -> None:
        super().close()
        self._i2c.deinit()
