# In-process fake `pyb` for the pb_link tests (not device code; see machine.py):
# I2C in SLAVE mode whose blocking recv/send are served
# in-process by `I2C.controller` (the scripted ESP8266).
instances = []


class I2C:
    CONTROLLER = 0
    MASTER = 0
    PERIPHERAL = 1
    SLAVE = 1

    controller = None

    def __init__(self, bus, mode=0, *, addr=0x12, **kw):
        self.bus = bus
        self.mode = mode
        self.addr = addr
        self.deinited = False
        instances.append(self)

    def recv(self, buf, addr=0, *, timeout=5000):
        if I2C.controller is None:
            raise OSError(110)
        return I2C.controller.slave_recv(buf, timeout)

    def send(self, buf, addr=0, *, timeout=5000):
        if I2C.controller is None:
            raise OSError(110)
        I2C.controller.slave_send(buf, timeout)

    def deinit(self):
        self.deinited = True
