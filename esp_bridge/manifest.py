# Freeze manifest for the ESP8266 bridge firmware (docs/FIRMWARE.md):
#   make -C ports/esp8266 BOARD=ESP8266_GENERIC FROZEN_MANIFEST=/path/to/esp_bridge/manifest.py
# A FROZEN_MANIFEST replaces the board's own one, so this includes the port's
# base modules (_boot, flashbdev, inisetup, ssl via bundle-networking, ...)
# and asyncio, then the bridge and link_core.

include("$(PORT_DIR)/boards/manifest.py")
include("$(MPY_DIR)/extmod/asyncio")

# the bridge: top-level modules; main.py runs at boot
module("main.py")
module("bridge.py")
module("mqtt.py")

# the shared sans-I/O core, as the package link_core
package("link_core", base_path="..")
