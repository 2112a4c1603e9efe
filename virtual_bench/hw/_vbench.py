# Virtual bench: the board side of the link to the harness (plain MicroPython).
#
# One TCP connection to the harness (address in env PBLINK_BENCH, board name in
# PBLINK_BOARD) carries newline-terminated JSON arrays both ways:
#   board -> harness  [op, args...]            a request; exactly one reply follows
#                     ['mw', addr, off, hex]   one-way: bytes the CPU wrote to target memory
#   harness -> board  ['r', value]             reply to the pending request
#                     ['x', errno, text]       reply: raise OSError(errno)
#                     ['m', addr, off, hex]    the bus controller wrote target memory
#                     ['e', pin, level]        an edge on an input pin with an IRQ
#                     ['t', addr, trigger]     an I2CTarget event (IRQ_END_READ/WRITE)
# Events are applied in the order they arrive. Memory updates ('m') are applied at
# once, wherever they are read; IRQ handlers run from the asyncio pump task (a
# process with asyncio: the Pyboard's), from select.poll while it waits (a process
# without: the ESP8266's bridge, hw/select.py), or right after a request returns
# (like a soft IRQ between bytecodes), never nested.
import os
import socket
import json
import binascii
import sys

BOARD = os.getenv('PBLINK_BOARD') or 'board'
_sock = None
_buf = b''
_events = []
_dispatching = False
_pump = None
_kick = None
pins = {}      # pin name -> Pin object with an IRQ handler
targets = {}   # bus address -> I2CTarget object (memory mode)


def _connect():
    global _sock
    addr = os.getenv('PBLINK_BENCH')
    if not addr:
        raise OSError('virtual bench: PBLINK_BENCH is not set (run under virtual_bench.harness)')
    host, port = addr.rsplit(':', 1)
    s = socket.socket()
    s.connect(socket.getaddrinfo(host, int(port))[0][-1])
    s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY
    _sock = s
    _send(['hello', BOARD])
    _make_kick(_wait_reply())


def _make_kick(port):
    # The unix port's poll() sleeps 1 ms before it looks at a ThreadSafeFlag (or
    # any object without a file descriptor). An interrupt wakes a real CPU at
    # once, so after running IRQ handlers we make a datagram socket readable to
    # end that sleep. Purely a simulation artefact fix; device code never sees it.
    global _kick
    if not port:
        return
    try:
        k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        a = socket.getaddrinfo('127.0.0.1', port)[0][-1]
        k.bind(a)
        k.connect(a)
        _kick = k
    except OSError:
        _kick = None


def _send(msg):
    _sock.sendall(json.dumps(msg).encode() + b'\n')


def _gone():
    # The harness closed the connection: the bench is over, so is this board.
    print('virtual bench: harness gone, board', BOARD, 'stops')
    raise SystemExit(3)


def _fill(block):
    # Read what the socket has; block only if asked. False when nothing came.
    global _buf
    try:
        data = _sock.recv(4096) if block else _sock.recv(4096, socket.MSG_DONTWAIT)
    except OSError as e:
        if e.errno == 11:  # EAGAIN
            return False
        _gone()
    if not data:
        _gone()
    _buf += data
    return True


def _next(block):
    global _buf
    while True:
        i = _buf.find(b'\n')
        if i >= 0:
            line = _buf[:i]
            _buf = _buf[i + 1:]
            return json.loads(line)
        if not _fill(block):
            return None


def _take(msg):
    # An event: memory updates land now, IRQs wait for dispatch.
    k = msg[0]
    if k == 'm':
        t = targets.get(msg[1])
        if t is not None:
            t._landed(msg[2], binascii.unhexlify(msg[3]))
    else:
        _events.append(msg)


def _wait_reply():
    while True:
        msg = _next(True)
        k = msg[0]
        if k == 'r':
            return msg[1]
        if k == 'x':
            raise OSError(msg[1])
        _take(msg)


def call(*msg):
    """Synchronous request to the harness; returns its reply, raises OSError."""
    if _sock is None:
        _connect()
    for t in targets.values():
        t._push()
    _send(msg)
    try:
        return _wait_reply()
    finally:
        # Events that came in the same read as the reply sit in _buf, where the
        # pump's wait for socket readability would not see them: take them now.
        poll()


def poll():
    """Take in every event that has arrived, without blocking; run IRQ handlers."""
    if _sock is None:
        return
    while True:
        msg = _next(False)
        if msg is None:
            break
        _take(msg)
    dispatch()


def dispatch():
    global _dispatching
    if _dispatching or not _events:
        return
    _dispatching = True
    ran = False
    try:
        while _events:
            ran = True
            ev = _events.pop(0)
            if ev[0] == 'e':
                obj = pins.get(ev[1])
                if obj is not None:
                    obj._fire(ev[2])
            elif ev[0] == 't':
                obj = targets.get(ev[1])
                if obj is not None:
                    obj._fire(ev[2])
    finally:
        _dispatching = False
    if ran and _kick is not None and _pump is not None:
        try:
            _kick.send(b'k')
        except OSError:
            pass


def run_handler(handler, arg):
    try:
        handler(arg)
    except Exception as e:  # as MicroPython does for a failing soft IRQ handler
        print('virtual bench: uncaught exception in IRQ handler')
        sys.print_exception(e)


async def _pump_task():
    from asyncio import core
    while True:
        yield core._io_queue.queue_read(_sock)
        poll()


async def _kick_task():
    from asyncio import core
    while True:
        yield core._io_queue.queue_read(_kick)
        try:
            while True:
                _kick.recv(64, socket.MSG_DONTWAIT)
        except OSError:
            pass


def ensure_pump():
    """Start the asyncio task that runs IRQ handlers as events arrive, in a
    process with asyncio; without it (the ESP8266's bridge) hw/select.py's
    poll runs them while the process waits."""
    global _pump
    if _sock is None:
        _connect()
    if _pump is None and 'asyncio' in sys.modules:
        import asyncio
        _pump = asyncio.create_task(_pump_task())
        if _kick is not None:
            asyncio.create_task(_kick_task())
