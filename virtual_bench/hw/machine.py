# Virtual bench: a small, honest `machine` module for the MicroPython unix port.
# Pins, I2C controller (SoftI2C) and I2C target (memory mode) are carried by the
# harness process (see _vbench.py and docs/BENCH.md). Plain MicroPython.
import binascii
import time
import _vbench

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5


def _name(pin_id):
    if isinstance(pin_id, Pin):
        return pin_id._id
    return str(pin_id)


class Pin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    ALT = 3
    ALT_OPEN_DRAIN = 4
    ANALOG = 5
    PULL_NONE = 0
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2
    # pyb-style aliases
    OUT_PP = 1
    OUT_OD = 2

    def __init__(self, id, mode=-1, pull=-1, *, value=None, **kw):
        self._id = _name(id)
        self._handler = None
        self._trigger = 0
        self.init(mode, pull, value=value)

    def init(self, mode=-1, pull=-1, *, value=None, **kw):
        # Arguments left out keep the pin's current setting, as on hardware.
        m = None if mode == -1 else mode
        p = None if pull == -1 else (self.PULL_NONE if pull is None else pull)
        self._mode, self._pull = _vbench.call('pin', self._id, m, p, value)

    def value(self, x=None):
        if x is None:
            return _vbench.call('pr', self._id)
        _vbench.call('pw', self._id, 1 if x else 0)

    def __call__(self, x=None):
        return self.value(x)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    high = on
    low = off

    def mode(self, mode=None):
        if mode is None:
            return self._mode
        self.init(mode)

    def pull(self, pull=None):
        if pull is None:
            return self._pull
        self.init(-1, pull)

    def name(self):
        return self._id

    def irq(self, handler=None, trigger=3, *, priority=1, wake=None, hard=False):
        self._handler = handler
        self._trigger = trigger if handler is not None else 0
        _vbench.call('irq', self._id, self._trigger)
        if handler is not None:
            _vbench.pins[self._id] = self
            _vbench.ensure_pump()
        else:
            _vbench.pins.pop(self._id, None)

    def _fire(self, level):
        h = self._handler
        if h is not None and self._trigger & (self.IRQ_RISING if level else self.IRQ_FALLING):
            _vbench.run_handler(h, self)

    def __repr__(self):
        return 'Pin(%s)' % self._id


class _Board:
    # pyb.Pin.board.X11 / machine.Pin.board.X11 style names
    def __getattr__(self, name):
        return name


Pin.board = _Board()
Pin.cpu = _Board()


class SoftI2C:
    """I2C controller: every transaction is one blocking request to the harness."""

    def __init__(self, scl, sda, *, freq=400000, timeout=50000):
        self._scl = _name(scl)
        self._sda = _name(sda)
        self.init(freq=freq, timeout=timeout)

    def init(self, *, freq=400000, timeout=50000, **kw):
        self._freq = freq
        self._timeout = timeout
        _vbench.call('i2c', self._scl, self._sda, freq, timeout)

    def _xfer(self, addr, memaddr, wbuf, nread, addrsize=8):
        h = _vbench.call('xfer', self._scl, self._sda, addr, memaddr, addrsize,
                         binascii.hexlify(wbuf).decode() if wbuf else '', nread)
        return binascii.unhexlify(h)

    def scan(self):
        return _vbench.call('scan', self._scl, self._sda)

    def readfrom_mem(self, addr, memaddr, nbytes, *, addrsize=8):
        return self._xfer(addr, memaddr, None, nbytes, addrsize)

    def readfrom_mem_into(self, addr, memaddr, buf, *, addrsize=8):
        data = self._xfer(addr, memaddr, None, len(buf), addrsize)
        buf[:len(data)] = data

    def writeto_mem(self, addr, memaddr, buf, *, addrsize=8):
        self._xfer(addr, memaddr, bytes(buf), 0, addrsize)

    def readfrom(self, addr, nbytes, stop=True):
        return self._xfer(addr, None, None, nbytes)

    def readfrom_into(self, addr, buf, stop=True):
        data = self._xfer(addr, None, None, len(buf))
        buf[:len(data)] = data

    def writeto(self, addr, buf, stop=True):
        self._xfer(addr, None, bytes(buf), 0)
        return len(buf) + 1  # number of ACKs, address byte included

    def writevto(self, addr, vector, stop=True):
        data = b''.join(bytes(b) for b in vector)
        self._xfer(addr, None, data, 0)
        return len(data) + 1


I2C = SoftI2C  # on the ESP8266 machine.I2C is a software I2C too


class I2CTarget:
    """I2C target in memory mode. The CPU's writes to `mem` are pushed to the
    harness (only the changed bytes) before the board's next request, so
    before any pin write; the controller's writes arrive as events."""

    IRQ_ADDR_MATCH_READ = 1
    IRQ_ADDR_MATCH_WRITE = 2
    IRQ_READ_REQ = 4
    IRQ_WRITE_REQ = 8
    IRQ_END_READ = 16
    IRQ_END_WRITE = 32

    def __init__(self, id=None, addr=None, *, addrsize=7, mem=None, mem_addrsize=8,
                 scl=None, sda=None):
        if addr is None:
            raise TypeError('addr required')
        if mem is None:
            raise ValueError('virtual bench: only memory mode (mem=) is simulated')
        if mem_addrsize != 8:
            raise ValueError('virtual bench: mem_addrsize must be 8')
        self._id = str(id)
        self._addr = addr
        self._mem = mem
        self._shadow = bytearray(mem)  # what the harness holds
        self._handler = None
        self._trigger = 0
        self._flags = 0
        _vbench.targets[addr] = self
        _vbench.call('tgt', self._id, addr, binascii.hexlify(bytes(mem)).decode())
        _vbench.ensure_pump()

    def deinit(self):
        if _vbench.targets.get(self._addr) is self:
            del _vbench.targets[self._addr]
            _vbench.call('tgt_off', self._addr)

    def _push(self):
        mem = self._mem
        sh = self._shadow
        if mem == sh:
            return
        n = len(mem)
        i = 0
        while i < n:
            if mem[i] != sh[i]:
                j = i + 1
                while j < n and mem[j] != sh[j]:
                    j += 1
                chunk = bytes(mem[i:j])
                sh[i:j] = chunk
                _vbench._send(['mw', self._addr, i, binascii.hexlify(chunk).decode()])
                i = j
            else:
                i += 1

    def _landed(self, off, data):
        n = len(data)
        self._mem[off:off + n] = data
        self._shadow[off:off + n] = data

    def irq(self, handler=None, trigger=IRQ_END_READ | IRQ_END_WRITE, hard=False):
        if handler is not None or trigger != self._trigger:
            self._handler = handler
            self._trigger = trigger if handler is not None else 0
            _vbench.call('tgt_irq', self._addr, self._trigger)
        return self

    def flags(self):
        return self._flags

    def _fire(self, trig):
        if self._handler is not None and self._trigger & trig:
            self._flags = trig
            _vbench.run_handler(self._handler, self)

    def write(self, buf):
        raise OSError(95)  # EOPNOTSUPP: callback mode is not simulated

    def readinto(self, buf):
        raise OSError(95)


class WDT:
    # The harness restarts this board if feed() is not called within timeout ms.
    def __init__(self, id=0, timeout=5000):
        _vbench.call('wdt', timeout)

    def feed(self):
        _vbench.call('wdt_feed')


def reset():
    # A real reset: the harness kills this process and starts a fresh one.
    _vbench.call('reset')
    time.sleep(10)
    raise SystemExit(0)


def soft_reset():
    reset()


def reset_cause():
    return _vbench.call('reset_cause')


def unique_id():
    return binascii.unhexlify(_vbench.call('uid'))


def freq(*args):
    if args:
        return None
    return 160000000 if _vbench.BOARD == 'esp8266' else 168000000


def idle():
    # Wait briefly for an event, as an interrupt would wake the CPU.
    _vbench.poll()
    time.sleep_ms(1)
    _vbench.poll()


def disable_irq():
    return 0


def enable_irq(state=0):
    _vbench.poll()
