"""The bridge's tick: 'K' every keepalive_ms and 'R' every report_s, however long it runs.

On the ESP8266 ``time.ticks_ms()`` wraps at 2**30 (about 12.4 days) and
``ticks_diff`` is signed: a tick number derived from the ticks (the distance
from 0) jumped at 2**29 by a non-multiple of the periods, so one 'K' gap
could be almost twice keepalive_ms and the Pyboard would reset the link
(keepalive_ms 3000 with keepalive_timeout_ms 4000 is a valid setting).
"""

from __future__ import annotations

from pathlib import Path

from conftest import ROOT
from test_bridge_support import run_mpy

from virtual_bench.bridge_rig import make_hw_dir

ESP_BRIDGE = ROOT / "esp_bridge"

_TICKS = """
import bridge

PERIOD = 1 << 30  # the ESP8266 port's ticks period


class EspTime:  # time as on the ESP8266: ticks wrap at 2**30, ticks_diff is signed
    now = 0

    @staticmethod
    def ticks_ms():
        return EspTime.now

    @staticmethod
    def ticks_add(a, b):
        return (a + b) % PERIOD

    @staticmethod
    def ticks_diff(a, b):
        return ((a - b + PERIOD // 2) % PERIOD) - PERIOD // 2


START = (1 << 29) - 30000  # 30 s before the signed distance from 0 turns over
EspTime.now = START
bridge.time = EspTime
b = bridge.Bridge(None)
cfg = list(b.cfg)
cfg[0] = "dev1"  # _CONN_ID: configured
cfg[4] = 1  # _REPORT_S
cfg[15] = 3000  # _KEEPALIVE_MS
b.cfg = tuple(cfg)
link = b.resp.link
link.synced = True
b._syncs = link.syncs
sent = []
b.resp.queue_first = lambda msg: sent.append(("K", EspTime.now))
b._ctl = lambda msg: sent.append((chr(msg[0]), EspTime.now)) or True
for step in range(0, 60000, 100):  # 60 s in 100 ms turns, across 2**29
    EspTime.now = (START + step) % PERIOD
    b._tick(EspTime.now)
for kind in "KR":
    t = [s[1] - START if s[1] >= START else s[1] + PERIOD - START for s in sent if s[0] == kind]
    print(kind, sorted(set(b - a for a, b in zip(t, t[1:]))), len(t))
"""


def test_keepalive_and_report_keep_their_period_across_the_ticks_turnover(
        micropython_bin: str, tmp_path: Path) -> None:
    r = run_mpy(micropython_bin, _TICKS, tmp_path, make_hw_dir(tmp_path), ESP_BRIDGE, ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    gaps = dict((ln.split(" ", 1)[0], ln) for ln in r.stdout.splitlines())
    assert gaps["K"].startswith("K [3000] "), r.stdout  # every K gap exactly keepalive_ms
    assert gaps["R"].startswith("R [1000] "), r.stdout  # every R gap exactly report_s
    assert int(gaps["K"].split()[-1]) >= 19 and int(gaps["R"].split()[-1]) >= 59
