# Virtual bench: the parts of `pyb` a Pyboard link needs (plain MicroPython).
# pyb.I2C in SLAVE mode is the older-firmware path: recv()/send() block until
# the controller's matching transaction, as on hardware (see docs/BENCH.md).
import binascii
import time
import machine
import _vbench

Pin = machine.Pin
ExtInt = None  # not simulated: use Pin.irq()


def delay(ms):
    time.sleep_ms(ms)


def udelay(us):
    time.sleep_us(us)


def millis():
    return time.ticks_ms()


def micros():
    return time.ticks_us()


def elapsed_millis(start):
    return time.ticks_diff(time.ticks_ms(), start)


def elapsed_micros(start):
    return time.ticks_diff(time.ticks_us(), start)


def hard_reset():
    machine.reset()


def unique_id():
    return machine.unique_id()


def freq(*args):
    return machine.freq(*args)


def wfi():
    machine.idle()


def disable_irq():
    return 0


def enable_irq(state=True):
    _vbench.poll()


class LED:
    def __init__(self, n):
        self._n = n
        self._i = 0

    def on(self):
        self._i = 255

    def off(self):
        self._i = 0

    def toggle(self):
        self._i = 0 if self._i else 255

    def intensity(self, value=None):
        if value is None:
            return self._i
        self._i = value


class I2C:
    MASTER = 0
    CONTROLLER = 0
    SLAVE = 1
    PERIPHERAL = 1

    def __init__(self, bus, mode=None, *, addr=0x12, baudrate=400000, gencall=False, dma=False):
        self._bus = str(bus)
        self._mode = None
        if mode is not None:
            self.init(mode, addr=addr, baudrate=baudrate, gencall=gencall, dma=dma)

    def init(self, mode, *, addr=0x12, baudrate=400000, gencall=False, dma=False):
        if mode != self.SLAVE:
            raise ValueError('virtual bench: only pyb.I2C SLAVE mode is simulated')
        self._mode = mode
        self._addr = addr
        _vbench.call('slave', self._bus, addr)

    def deinit(self):
        if self._mode is not None:
            self._mode = None
            _vbench.call('slave_off', self._addr)

    def recv(self, recv, addr=0x00, *, timeout=5000):
        n = recv if isinstance(recv, int) else len(recv)
        data = binascii.unhexlify(_vbench.call('srecv', self._addr, n, timeout))
        if isinstance(recv, int):
            return data
        recv[:len(data)] = data
        return recv

    def send(self, send, addr=0x00, *, timeout=5000):
        if isinstance(send, int):
            send = bytes((send,))
        _vbench.call('ssend', self._addr, binascii.hexlify(bytes(send)).decode(), timeout)

    def is_ready(self, addr):
        return False

    def scan(self):
        return []
