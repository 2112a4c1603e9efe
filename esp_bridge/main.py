# Boot entry of the ESP8266 bridge. Frozen into the firmware as main.py: the
# ESP8266 port runs _boot.py, then boot.py, then main.py, and a frozen main.py
# is found before a file of that name (MicroPython source: shared/runtime/pyexec.c,
# pyexec_file_if_exists). So the bridge starts on power-up with nothing on
# the filesystem. Ctrl-C on the UART gives the REPL.
import sys

# Frozen modules (the bridge, link_core) live on the '.frozen' path entry.
# First: a stale file on the filesystem must not shadow them. Also restores it
# when MICROPYPATH replaced the default path (unix port).
if ".frozen" in sys.path:
    sys.path.remove(".frozen")
sys.path.insert(0, ".frozen")

import bridge

try:
    bridge.Bridge(None).run()
except KeyboardInterrupt:
    pass
except Exception as e:  # the main loop failed: reboot; the Pyboard sees FRESH and resyncs
    sys.print_exception(e)
    import machine

    machine.reset()
