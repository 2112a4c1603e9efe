# The demo application (the original pb_client, on pblink-mqtt).
#
# Every demo_period_ms (default 5000) it writes the JSON list
# [conn_id, tx_count, rx_count]: tx_count counts its writes from 1 upwards,
# rx_count the lines received so far. It prints every line it receives.
# Reports and server up/down are printed by AppBase's defaults.
#
# `import pb_link.pb_client` runs it; importing this module does not.
import asyncio
import json

from pb_link.app_base import AppBase


class App(AppBase):
    def __init__(self, conn_id, config, hardware, verbose=False):
        super().__init__(conn_id, config, hardware, verbose)
        self.period_ms = self.tuning["demo_period_ms"]
        self.tx_count = 0
        self.rx_count = 0
        self.finished = asyncio.Event()

    def start(self):  # synchronous, runs once when the link first comes up
        asyncio.create_task(self.reader())
        asyncio.create_task(self.writer())

    async def reader(self):
        while True:
            line = await self.readline()
            self.rx_count += 1
            print("Got", line, end="")

    async def writer(self):
        while True:
            await asyncio.sleep_ms(self.period_ms)  # type: ignore[attr-defined]
            self.tx_count += 1
            await self.write(json.dumps([self.conn_id, self.tx_count, self.rx_count]))

    def close(self):
        super().close()
        self.finished.set()


async def main(verbose=None):
    from pb_link import config as cfg  # builds the hardware: only when run

    if verbose is None:
        verbose = cfg.verbose
    app = App(cfg.conn_id, cfg.config, cfg.hardware, verbose)
    try:
        await app.finished.wait()
    finally:
        app.close()


def run(verbose=None):
    try:
        asyncio.run(main(verbose))
    finally:
        asyncio.new_event_loop()
