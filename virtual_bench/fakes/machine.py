# In-process fake `machine` for the MicroPython unix port (not device code).
#
# One process plays both sides of the I2C link, so the "hardware" is plain
# module state: no harness behind it (that is virtual_bench/hw, where each
# board is its own process). Used by the esp_bridge tests and the bridge's
# traffic rig (virtual_bench/bridge_rig.py: SoftI2C against MEM, the scripted
# Pyboard of sim_pyboard.py) and by the pb_link tests (I2CTarget, Pin hooks).
#
# Knobs the tests set:
#   pins             every Pin by id (also Pin.pins)
#   hooks[id]        called as hook(pin, level) when the CPU changes an output
#   Pin.drive(v)     the other board sets a level: the IRQ handler runs on an edge
#   Pin.log          levels the CPU wrote, when PBLINK_FAKE_PIN_LOG is set
#                    (off by default: the ESP8266 heap tests must not see it grow)
#   MEM, MV          the Pyboard's 256-byte I2C target memory behind SoftI2C
#   LOG              a list to record SoftI2C transactions: (op, memaddr, nbytes)
#   FAULTS           SoftI2C faults, every k-th transaction:
#                      "eio": raises OSError(EIO)
#                      "flip_in": a read returns one flipped bit
#                      "flip_out": a write stores one flipped bit
#                      "long_hdr": a header read reports length 200
#   targets          every I2CTarget made (pb_link's memory-mode port)
#   PBLINK_SIM_PYBOARD (environment): the first SoftI2C starts sim_pyboard.main(),
#                    a generator stepped by pump() (the fake select's poll calls
#                    it while the bridge waits: no asyncio in the bridge's process)
import gc
import os
import time

MEM = bytearray(256)
MV = memoryview(MEM)
LOG = None
FAULTS = {}
pins = {}
hooks = {}
targets = []
_PIN_LOG = bool(os.getenv("PBLINK_FAKE_PIN_LOG"))
_started = [False]
SIM_TASK = [0]  # bytes of heap the scripted Pyboard's generator took when it was started
_sim = [None]  # the scripted Pyboard: a generator yielding ms to its next step
_due = [0]  # when its next step is due (ticks_ms)


def pump():
    """Run the scripted Pyboard's step if it is due; return ms until its next
    one (-1: there is none). The fake select's poll calls it while the bridge
    waits, as the ESP8266 runs the syn IRQ's handler while poll waits."""
    g = _sim[0]
    if g is None:
        return -1
    now = time.ticks_ms()
    d = time.ticks_diff(_due[0], now)
    if d > 0:
        return d
    ms = next(g)
    _due[0] = time.ticks_add(time.ticks_ms(), ms)
    return ms


class Pin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        self.mode = mode
        self._v = 1 if value else 0
        self._h = None
        self._t = 0
        self.log = [] if _PIN_LOG else None
        pins[id] = self

    def value(self, v=None):
        if v is None:
            return self._v
        v = 1 if v else 0
        if self.log is not None:
            self.log.append(v)
        if v == self._v:
            return None
        self.drive(v)
        h = hooks.get(self.id)
        if h is not None:
            h(self, v)
        return None

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def drive(self, v):
        v = 1 if v else 0
        if v == self._v:
            return
        self._v = v
        if self._h is not None and self._t & (self.IRQ_RISING if v else self.IRQ_FALLING):
            self._h(self)

    def irq(self, handler=None, trigger=3, hard=False):
        self._h = handler
        self._t = trigger


Pin.pins = pins


class SoftI2C:
    # I2C controller against MEM (the Pyboard's target memory at 0x12).
    def __init__(self, scl=None, sda=None, freq=400000, timeout=50000):
        self.n = 0
        if os.getenv("PBLINK_SIM_PYBOARD") and not _started[0]:
            _started[0] = True
            import sim_pyboard

            # its generator (with its frame) is the test's, not the bridge's: measured
            # here and taken out of the bridge's run-time peak (virtual_bench/esp_heap.py)
            gc.collect()
            a = gc.mem_alloc()
            _sim[0] = sim_pyboard.main()
            gc.collect()
            SIM_TASK[0] = gc.mem_alloc() - a
            _due[0] = time.ticks_ms()

    def _tick(self, op, memaddr, n):
        self.n += 1
        if LOG is not None:
            LOG.append((op, memaddr, n))
        k = FAULTS.get("eio")
        if k and self.n % k == 0:
            raise OSError(5)

    def readfrom_mem(self, addr, memaddr, nbytes, addrsize=8):
        b = bytearray(nbytes)
        self.readfrom_mem_into(addr, memaddr, b)
        return bytes(b)

    def readfrom_mem_into(self, addr, memaddr, buf, addrsize=8):
        if addr != 0x12:
            raise OSError(19)
        nbytes = len(buf)
        self._tick("r", memaddr, nbytes)
        buf[:] = MV[memaddr : memaddr + nbytes]
        k = FAULTS.get("long_hdr")
        if k and nbytes == 4 and self.n % k == 0:
            buf[3] = 200
        k = FAULTS.get("flip_in")
        if k and self.n % k == 0:
            buf[(self.n // k) % nbytes] ^= 0x04

    def writeto_mem(self, addr, memaddr, buf, addrsize=8):
        if addr != 0x12:
            raise OSError(19)
        self._tick("w", memaddr, len(buf))
        n = len(buf)
        MEM[memaddr : memaddr + n] = buf
        k = FAULTS.get("flip_out")
        if k and self.n % k == 0 and n:
            MEM[memaddr + (self.n // k) % n] ^= 0x20


class I2CTarget:
    # I2C target in memory mode: the test's scripted ESP8266 reads and writes `mem`.
    def __init__(self, id, addr, *, addrsize=7, mem=None, mem_addrsize=8, scl=None, sda=None):
        self.id = id
        self.addr = addr
        self.mem = mem
        self.mem_addrsize = mem_addrsize
        self.deinited = False
        targets.append(self)

    def deinit(self):
        self.deinited = True


def reset():
    print("MACHINE RESET")
    raise SystemExit(3)


def freq(f=None):
    return 80000000
