# The Pyboard application of the link benchmarks (MicroPython, runs on the
# virtual bench as the Pyboard's program: Bench(pyboard_module="pb_bench_agent",
# pyboard_paths=[this folder])). An AppBase subclass driven by command lines
# from the benchmark's server side; everything it prints is timestamped by the
# harness as it arrives (one clock with the server, which runs in the harness).
#
# Commands (lines from the server):
#   !echo QOS N LO HI    N times: print "W i", write "x i" (qos, wait=True), wait
#                        for the echo "e i" (printed "E i" by the reader), sleep a
#                        random LO..HI ms; then print "ECHODONE"
#   !burst QOS WAIT SIZE MS   write lines of SIZE bytes ("b i xxx...") as fast as
#                        write() lets it for MS ms; then print "BSENT n"
#   !count               print "DCOUNT n first_ms last_ms" for the lines "d ..."
#                        received since the last !count (Pyboard's own clock)
#   !stream QOS PERIOD   from now on write "s i" (qos, wait) every PERIOD ms,
#                        printing "W i" before each write (recovery benchmark)
# Lines "e i" are echoes; lines "d ..." are counted silently.
import asyncio
import os
from time import ticks_diff, ticks_ms

from pb_link import config as cfg
from pb_link.app_base import AppBase


def _rand_ms(lo, hi):
    if hi <= lo:
        return lo
    r = os.urandom(2)
    return lo + (r[0] << 8 | r[1]) % (hi - lo + 1)


class Agent(AppBase):
    def start(self):
        self.echo_seen = 0
        self.echo_evt = asyncio.Event()
        self.dcount = 0
        self.dfirst = 0
        self.dlast = 0
        self.streaming = False
        print("AGENT start")
        self.tasks = [asyncio.create_task(self.reader())]

    async def reader(self):
        while True:
            line = await self.readline()
            c = line[0]
            if c == "d":
                now = ticks_ms()
                if self.dcount == 0:
                    self.dfirst = now
                self.dlast = now
                self.dcount += 1
            elif c == "e":
                i = int(line.split()[1])
                print("E", i)
                self.echo_seen = i
                self.echo_evt.set()
            elif c == "!":
                self.tasks.append(asyncio.create_task(self.command(line.split())))
                del self.tasks[1:-4]  # keep the last few references

    async def command(self, words):
        cmd = words[0]
        if cmd == "!echo":
            qos = words[1] == "1"
            n = int(words[2])
            lo = int(words[3])
            hi = int(words[4])
            for i in range(1, n + 1):
                await asyncio.sleep_ms(_rand_ms(lo, hi))
                self.echo_evt.clear()
                print("W", i)
                await self.write("x " + str(i), qos, True)
                t0 = ticks_ms()
                while self.echo_seen < i and ticks_diff(ticks_ms(), t0) < 3000:
                    try:
                        await asyncio.wait_for_ms(self.echo_evt.wait(), 3000)
                    except TimeoutError:
                        break
                    self.echo_evt.clear()
            print("ECHODONE")
        elif cmd == "!burst":
            qos = words[1] == "1"
            wait = words[2] == "1"
            size = int(words[3])
            ms = int(words[4])
            n = 0
            t0 = ticks_ms()
            pad = "y" * size
            while ticks_diff(ticks_ms(), t0) < ms:
                n += 1
                head = "b " + str(n) + " "
                await self.write(head + pad[len(head):], qos, wait)
            print("BSENT", n)
        elif cmd == "!count":
            print("DCOUNT", self.dcount, self.dfirst, self.dlast)
            self.dcount = 0
        elif cmd == "!stream":
            if self.streaming:
                return
            self.streaming = True
            qos = words[1] == "1"
            period = int(words[2])
            i = 0
            while True:
                i += 1
                print("W", i)
                await self.write("s " + str(i), qos, True)
                await asyncio.sleep_ms(period)

    async def server_ok(self, up):
        print("AGENT up" if up else "AGENT down")

    async def report(self, data):
        print("AGENT report", data)

    async def bad_wifi(self):
        print("AGENT bad_wifi")

    async def bad_server(self):
        print("AGENT bad_server")


async def main():
    Agent(cfg.conn_id, cfg.config, cfg.hardware, cfg.verbose)
    await asyncio.Event().wait()


asyncio.run(main())
