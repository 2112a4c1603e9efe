# Virtual bench: the few `esp` functions ESP8266 boot code calls (plain MicroPython).
SLEEP_NONE = 0
SLEEP_LIGHT = 1
SLEEP_MODEM = 2
_sleep = SLEEP_MODEM
_osdebug = 0


def sleep_type(t=None):
    global _sleep
    if t is None:
        return _sleep
    _sleep = t


def osdebug(uart_no, level=None):
    global _osdebug
    _osdebug = uart_no


def flash_size():
    return 4 * 1024 * 1024


def flash_id():
    return 0x1640EF


def flash_user_start():
    return 0x9B000


def check_fw():
    return True


def deepsleep(time_us=0, option=0):
    raise OSError(95)  # not simulated
