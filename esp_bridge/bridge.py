# The relay: I2C link messages <-> MQTT (docs/PROTOCOL.md 2 and 4).
#
# No asyncio (docs/FIRMWARE.md "Memory budget"): one main loop (Bridge.run)
# whose one sleep is select.poll on the MQTT socket (MQTTClient.wait), at most
# _IDLE_MS, _BUSY_MS while the link moves; each turn runs the jobs:
#   _mqtt       the MQTT client's step: connect, read, write, keepalive, retries
#   _uplink     link messages from the Pyboard: 'C' config; q/u/a -> <root>/<id>/up
#   _downlink   frames on <root>/<id>/down -> link messages to the Pyboard
#   _net        WiFi, then broker, with backoff; status online + will offline
#   _tick       every 100 ms: 'K' keepalive, 'R' reports, 'U'/'D' changes,
#               'h' on up when quiet (PROTOCOL.md 4.4), the last 'R' on <root>/<id>/report
# The I2C exchanges run in the syn pin's IRQ handler (Responder, below); the
# link's queues are the hand-over.
#
# Bounded both ways: the link's received-message queue (full -> HOLD stops
# the Pyboard) is emptied only as fast as MQTT takes it; MQTT is read only
# while the link's outgoing queue has room for down frames. The bridge holds
# no end-to-end state: at most the messages in flight.
#
# No allocation failure stops it: a MemoryError leaves the chunk
# unacknowledged (Responder), the frame unpublished or the down frame
# unqueued (kept and retried here) or the MQTT packet unacknowledged
# (mqtt.py); one escaping a job is caught by the main loop, which goes on.
# Each is counted and the count goes out in the next 'R' report (PROTOCOL.md 2).
from micropython import const
import gc
import sys
import time

from link_core import control, i2c_link, liveness
from link_core.i2c_link import BLOCK_MAX, CHUNK_MAX, HEADER, RESPONDER, LinkEndpoint
from link_core.names import MAX_MESSAGE, OFFLINE, ONLINE, Topics, client_id
from mqtt import MQTTClient, MQTTError

# Queue depths, in messages of up to 1,152 bytes (docs/FIRMWARE.md "Memory budget")
_TX_QUEUE = const(4)  # link messages queued for the Pyboard
_DATA_TX = const(2)  # of which down frames may use this many: K/U/D always fit
_RX_QUEUE = const(2)  # messages from the Pyboard not yet published (then HOLD)
_MQ_INFLIGHT = const(3)  # QoS 1 publishes awaiting PUBACK
_MQ_SLOTS = const(2)  # frames from down not yet queued for the Pyboard
_TICK_MS = const(100)  # link_core/schema.py: the lowest timeout_ms is 2 x this
_IDLE_MS = const(20)  # the main loop's longest sleep (poll on the MQTT socket)
_BUSY_MS = const(2)  # its sleep while the link exchanged since the last turn

# Entries of the config (the C message), named as the rows of link_core/schema.py
_CONN_ID = const(0)
_PORT = const(1)
_HOST = const(2)
_TIMEOUT_MS = const(3)
_REPORT_S = const(4)
_SSID = const(5)
_WIFI_PASSWORD = const(6)
_MQTT_USER = const(7)
_MQTT_PASSWORD = const(8)
_TOPIC_ROOT = const(9)
_TLS = const(10)
_BRIDGE_TUNING = const(11)

# Bridge._tp: the config's topics
_T_UP = const(0)
_T_DOWN = const(1)
_T_STATUS = const(2)
_T_REPORT = const(3)

# _net's states
_N_WIFI = const(0)  # bringing WiFi up
_N_CONNECT = const(1)  # MQTT connect under way
_N_ONLINE = const(2)  # connected: status online to publish
_N_SUB = const(3)  # subscribing to down (up already)
_N_UP = const(4)
_N_PAUSE = const(5)  # backoff, then _N_WIFI


# ----- the I2C Responder (docs/PROTOCOL.md 1.2) -----
#
# The Pyboard (Initiator, I2C target at 0x12 with a 256-byte memory) raises
# syn when its block is at memory 0x00. The IRQ on both edges of syn (on the
# ESP8266 a soft IRQ: run between bytecodes and while poll waits) carries out
# exactly four bus transactions, feeds link_core's LinkEndpoint, raises ack,
# and lowers it again once syn is low. A busy flag keeps it from nesting; while
# the main loop is between a check and an insert on the link's outgoing queue
# (queue_first) `inline` is False and an edge is only noted, then served. A bus
# error (OSError from SoftI2C) aborts the exchange without raising ack: the
# Initiator times out and retries. A MemoryError (no room for a completed
# message on a fragmented heap) leaves that chunk unacknowledged: the
# exchange goes on, the Pyboard resends it.

# wiring of the seed (GPIO numbers)
_SCL = const(0)
_SDA = const(2)
_SYN = const(5)
_ACK = const(4)
_I2C_HZ = const(400000)


class Responder:
    """Moves blocks between the bus and a LinkEndpoint(RESPONDER).

    i2c, syn, ack: a SoftI2C and two Pins; None builds them from the seed's
    wiring. tx_queue, rx_queue: the LinkEndpoint's message bounds (when the
    received queue is full its blocks carry HOLD and the Pyboard stops
    sending payload).
    """

    def __init__(self, i2c=None, syn=None, ack=None, tx_queue: int = 6, rx_queue: int = 4) -> None:
        if i2c is None or syn is None or ack is None:
            from machine import Pin, SoftI2C

            if ack is None:
                ack = Pin(_ACK, Pin.OUT, value=0)
            if syn is None:
                syn = Pin(_SYN, Pin.IN)
            if i2c is None:
                i2c = SoftI2C(scl=Pin(_SCL), sda=Pin(_SDA), freq=_I2C_HZ)
        self.i2c = i2c
        self.syn = syn
        self.ack = ack
        ack.value(0)
        self.link = LinkEndpoint(RESPONDER, tx_queue, rx_queue)
        # one block buffer both ways: the block read is taken by on_block before
        # build_block writes the answer over it
        self._rxv = memoryview(bytearray(BLOCK_MAX))
        self._hdr = self._rxv[:HEADER]
        self._failed = False  # bus error in this exchange: wait for syn low
        # True: the syn handler exchanges at once. False while the main loop
        # holds the link's queue (queue_first): an edge is noted in _missed
        self.inline = True
        self._busy = False  # an exchange is running: an edge now is noted, not nested
        self._missed = False
        self.exchanges = 0
        self.bus_errors = 0
        self.mem_errors = 0  # MemoryErrors caught in exchanges (the chunk is resent)
        syn.irq(handler=self._irq, trigger=syn.IRQ_RISING | syn.IRQ_FALLING)

    def _irq(self, _pin) -> None:
        if self.inline and not self._busy:
            self._service()
        else:
            self._missed = True

    def kick(self) -> None:
        """Re-examine the handshake lines (a lost edge costs one tick, not a reset)."""
        if not self._busy:
            self._service()

    def queue_first(self, msg) -> bool:
        """link.queue_message(msg, True) with no exchange between its check and
        its insert (a chunk of the first message could go out in between)."""
        self.inline = False
        try:
            return self.link.queue_message(msg, True)
        finally:
            self.inline = True
            if self._missed:
                self.kick()

    # ----- the bus -----

    def exchange(self) -> bool:
        """One exchange, steps 2.1 to 2.4 of PROTOCOL.md 1.2. False on a bus error.

        Reads into the preallocated block buffer and builds the answer in it:
        no per-exchange allocation beyond two memoryview slices."""
        i2c = self.i2c
        bv = self._rxv
        hdr = self._hdr
        link = self.link
        try:
            i2c.readfrom_mem_into(i2c_link.I2C_ADDR, i2c_link.MEM_INITIATOR, hdr)
            n = bv[3]
            if n <= CHUNK_MAX:
                block = bv[: n + 6]
                i2c.readfrom_mem_into(i2c_link.I2C_ADDR, i2c_link.MEM_INITIATOR + 4, block[4:])
            else:
                block = hdr  # too long: corrupt, counted, ignored
            try:
                link.on_block(block)
            except MemoryError:
                self.mem_errors += 1  # its chunk stays unacknowledged: resent
            ln = link.build_block(bv)
            i2c.writeto_mem(i2c_link.I2C_ADDR, i2c_link.MEM_RESPONDER, hdr)
            i2c.writeto_mem(i2c_link.I2C_ADDR, i2c_link.MEM_RESPONDER + 4, bv[4:ln])
        except OSError:
            self.bus_errors += 1
            return False
        except MemoryError:  # a slice: no ack, the Initiator retries the exchange
            self.mem_errors += 1
            return False
        self.exchanges += 1
        return True

    def _service(self) -> None:
        """Act on the handshake lines: exchange on syn high, ack low on syn low."""
        self._busy = True
        try:
            while True:
                self._missed = False
                syn = self.syn
                ack = self.ack
                if syn.value():
                    if not ack.value() and not self._failed:
                        if self.exchange():
                            ack.value(1)
                        else:
                            self._failed = True  # no ack: the Initiator times out, retries
                else:
                    self._failed = False
                    if ack.value():
                        ack.value(0)
                if not self._missed:  # an edge while this ran: look again
                    return
        finally:
            self._busy = False


# ----- WiFi -----
#
# step(): the network stored in flash first (the ESP8266 SDK keeps the
# last one), then the config's ssid/password; then WiFi must stay up for
# stable_ms before the caller may try the broker. The access point interface
# is switched off and WiFi sleep is disabled (modem sleep drops packets and
# adds latency).

_W_START = const(0)
_W_STORED = const(1)  # waiting for the stored network
_W_CONFIG = const(2)  # waiting for the config's network
_W_STABLE = const(3)  # up: must stay so for stable_ms


class WiFi:
    def __init__(self, connect_ms: int = 10000, stable_ms: int = 3000) -> None:
        import network

        self.connect_ms = connect_ms
        self.stable_ms = stable_ms
        try:
            network.WLAN(network.AP_IF).active(False)
        except (OSError, AttributeError):
            pass
        self.sta = network.WLAN(network.STA_IF)
        self.sta.active(True)
        no_sleep(self.sta)
        self.status = 0  # last WLAN.status() after a failed attempt
        self._stable = False  # up for stable_ms, and not seen down since
        self._ph = _W_START
        self._t0 = time.ticks_ms()

    def isconnected(self) -> bool:
        up = self.sta.isconnected()
        if not up:
            self._stable = False
        return up

    def step(self, ssid: str = "", password: str = "") -> int:
        """Bring the station up, a step at a time: 1 once it has been up for
        stable_ms, 0 while trying, -1 when the attempt failed (status set)."""
        sta = self.sta
        now = time.ticks_ms()
        ph = self._ph
        if ph == _W_START:
            if self.isconnected():
                if self._stable:
                    return 1
                self._ph = _W_STABLE
                self._t0 = now
                return 0
            if self._stored():
                try:
                    sta.connect()  # the network stored in flash
                except OSError:
                    pass
                self._ph = _W_STORED
                self._t0 = now
                return 0
            return self._config(ssid, password, now)
        if ph == _W_STABLE:
            if not sta.isconnected():
                self._ph = _W_START
                return -1
            if time.ticks_diff(now, self._t0) < self.stable_ms:
                return 0
            self._ph = _W_START
            self._stable = True
            return 1
        if sta.isconnected():
            self._ph = _W_STABLE
            self._t0 = now
            return 0
        if time.ticks_diff(now, self._t0) < self.connect_ms:
            return 0
        self.status = sta.status()
        if ph == _W_STORED:
            return self._config(ssid, password, now)
        self._ph = _W_START
        return -1

    def _config(self, ssid, password, now) -> int:
        if not ssid:
            self._ph = _W_START
            return -1
        try:
            self.sta.disconnect()
            self.sta.connect(ssid, password)  # the ESP8266 also stores these
        except OSError:
            pass
        self._ph = _W_CONFIG
        self._t0 = now
        return 0

    def _stored(self) -> bool:
        try:
            return bool(self.sta.config("ssid"))
        except (OSError, ValueError, TypeError):
            return True  # cannot tell: try it

def no_sleep(sta) -> None:
    """Disable WiFi power saving through whichever API this firmware has."""
    try:
        import esp

        esp.sleep_type(esp.SLEEP_NONE)
        return
    except (ImportError, AttributeError):
        pass
    try:
        sta.config(pm=sta.PM_NONE)
    except (AttributeError, OSError, ValueError, TypeError):
        pass


def _reason(e) -> str:
    if isinstance(e, MQTTError):
        return e.args[0] if e.args else "refused"
    return "%s %s" % (type(e).__name__, e)


class Bridge:
    def __init__(self, resp=None, wifi=None) -> None:
        self.resp = resp if resp is not None else Responder(None, None, None, _TX_QUEUE, _RX_QUEUE)
        if wifi is None:
            wifi = WiFi()
        self.wifi = wifi
        # allocated at boot, while the heap is empty, and reused for every connection
        self.mq = MQTTClient("pblink", rx_slots=_MQ_SLOTS, max_inflight=_MQ_INFLIGHT)
        self.cfg = None
        self.tun = control.group("bridge", {})  # bridge_tuning: link_core/schema.py "bridge" rows
        self._syncs = -1  # link.syncs when the last 'C' came
        self._ready = False  # connected, online published
        self._tp = (b"", b"", b"", b"")  # the config's topics: up, down, status, report (bytes)
        self._report_msg = None  # the last R message not yet published on MQTT
        self._up = None  # the message from the Pyboard being handled
        self._up_syncs = -1  # _syncs when it was taken
        self._dn = None  # the down frame waiting for room in the link's queue
        self.connects = 0
        self.report_no = 0
        self.mem_errors = 0  # MemoryErrors caught here (see mem_errors_total)
        self._first_wifi = True
        self._first_broker = True
        self._told = -1  # last U/D told since the last 'C': 1, 0, -1 none
        self.watch = liveness.ServerWatch(1500)  # PROTOCOL.md 4.4; timeout_ms from the config
        self._oversize = 0
        self._ns = _N_WIFI  # _net's state
        self._net_cfg = None  # the config _net last applied (a new config is a new tuple)
        self._until = 0  # _N_PAUSE: when it ends
        self._delay = 0  # the next backoff
        self._next_tick = 0
        self._next_k = 0
        self._next_r = None  # the next 'R' (None: not set for the current report_s)
        self._seen = 0  # resp.exchanges at the last turn
        self._wifi_at = 0  # when _net looks at WiFi next while connected

    def mem_errors_total(self) -> int:
        """MemoryErrors caught since boot, in the bridge, the responder and MQTT."""
        return self.mem_errors + self.resp.mem_errors + self.mq.mem_errors

    # ----- link messages to the Pyboard -----

    def _ctl(self, msg) -> bool:
        """Queue a control message (never more than the queue; dropped when full)."""
        link = self.resp.link
        if not link.synced or not link.can_queue():
            return False
        return link.queue_message(msg)

    def diag(self, text: str) -> None:
        """'E' diagnostic for the Pyboard's verbose log (and the UART console)."""
        print("bridge:", text)
        link = self.resp.link
        if link.tx_pending < _TX_QUEUE - 1:  # keep a slot for K/U/D
            self._ctl(control.encode_text(control.ERROR, text))

    # ----- config -----

    def _on_config(self, msg) -> None:
        try:
            full = control.decode_config(msg)  # 11 entries, 12 with tuning
            cfg = full[:_BRIDGE_TUNING]
            tun = control.group("bridge", full[_BRIDGE_TUNING] if len(full) > _BRIDGE_TUNING
                                else {})
            topics = Topics(cfg[_TOPIC_ROOT], cfg[_CONN_ID])
        except (ValueError, TypeError) as e:
            self.diag("bad config: %s" % e)
            return
        self._syncs = self.resp.link.syncs
        self._told = -1  # tell U/D again
        if cfg == self.cfg and tun == self.tun:
            return
        self.cfg = cfg
        self.tun = tun
        self.watch.timeout_ms = cfg[_TIMEOUT_MS]
        self._tp = (topics.up.encode(), topics.down.encode(), topics.status.encode(),
                    topics.report.encode())

    # ----- the jobs (one turn of the main loop each) -----

    def _mqtt(self, now) -> None:
        self.mq.step()

    def _uplink(self, now) -> None:
        """Messages from the Pyboard: one taken is handled, however long memory
        is short (a MemoryError leaves it in _up, tried again next turn)."""
        link = self.resp.link
        mq = self.mq
        while True:
            m = self._up
            if m is None:
                m = link.pop_message()
                if m is None:
                    return
                self._up = m
                self._up_syncs = self._syncs
            k = m[0]
            if k == control.CONFIG:
                self._on_config(m)
                self._up = None
            elif k == control.QOS or k == control.UNRELIABLE or k == control.ACK:
                syncs = self._up_syncs
                if self.cfg is None:
                    self._up = None
                    self.diag("no config yet: frame dropped")
                elif syncs != self._syncs or syncs != link.syncs:
                    self._up = None  # from before a resync: the Pyboard resends what matters
                elif not (self._ready and mq.isconnected()):
                    return  # waiting out the outage
                else:
                    try:
                        if mq.publish(self._tp[_T_UP], m, liveness.mqtt_level(m)) < 0:
                            return  # no room yet: next turn
                    except OSError:
                        return
                    self._up = None
                    self.watch.published(now)
            else:
                self._up = None
                self.diag("unknown link message kind %r dropped" % chr(k))

    def _downlink(self, now) -> None:
        link = self.resp.link
        mq = self.mq
        while True:
            if not link.can_queue() or link.tx_pending >= _DATA_TX:
                return
            m = self._dn
            if m is not None:  # taken from MQTT: queued for the Pyboard, whatever it takes
                link.queue_message(m)
                self._dn = None
            item = mq.get()
            if item is None:
                return
            topic, msg, _retain = item  # retain set by amqtt on queued: ignored
            if topic != self._tp[_T_DOWN]:
                continue
            kind = liveness.classify_down(msg)
            if kind == liveness.IS_BAD:  # not traffic: proves nothing about the server
                self.diag("malformed frame on down dropped: %r" % msg[:40])
                continue
            self.watch.heard(now)
            if kind == liveness.IS_DATA:
                self._dn = msg

    def _tick(self, now) -> None:
        if time.ticks_diff(now, self._next_tick) < 0:
            return
        self._next_tick = time.ticks_add(now, _TICK_MS)
        resp = self.resp
        resp.kick()
        link = resp.link
        tun = self.tun
        if time.ticks_diff(now, self._next_k) >= 0:
            self._next_k = time.ticks_add(now, tun["keepalive_ms"])
            if link.synced and not link.peer_hold and link.can_queue():
                resp.queue_first(control.MSG_KEEPALIVE)
        cfg = self.cfg
        if cfg is None:
            return
        watch = self.watch
        ok = self._ready and watch.reachable(now)
        # A 'D' with the reason: server_ok(False) on the Pyboard. Asked only
        # when it can be queued: unanswered() is True once per connection.
        can_tell = self._syncs == link.syncs and link.synced and link.can_queue()
        if can_tell and watch.unanswered(now):
            why = (
                "no server application answers conn_id %s under %s/ on %s:%d within %d ms: "
                "none serves this conn_id (pblink server --ids), another topic root or broker, "
                "or the broker's ACL drops this device's frames (user %r)"
                % (cfg[_CONN_ID], cfg[_TOPIC_ROOT], cfg[_HOST], cfg[_PORT],
                   2 * cfg[_TIMEOUT_MS], cfg[_MQTT_USER])
            )
            print("bridge:", why)
            self._ctl(control.encode_text(control.SERVER_DOWN, why))
        if (1 if ok else 0) != self._told and self._syncs == link.syncs:
            if self._ctl(control.MSG_SERVER_UP if ok else control.MSG_SERVER_DOWN):
                self._told = 1 if ok else 0
        if cfg[_REPORT_S] <= 0:
            self._next_r = None
        elif self._next_r is None:
            self._next_r = time.ticks_add(now, cfg[_REPORT_S] * 1000)
        elif time.ticks_diff(now, self._next_r) >= 0:
            self._next_r = time.ticks_add(now, cfg[_REPORT_S] * 1000)
            self.report_no += 1
            msg = control.encode_report(
                [self.connects, self.report_no, gc.mem_free(), self.mem_errors_total()])
            self._ctl(msg)
            self._report_msg = msg  # for the report topic too (published below)
        mq = self.mq
        if mq.oversize != self._oversize:
            self._oversize = mq.oversize
            self.diag("frames over %d bytes on down dropped: %d" % (MAX_MESSAGE, self._oversize))
        if not self._ready or not mq.isconnected():
            return
        if watch.heartbeat_due(now):
            hb = liveness.HEARTBEAT
            try:
                if mq.publish(self._tp[_T_UP], hb, liveness.mqtt_level(hb)) >= 0:
                    watch.heartbeat_sent(now)
            except OSError:
                pass
        msg = self._report_msg
        if msg is not None:
            # PROTOCOL.md 4.1: retained, QoS 0, so any reader sees the latest report
            try:
                if mq.publish(self._tp[_T_REPORT], msg[1:], 0, True) >= 0:
                    self._report_msg = None
            except OSError:
                pass

    def _backoff(self, now) -> None:
        self._until = time.ticks_add(now, self._delay)
        self._ns = _N_PAUSE
        self._delay = min(self._delay * 2, self.tun["reconnect_max_ms"])

    def _net(self, now) -> None:
        """WiFi, then the broker, with backoff (one step per turn)."""
        cfg = self.cfg
        if cfg is None:
            return
        mq = self.mq
        wifi = self.wifi
        ns = self._ns
        if self._net_cfg is not cfg:  # a new config
            if mq.isconnected() and ns >= _N_ONLINE:
                # leave cleanly, status offline (on the old config's topic)
                self._ready = False
                self.watch.disconnected()
                try:
                    nc = self._net_cfg  # the old config's status topic
                    mq.publish(Topics(nc[_TOPIC_ROOT], nc[_CONN_ID]).status.encode(),  # type: ignore[index]
                               OFFLINE, liveness.QOS_STATUS, True)
                except OSError:
                    pass
                mq.disconnect()
            self._ready = False
            self._net_cfg = cfg
            tun = self.tun
            self._delay = tun["reconnect_min_ms"]
            mq.configure(
                client_id(cfg[_CONN_ID]), cfg[_MQTT_USER], cfg[_MQTT_PASSWORD],
                tun["mqtt_keepalive_s"],
                (self._tp[_T_STATUS], OFFLINE, liveness.QOS_STATUS, True),
                tun["mqtt_response_ms"], tun["mqtt_retries"],
            )
            wifi.connect_ms = tun["wifi_connect_ms"]
            wifi.stable_ms = tun["wifi_stable_ms"]
            self._ns = ns = _N_WIFI
        if ns == _N_PAUSE:
            if time.ticks_diff(now, self._until) >= 0:
                self._ns = _N_WIFI
            return
        if ns == _N_WIFI:
            r = wifi.step(cfg[_SSID], cfg[_WIFI_PASSWORD])
            if not r:
                return
            if r < 0:
                if self._first_wifi:
                    self._ctl(control.MSG_BAD_WIFI)
                self._first_wifi = False
                self.diag("WiFi: no connection (status %d)" % wifi.status)
                self._backoff(now)
                return
            self._first_wifi = False
            try:
                mq.connect(cfg[_HOST], cfg[_PORT], cfg[_TLS])
            except OSError as e:
                self._failed(now, _reason(e))
                return
            self._ns = _N_CONNECT
            return
        if ns == _N_CONNECT:
            if mq.connecting():
                return
            if not mq.isconnected():
                e = mq.err
                self._failed(now, _reason(e) if e is not None else mq.why)
                return
            self._ns = ns = _N_ONLINE
        if not mq.isconnected():
            if ns == _N_UP:
                self._lost(now, mq.why)
            else:
                # the broker may drop us between CONNACK and SUBACK: the
                # client records why
                self._failed(now, mq.why)
            return
        if time.ticks_diff(now, self._wifi_at) >= 0:  # every 200 ms, as WLAN calls cost
            self._wifi_at = time.ticks_add(now, 2 * _TICK_MS)
            if not wifi.isconnected():
                mq.close("WiFi lost")
                self._lost(now, "WiFi lost")
                return
        if ns == _N_ONLINE:
            if mq.publish(self._tp[_T_STATUS], ONLINE, liveness.QOS_STATUS, True) < 0:
                return  # the in-flight table is full (resends): next turn
            # Up from here: with a persistent session the broker may send a
            # backlog on down before the SUBACK, which then waits behind it
            # (for as long as the link takes to drain it); meanwhile the
            # Pyboard's acks and the heartbeats must go out.
            self.watch.connected(now)  # server unknown yet: 'h' at once
            self._ready = True
            if mq.isconnected():  # else the next turn reports the client's why
                mq.subscribe(self._tp[_T_DOWN], 1)
            self._ns = _N_SUB
        elif ns == _N_SUB:
            rc = mq.suback
            if rc < 0:
                return
            if rc == 0x80:
                mq.close()
                self._failed(now, "subscription refused")
                return
            self._first_broker = False
            self.connects += 1
            self._delay = self.tun["reconnect_min_ms"]
            self._ns = _N_UP

    def _failed(self, now, why) -> None:
        # a connection attempt failed: 'B' the first time, 'E' every time, backoff
        self._ready = False
        self.watch.disconnected()
        self.mq.close()
        cfg = self.cfg
        if self._first_broker:
            self._ctl(control.encode_text(control.BAD_BROKER, why))
        self._first_broker = False
        self.diag("broker %s:%d: %s" % (cfg[_HOST], cfg[_PORT], why))  # type: ignore[index]
        self._backoff(now)

    def _lost(self, now, why) -> None:
        self._ready = False
        self.watch.disconnected()
        self.mq.close(why)
        self.diag("broker connection lost: %s" % why)
        self._until = time.ticks_add(now, self._delay)
        self._ns = _N_PAUSE

    # ----- the main loop -----

    def run(self) -> None:
        """The main loop: each turn every job, then one poll of the MQTT socket
        (shorter while the link moves). A MemoryError escaping a job is counted
        and the loop goes on (the job's state is kept: it is tried again next
        turn); any other exception is a bug: RuntimeError, main.py resets the
        ESP8266."""
        gc.collect()
        jobs = (self._mqtt, self._uplink, self._downlink, self._net, self._tick)
        resp = self.resp
        mq = self.mq
        while True:
            now = time.ticks_ms()
            for job in jobs:
                try:
                    job(now)
                except MemoryError:
                    self.mem_errors += 1
                    gc.collect()
                except Exception as e:
                    sys.print_exception(e)
                    raise RuntimeError("bridge task failed: %r" % (e,)) from e
            ex = resp.exchanges
            mq.wait(_BUSY_MS if ex != self._seen else _IDLE_MS)
            self._seen = ex


def run() -> None:
    Bridge().run()
