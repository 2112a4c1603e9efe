# A Pyboard application for pblink-mqtt: a sensor.
#
# Every PERIOD_MS it sends a reading with qos=False (a lost reading is
# replaced by the next one, so it is not worth a retransmission) and every
# ALARM_EVERY readings an alarm with qos=True (it must arrive, exactly once).
# It prints what the server answers. Try it on the virtual bench:
#
#   pblink run --board-app examples/sensor/sensor_app.py:Sensor \
#              --server-app examples/sensor/sensor_server.py:app
import asyncio

from pb_link.app_base import AppBase

PERIOD_MS = 200
ALARM_EVERY = 5


class Sensor(AppBase):
    def start(self):  # runs once, when the link first comes up
        self.readings = 0
        self.alarms = 0
        asyncio.create_task(self.measure())
        asyncio.create_task(self.listen())

    def read_sensor(self):
        return 20 + self.readings % 7  # a real app reads its ADC here

    async def measure(self):
        while True:
            self.readings += 1
            await self.write("reading %d %d" % (self.readings, self.read_sensor()), qos=False)
            if self.readings % ALARM_EVERY == 0:
                self.alarms += 1
                await self.write("alarm %d" % self.alarms)  # qos=True, wait=True
                print("sent alarm", self.alarms)
            await asyncio.sleep_ms(PERIOD_MS)

    async def listen(self):
        while True:
            line = await self.readline()
            print("server:", line, end="")
