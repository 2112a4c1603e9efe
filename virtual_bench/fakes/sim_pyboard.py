# A scripted Pyboard for the esp_bridge tests (not device code): the
# Initiator of PROTOCOL.md 1.2 over the fake bus of machine.py, built on
# link_core. main() runs the app scenario configured by environment variables:
# a generator that yields the ms to its next step (machine.pump steps it while
# the bridge waits in poll; the bridge's process has no asyncio). The bridge's
# Responder exchanges in the syn IRQ's handler, which the fake Pin runs at once:
# ack has followed syn by the time drive() returns, or never will in this step.
import gc
import json
import os
import sys
import time

import machine
from link_core.i2c_link import BLOCK_MAX, INITIATOR, LinkEndpoint
from link_core.i2c_tools import PollPolicy, counters


class Initiator:
    def __init__(self, rx_queue=4, timeout_ms=300):
        self.link = LinkEndpoint(INITIATOR, 4, rx_queue)
        self.buf = bytearray(BLOCK_MAX)
        self.bv = memoryview(self.buf)
        self.poll = PollPolicy()
        self.timeout_ms = timeout_ms
        self.exchanges = 0
        self.fails = 0
        self.mem_errors = 0

    def _wait(self, pin, level):
        return pin._v == level

    def exchange(self):
        syn = machine.Pin.pins[5]
        ack = machine.Pin.pins[4]
        if not self._wait(ack, 0):
            self.fails += 1
            return False
        n = self.link.build_block(self.buf)
        machine.MEM[0:n] = self.bv[:n]
        syn.drive(1)
        ok = self._wait(ack, 1)
        if ok:
            try:
                self.link.on_block(machine.MV[0x80 : 0x80 + BLOCK_MAX])
            except MemoryError:  # its chunk stays unacknowledged: resent
                self.mem_errors += 1
        syn.drive(0)
        if ok:
            ok = self._wait(ack, 0)
        self.exchanges += 1
        if not ok:
            self.fails += 1
        return ok

    def step(self):
        """One exchange; the ms to wait before the next (a failed one: timeout_ms,
        as the Initiator's wait for ack)."""
        ok = self.exchange()
        return self.poll.delay_ms(time.ticks_ms(), self.link.busy) if ok else self.timeout_ms


def frame(i, size):
    if i % 2:
        head = "q|0badcafe|%d|%d|" % (i, i)
    else:
        head = "u|0badcafe|"
    line = "line %d " % i
    return (head + line + "x" * max(0, size - len(line))).encode()


# What one bytes object of n bytes holds in the heap: its header (4 words, one GC
# block) plus its data and terminator rounded up to GC blocks of 4 words
# (py/objstr.c mp_obj_new_str_copy, py/gc.c BYTES_PER_BLOCK); main() checks it.
_BLK = 16 if sys.maxsize < 2**32 else 32


def held(n):
    return _BLK + (n + _BLK) // _BLK * _BLK


def fragment(keep, size):
    """Fill the heap with pieces of ``size`` bytes kept in ``keep``. With size
    200, every other piece is then freed: plenty free, but no hole fits a
    1,000-byte line (the ESP8266's failure mode). Called again with size 600 it
    plugs the large holes that objects dying since have opened. The pieces hang
    in groups of 16 chained by their last slot from keep[0]: no list grows (a
    list that grows leaves a hole, and one that cannot would drop the chain)."""
    head = keep[0]
    while True:
        try:
            group = [None] * 17
        except MemoryError:
            break
        group[16] = head
        head = group
        n = 0
        try:
            while n < 16:
                group[n] = bytearray(size)
                n += 1
        except MemoryError:
            break
    if size <= 200:
        group = head
        while group is not None:
            for i in range(0, 16, 2):
                group[i] = None
            group = group[16]
    keep[0] = head


def main():
    gc.collect()
    a0 = gc.mem_alloc()
    cfg = json.loads(os.getenv("PBLINK_SIM_CONFIG"))
    n_up = int(os.getenv("PBLINK_SIM_UP", "0"))
    size = int(os.getenv("PBLINK_SIM_SIZE", "60"))
    ini = Initiator()
    link = ini.link
    cmsg = b"C" + json.dumps(cfg).encode()
    if os.getenv("PBLINK_SIM_EARLY"):  # a frame before the config
        link.queue_message(b"u|0badcafe|early")
        link.queue_message(cmsg)
    else:
        link.sync_message = cmsg
    ok_ = False
    sent = 0
    down = 0
    bl = 0  # last backlog frame number seen
    k = 0
    peak = 0
    live_peak = 0
    bridge_peak = 0  # live heap minus what this scripted Pyboard holds
    own_peak = 0
    t_gc = time.ticks_ms()
    m = None
    frag = os.getenv("PBLINK_SIM_FRAGMENT")  # "sent,ms": fragment the heap for ms
    frag_at, frag_ms = [int(x) for x in frag.split(",")] if frag else (0, 0)
    ballast = None
    frag_t0 = None
    gc.collect()
    own_fixed = gc.mem_alloc() - a0  # this Pyboard's Initiator, config, locals
    m = frame(1000, 1000)
    gc.collect()
    check = gc.mem_alloc() - a0 - own_fixed
    m = None
    base = gc.mem_alloc()
    print("PB START heap_base=%d own_fixed=%d held_check=%d/%d"
          % (base, own_fixed, check, held(len(frame(1000, 1000)))))
    synced = False
    while True:
        yield ini.step()
        if link.synced and not synced:
            print("PB SYNCED")
        synced = link.synced
        a = gc.mem_alloc()
        if a > peak:
            peak = a
        while True:
            m = link.pop_message()
            if m is None:
                break
            c = m[0]
            if c == 0x4B:  # K
                k += 1
                print("PB K %d" % k)
            elif c == 0x55:  # U
                ok_ = True
                print("PB U")
            elif c == 0x44:  # D, with the bridge's reason when it has one
                ok_ = False
                print("PB D" + (" " + m[1:].decode() if len(m) > 1 else ""))
            elif c in b"RWBE":
                print("PB %s %s" % (chr(c), m[1:].decode()))
            else:
                down += 1
                if down % 100 == 0:
                    print("PB DOWN %d" % down)
                i = m.find(b"|bl ")  # backlog frames "...|bl <n> ...": checked for order
                if i > 0:
                    n = int(m[i + 4 : m.find(b" ", i + 4)])
                    if n != bl + 1:
                        print("PB BL GAP want %d got %d" % (bl + 1, n))
                    bl = n
                    if n % 50 == 0:
                        print("PB BL %d" % n)
                if m.endswith(b"|END"):
                    gc.collect()
                    print(
                        "PB DONE up=%d down=%d k=%d exchanges=%d fails=%d peak=%d live_peak=%d"
                        " bridge_peak=%d own_fixed=%d own_peak=%d mem_errors=%d sim_task=%d"
                        % (sent, down, k, ini.exchanges, ini.fails, peak, live_peak,
                           bridge_peak, own_fixed, own_peak, ini.mem_errors,
                           machine.SIM_TASK[0])
                    )
                    print("PB COUNTERS %s" % json.dumps(counters(link)))
                    import micropython

                    micropython.mem_info()
                    sys.exit(0)
        m = None
        now = time.ticks_ms()
        if time.ticks_diff(now, t_gc) >= 1000:
            # once a second, with no received message held: the live heap, and
            # what of it is this Pyboard's (its fixed part and its queued lines)
            t_gc = now
            gc.collect()
            a = gc.mem_alloc()
            own = own_fixed
            for q in link._txq:
                if q is not cmsg:
                    own += held(len(q))
            if a > live_peak:
                live_peak = a
            if a - own > bridge_peak:
                bridge_peak = a - own
            if own > own_peak:
                own_peak = own
            if os.getenv("PBLINK_SIM_MEMLOG"):
                print("PB MEM live=%d own=%d sent=%d down=%d" % (a, own, sent, down))
        if frag_at and sent >= frag_at and ballast is None and frag_t0 is None:
            print("PB FRAGMENT")
            ballast = [None]
            fragment(ballast, 200)
            frag_t0 = time.ticks_ms()
        if ballast is not None:
            now = time.ticks_ms()
            if time.ticks_diff(now, frag_t0) >= frag_ms:
                ballast = None
                gc.collect()
                print("PB RELEASED mem_errors=%d" % ini.mem_errors)
            else:  # at every step: a hole that opened is plugged before the bridge's turn
                fragment(ballast, 600)
        try:
            while ok_ and sent < n_up and link.can_queue():
                link.queue_message(frame(sent + 1, 1000 if (sent + 1) % 50 == 0 else size))
                sent += 1
                if sent % 100 == 0:
                    print("PB UP %d" % sent)
        except MemoryError:  # no room for the next line yet: made again later
            ini.mem_errors += 1
