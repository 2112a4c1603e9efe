# Freeze manifest for the ESP8266 bridge firmware (docs/FIRMWARE.md):
#   make -C ports/esp8266 BOARD=ESP8266_GENERIC FROZEN_MANIFEST=/path/to/esp_bridge/manifest.py
# A FROZEN_MANIFEST replaces the board's own one, so this includes the port's
# base modules (_boot, flashbdev, inisetup, ssl via bundle-networking, ...),
# then the bridge and link_core. No asyncio: nothing on the ESP8266 uses it
# (the bridge is one main loop over select.poll, docs/FIRMWARE.md "What runs").

include("$(PORT_DIR)/boards/manifest.py")

# the bridge: top-level modules; main.py runs at boot
module("main.py")
module("bridge.py")
module("mqtt.py")

# the shared sans-I/O core, as the package link_core
package("link_core", base_path="..")
