# pb_link: the Pyboard side of pblink-mqtt (MicroPython).
# Copy this package and link_core/ to the board; `import pb_link.pb_client`
# runs the demo. Applications subclass pb_link.app_base.AppBase.
