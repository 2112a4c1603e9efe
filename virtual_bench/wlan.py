"""Part of `Bench`: the ESP8266's `network.WLAN` against the simulated access point."""

from __future__ import annotations

import time
from typing import Any

from virtual_bench.board_link import BenchOSError, BoardConn
from virtual_bench.parts import BenchParts
from virtual_bench.wiring import (
    EIO,
    STAT_CONNECTING,
    STAT_GOT_IP,
    STAT_IDLE,
    STAT_NO_AP_FOUND,
    STAT_WRONG_PASSWORD,
)


class Wlan(BenchParts):
    """`wlan` requests: station and access-point interfaces, join time, stored credentials."""

    def _sta_connected(self, conn: BoardConn) -> bool:
        if not (conn.sta_active and conn.connect_at is not None and self.wifi_up):
            return False
        if self.wlan_stored != (self.settings.get("ssid"), self.settings.get("wifi_password")):
            return False
        since = max(conn.connect_at, self.wifi_since)
        return time.monotonic() - since >= self.wifi_join_s

    def _op_wlan(self, conn: BoardConn, iface: int, op: str, *args: Any) -> Any:
        if iface != 0:  # the access point interface: accepted, never used
            if op == "active":
                return False
            if op in ("isconnected",):
                return False
            if op == "status":
                return STAT_IDLE
            if op == "ifconfig":
                return ["192.168.4.1", "255.255.255.0", "192.168.4.1", "0.0.0.0"]
            return None
        if op == "active":
            if args and args[0] is not None:
                conn.sta_active = bool(args[0])
                self.wlan_sta_stored = conn.sta_active
                if not conn.sta_active:
                    conn.connect_at = None
                elif self.wlan_stored is not None and conn.connect_at is None:
                    conn.connect_at = time.monotonic()
            return conn.sta_active
        if op == "connect":
            if not conn.sta_active:
                raise BenchOSError(EIO, "STA interface not active")
            ssid, key = (*args, None, None)[:2]
            if ssid is not None:
                self.wlan_stored = (ssid, key or "")
            conn.connect_at = time.monotonic()
            return None
        if op == "disconnect":
            conn.connect_at = None
            return None
        if op == "isconnected":
            return self._sta_connected(conn)
        if op == "status":
            if args and args[0] == "rssi":
                return -60
            if self._sta_connected(conn):
                return STAT_GOT_IP
            if not conn.sta_active or conn.connect_at is None:
                return STAT_IDLE
            if self.wifi_up and self.wlan_stored is not None:
                if self.wlan_stored[0] != self.settings.get("ssid"):
                    return STAT_NO_AP_FOUND
                if self.wlan_stored[1] != self.settings.get("wifi_password"):
                    return STAT_WRONG_PASSWORD
                return STAT_CONNECTING
            if time.monotonic() - conn.connect_at < 1.0:
                return STAT_CONNECTING
            return STAT_NO_AP_FOUND
        if op == "scan":
            if not self.wifi_up:
                return []
            return [[self.settings.get("ssid"), "a0b1c2d3e4f5", 6, -60, 3, False]]
        if op == "ifconfig":
            if self._sta_connected(conn):
                host = 10 + int(self.conn_id) % 200 if self.conn_id.isdigit() else 10
                return [f"10.0.0.{host}", "255.255.255.0", "10.0.0.1", "10.0.0.1"]
            return ["0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0"]
        if op == "config_get":
            key = args[0]
            if key == "mac":
                return [0x5C, 0xCF, 0x7F, 0, 0, int(self.conn_id) % 256
                        if self.conn_id.isdigit() else 1]
            if key in ("essid", "ssid"):
                return self.wlan_stored[0] if self.wlan_stored else ""
            if key in ("hostname", "dhcp_hostname"):
                return "pblink-esp"
            if key == "txpower":
                return 20
            raise BenchOSError(EIO, f"unknown config {key}")
        if op == "config_set":
            return None
        raise BenchOSError(EIO, f"WLAN.{op} not simulated")

    # -------------------------------------------------------------- machine
