#!/usr/bin/env bash
# Remakes the pictures in README.md (run from the repository root after
# `python3 dev.py setup`; needs mosquitto and chromium). Plots: see the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=docs/images
shot() { chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
           --window-size="$2" --screenshot="$3" "$1" 2>/dev/null; }

# 1. a run's timeline: two devices, 40 s of chaos
.venv/bin/pblink demo --devices 2 --duration 40 --chaos --seed 3 --view quiet \
    --timeline "$out/timeline.html"
shot "file://$PWD/$out/timeline.html" 1400,860 "$out/timeline.png"

# 2. the status page: three bench devices with the demo server app on the
#    embedded broker; device 2's WiFi is cut 10 s before the screenshot
.venv/bin/python - "$out/monitor.png" <<'PY'
import asyncio, subprocess, sys
from virtual_bench.demo import DEMO_SETTINGS
from virtual_bench.harness import Lab

async def main(png: str) -> None:
    lab = Lab(devices=3, settings=dict(DEMO_SETTINGS, report_s=2),
              server_args=["--ids", "1", "2", "3", "--state-dir", "state"])
    await lab.start()
    host, port = lab.broker_address
    mon = subprocess.Popen([sys.executable, "-m", "pblink", "monitor", "--host", host,
                            "--port", str(port), "--listen", "127.0.0.1:18942"])
    try:
        await asyncio.sleep(20)
        await lab.benches[1].cut_wifi(None)
        await asyncio.sleep(10)
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", "--window-size=1300,330", f"--screenshot={png}",
                        "http://127.0.0.1:18942/"], stderr=subprocess.DEVNULL, check=True)
    finally:
        mon.terminate()
        await lab.stop()

asyncio.run(main(sys.argv[1]))
PY

# 3. plots: redrawn from the committed full run's JSON (docs/PERFORMANCE.md, "Plots");
#    a new full run: .venv/bin/pblink bench --out bench-results/bench-full.json, then
#    copy its JSON here and name it below.
result=bench-20261130-093443
.venv/bin/pblink bench --plot "$out/$result.json"
for plot in latency throughput scale esp_heap recovery; do
    mv "$out/$result-$plot.png" "$out/plot-$plot.png"
done
