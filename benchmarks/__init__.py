"""`pblink bench`: performance figures of pblink-mqtt (docs/PERFORMANCE.md).

One module per benchmark family, each exposing ``FAMILY`` (its name),
``DESCRIPTION`` and ``async def run(ctx: Context) -> list[Row]``:

- latency (latency.py): one-way and echo latency on the virtual bench, this
  design's poll policy against the original's 100 ms poll;
- throughput (throughput.py): lines/s and bytes/s through one pair, I2C bytes
  per payload byte, bus utilisation;
- scale (scale.py, scale_server.py, scale_load.py): N CPython device doubles
  against one LinkServer process (Mosquitto, amqtt);
- esp (esp_budget.py): .mpy sizes, the bridge's heap peak, the smallest heap
  that works (bisection);
- recovery (recovery.py): time to resume after WiFi, ESP8266 and broker faults;
- soak (soak.py): the chaos demo for a long time with a process-death watch
  (only when asked for).

``benchmarks.runner`` runs them and writes the table; nothing here asserts
anything about speed.
"""

FAMILIES = ("latency", "throughput", "scale", "esp", "recovery")
EXTRA_FAMILIES = ("soak",)
