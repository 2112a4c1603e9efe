# The relay: I2C link messages <-> MQTT (docs/PROTOCOL.md 2 and 4).
#
# No asyncio (docs/FIRMWARE.md "Memory budget"): one main loop (Bridge.run)
# whose one sleep is select.poll on the MQTT socket (MQTTClient.wait), at most
# _IDLE_MS, _BUSY_MS while the link moves; each turn runs the jobs:
#   mq.step     the MQTT client's step: connect, read, write, keepalive, retries
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
# unacknowledged (Responder), the frame unpublished (kept and retried here)
# or the down frame unqueued (held unacknowledged in mqtt.py's receive
# buffer, retried here); one escaping a job is caught by the main loop, which
# goes on.
# Each is counted and the count goes out in the next 'R' report (PROTOCOL.md 2).
#
# Small on the heap (docs/FIRMWARE.md "Memory budget"): frozen, the bytecode is
# in flash, but every module global, class, function, instance attribute and
# dict slot is heap. Hence few of each: the module imports modules, not names;
# WiFi is a part of Bridge._net; the flags are bits of one int; the config,
# its bridge_tuning and its topics are one tuple indexed by const() names.
import gc
import time

from link_core import control, i2c_link, liveness, names
import mqtt

# `const` needs no import here: MicroPython's compiler knows it, and
# `from micropython import const` would cost a module global (this file is
# MicroPython only).

# Queue depths, in messages of up to 1,152 bytes (docs/FIRMWARE.md "Memory budget")
_TX_QUEUE = const(5)  # link messages queued for the Pyboard
# Down frames may use this many (K/U/D always fit). Three, not two: the MQTT
# client reads nothing behind a down frame it holds for want of room here,
# PUBACKs included, so a shallow queue stalls the up direction too (measured:
# `pblink bench --quick --only throughput`, up with qos 83 lines/s raw with
# two, 122 with three; docs/PERFORMANCE.md)
_DATA_TX = const(3)
_RX_QUEUE = const(2)  # messages from the Pyboard not yet published (then HOLD)
_MQ_INFLIGHT = const(3)  # QoS 1 publishes awaiting PUBACK
_TICK_MS = const(100)  # link_core/schema.py: the lowest timeout_ms is 2 x this
_IDLE_MS = const(20)  # the main loop's longest sleep (poll on the MQTT socket)
_BUSY_MS = const(2)  # its sleep while the link exchanged since the last turn

# Bridge.cfg: one tuple. Entries 0 to 10: the config (the C message), named as
# the rows of link_core/schema.py; bridge_tuning, the C message's entry 11, is
# taken out and replaced by the config's topics (bytes), then the values of
# the schema's "bridge" rows in their order (control.group), its defaults
# where the C message omits them (tests/test_core_settings.py holds these
# names to the table).
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
_BRIDGE_TUNING = const(11)  # in the C message; in Bridge.cfg the topics start here
_T_UP = const(11)
_T_DOWN = const(12)
_T_STATUS = const(13)
_T_REPORT = const(14)
_TUNING = const(15)  # the first "bridge" row's value
_KEEPALIVE_MS = const(15)
_WIFI_CONNECT_MS = const(16)
_WIFI_STABLE_MS = const(17)
_RECONNECT_MIN_MS = const(18)
_RECONNECT_MAX_MS = const(19)
_MQTT_KEEPALIVE_S = const(20)
_MQTT_RESPONSE_MS = const(21)
_MQTT_RETRIES = const(22)

# Bridge._fl: bits
_F_READY = const(1)  # connected, online published
_F_STABLE = const(2)  # WiFi up for wifi_stable_ms, and not seen down since
_F_WIFI_TOLD = const(4)  # the first WiFi attempt since boot ended ('W' if it failed)
_F_BROKER_TOLD = const(8)  # 'B' sent or the broker reached: no 'B' any more
_F_TOLD = const(16)  # a U/D told since the last 'C' ...
_F_TOLD_UP = const(32)  # ... and it was U

# _net's states (Bridge._ns)
_N_WIFI = const(0)  # WiFi: look at the station
_N_STORED = const(1)  # waiting for the network stored in flash
_N_CONFIG = const(2)  # waiting for the config's network
_N_STABLE = const(3)  # up: must stay so for wifi_stable_ms
_N_CONNECT = const(4)  # MQTT connect under way
_N_ONLINE = const(5)  # connected: status online to publish
_N_SUB = const(6)  # subscribing to down (up already)
_N_UP = const(7)
_N_PAUSE = const(8)  # backoff, then _N_WIFI


# ----- the I2C Responder (docs/PROTOCOL.md 1.2) -----
#
# The Pyboard (Initiator, I2C target at 0x12 with a 256-byte memory) raises
# syn when its block is at memory 0x00. The IRQ on both edges of syn (on the
# ESP8266 a soft IRQ: run between bytecodes and while poll waits) carries out
# exactly four bus transactions, feeds link_core's LinkEndpoint, raises ack,
# and lowers it again once syn is low. While an exchange runs (no nesting) or
# the main loop is between a check and an insert on the link's outgoing queue
# (queue_first) `_hold` is True and an edge is only noted, then served. A bus
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

    Builds its SoftI2C and its two Pins from the seed's wiring (the GPIOs above).
    tx_queue, rx_queue: the LinkEndpoint's message bounds (when the received
    queue is full its blocks carry HOLD and the Pyboard stops sending payload).
    """

    def __init__(self, tx_queue: int, rx_queue: int) -> None:
        from machine import Pin, SoftI2C

        ack = Pin(_ACK, Pin.OUT, value=0)
        syn = Pin(_SYN, Pin.IN)
        i2c = SoftI2C(scl=Pin(_SCL), sda=Pin(_SDA), freq=_I2C_HZ)
        self.i2c = i2c
        self.syn = syn
        self.ack = ack
        ack.value(0)
        self.link = i2c_link.LinkEndpoint(i2c_link.RESPONDER, tx_queue, rx_queue)
        # one block buffer both ways: the block read is taken by on_block before
        # build_block writes the answer over it
        self._rxv = memoryview(bytearray(i2c_link.BLOCK_MAX))
        self._hdr = self._rxv[:i2c_link.HEADER]
        self._failed = False  # bus error in this exchange: wait for syn low
        # True while an exchange runs or the main loop holds the link's queue
        # (queue_first): an edge is noted in _missed, then served. One flag for
        # both: they never overlap (the soft IRQ runs to its end before the main
        # loop goes on, and queue_first serves the noted edge once it lets go)
        self._hold = False
        self._missed = False
        self.exchanges = 0
        self.bus_errors = 0
        self.mem_errors = 0  # MemoryErrors caught in exchanges (the chunk is resent)
        syn.irq(handler=self.kick, trigger=syn.IRQ_RISING | syn.IRQ_FALLING)

    def kick(self, _pin) -> None:
        """The syn IRQ handler; the main loop calls it too (_pin None) to
        re-examine the handshake lines (a lost edge costs one tick, not a
        reset). While the main loop holds the link's queue (queue_first) or an
        exchange runs, the edge is only noted (served right after)."""
        if not self._hold:
            self._service()
        else:
            self._missed = True

    def queue_first(self, msg) -> bool:
        """link.queue_message(msg, True) with no exchange between its check and
        its insert (a chunk of the first message could go out in between)."""
        self._hold = True
        try:
            return self.link.queue_message(msg, True)
        finally:
            self._hold = False
            if self._missed:
                self.kick(None)

    # ----- the bus -----

    def _service(self) -> None:
        """Act on the handshake lines: on syn high one exchange, steps 2.1 to
        2.4 of PROTOCOL.md 1.2, then ack high; on syn low ack low.

        Reads into the preallocated block buffer and builds the answer in it:
        no per-exchange allocation beyond memoryview slices. A bus error
        (OSError) or a MemoryError from a slice: no ack, the Initiator times
        out and retries; no new exchange until syn has been low."""
        self._hold = True
        try:
            while True:
                self._missed = False
                syn = self.syn
                ack = self.ack
                if syn.value():
                    if not ack.value() and not self._failed:
                        self._failed = True  # until the exchange completes
                        i2c = self.i2c
                        bv = self._rxv
                        hdr = self._hdr
                        link = self.link
                        try:
                            i2c.readfrom_mem_into(i2c_link.I2C_ADDR, i2c_link.MEM_INITIATOR, hdr)
                            n = bv[3]
                            if n <= i2c_link.CHUNK_MAX:
                                block = bv[: n + 6]
                                i2c.readfrom_mem_into(i2c_link.I2C_ADDR,
                                                      i2c_link.MEM_INITIATOR + 4, block[4:])
                            else:
                                block = hdr  # too long: corrupt, counted, ignored
                            try:
                                link.on_block(block)
                            except MemoryError:
                                self.mem_errors += 1  # its chunk stays unacknowledged: resent
                            ln = link.build_block(bv)
                            i2c.writeto_mem(i2c_link.I2C_ADDR, i2c_link.MEM_RESPONDER, hdr)
                            i2c.writeto_mem(i2c_link.I2C_ADDR, i2c_link.MEM_RESPONDER + 4,
                                            bv[4:ln])
                            self._failed = False
                        except OSError:
                            self.bus_errors += 1
                        except MemoryError:  # a slice
                            self.mem_errors += 1
                        if not self._failed:
                            self.exchanges += 1
                            ack.value(1)
                else:
                    self._failed = False
                    if ack.value():
                        ack.value(0)
                if not self._missed:  # an edge while this ran: look again
                    return
        finally:
            self._hold = False


# ----- the Bridge -----
#
# WiFi (_net's states _N_WIFI to _N_STABLE): the network stored in flash
# first (the ESP8266 SDK keeps the last one), then the config's
# ssid/password; then WiFi must stay up for wifi_stable_ms before the broker
# is tried. The access point interface is switched off and WiFi sleep is
# disabled (modem sleep drops packets and adds latency).


class Bridge:
    """The relay (the jobs: the top comment). resp: its Responder, None to make it."""

    def __init__(self, resp) -> None:
        import network

        self.resp = resp or Responder(_TX_QUEUE, _RX_QUEUE)
        try:
            network.WLAN(network.AP_IF).active(False)
        except (OSError, AttributeError):
            pass
        sta = self.sta = network.WLAN(network.STA_IF)
        sta.active(True)
        try:  # no WiFi power saving, through whichever API this firmware has
            import esp

            esp.sleep_type(esp.SLEEP_NONE)
        except (ImportError, AttributeError):
            try:
                sta.config(pm=sta.PM_NONE)
            except (AttributeError, OSError, ValueError, TypeError):
                pass
        # allocated at boot, while the heap is empty, and reused for every connection
        self.mq = mqtt.MQTTClient("pblink", max_inflight=_MQ_INFLIGHT)
        # no config yet (cfg[_CONN_ID] None): the bridge_tuning defaults, for 'K'
        self.cfg = tuple(control.group("bridge", {}, [None] * _TUNING))
        self.watch = liveness.ServerWatch(1500)  # PROTOCOL.md 4.4; timeout_ms from the config
        self._fl = 0  # _F_* bits
        self._ns = _N_WIFI  # _net's state
        self._at = 0  # _net: when its state began (WiFi) or ends (_N_PAUSE), the next WLAN look (up)
        self._delay = 0  # the next backoff
        self._syncs = -1  # link.syncs when the last 'C' came
        self._up = None  # the message from the Pyboard being handled
        self._report_msg = None  # the last R message not yet published on MQTT
        # when _tick runs next: it steps by _TICK_MS, so it / _TICK_MS numbers
        # the ticks ('K' and 'R' go out every so many)
        # the next tick: [its ticks_ms, its number] (one list: an attribute
        # more would grow this object's dict by a step; untyped, as the stubs
        # keep ticks apart from ints)
        self._tk: list = [time.ticks_ms(), 0]
        self.connects = 0
        self.report_no = 0
        self.mem_errors = 0  # MemoryErrors caught here (the 'R' report sums them with the others)

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

    # ----- the jobs (one turn of the main loop each) -----

    def _uplink(self, now) -> None:
        """Messages from the Pyboard: one taken is handled, however long memory
        is short (a MemoryError leaves it in _up, tried again next turn). A 'C'
        that changes the config ends the connection (status offline on the old
        config's topic) and makes _net start again."""
        link = self.resp.link
        mq = self.mq
        while True:
            m = self._up
            if m is None:
                m = link.pop_message()
                if m is None:
                    return
                self._up = m
            k = m[0]
            old = self.cfg
            if k == control.CONFIG:
                try:
                    cfg = control.decode_config(m)  # 11 entries, 12 with bridge_tuning
                    tun = cfg.pop() if len(cfg) > _BRIDGE_TUNING else {}
                    t = names.Topics(cfg[_TOPIC_ROOT], cfg[_CONN_ID])
                    cfg += (t.up.encode(), t.down.encode(), t.status.encode(), t.report.encode())
                    cfg = tuple(control.group("bridge", tun, cfg))
                except (ValueError, TypeError) as e:
                    self._up = None
                    self.diag("bad config: %s" % e)
                    continue
                self._syncs = link.syncs
                fl = self._fl & ~(_F_TOLD | _F_TOLD_UP)  # tell U/D again
                if cfg != old:
                    if mq.isconnected() and self._ns >= _N_ONLINE:
                        self.watch.disconnected()
                        try:  # leave cleanly
                            mq.publish(old[_T_STATUS], names.OFFLINE, liveness.QOS_STATUS, True)
                        except OSError:
                            pass
                        mq.disconnect()
                    fl &= ~_F_READY
                    self.watch.timeout_ms = cfg[_TIMEOUT_MS]
                    self._delay = cfg[_RECONNECT_MIN_MS]
                    mq.configure(
                        names.client_id(cfg[_CONN_ID]), cfg[_MQTT_USER], cfg[_MQTT_PASSWORD],
                        cfg[_MQTT_KEEPALIVE_S],
                        (cfg[_T_STATUS], names.OFFLINE, liveness.QOS_STATUS, True),
                        cfg[_MQTT_RESPONSE_MS], cfg[_MQTT_RETRIES], False, cfg[_T_DOWN],
                    )
                    # last: a MemoryError before it leaves the 'C' in _up, and
                    # its next try finds the config still new
                    self.cfg = cfg
                    self._ns = _N_WIFI
                self._fl = fl
                self._up = None
            elif k == control.QOS or k == control.UNRELIABLE or k == control.ACK:
                # self._syncs cannot change while a frame is held (the 'C' that
                # changes it waits behind it): one other than link.syncs is a
                # frame from before a resync
                if old[_CONN_ID] is None:
                    self._up = None
                    self.diag("no config yet: frame dropped")
                elif self._syncs != link.syncs:
                    self._up = None  # from before a resync: the Pyboard resends what matters
                elif not (self._fl & _F_READY and mq.isconnected()):
                    return  # waiting out the outage
                else:
                    try:
                        if mq.publish(old[_T_UP], m, liveness.mqtt_level(m)) < 0:
                            return  # no room yet: next turn
                    except OSError:
                        return
                    self._up = None
                    self.watch.published(now)
            else:
                self._up = None
                self.diag("unknown link message kind %r dropped" % chr(k))

    def _downlink(self, now) -> None:
        """Frames on down into the link's queue for the Pyboard, while it has
        room. The MQTT client holds each message in its receive buffer until
        release(): queue_message copies it, and one it cannot take (a
        MemoryError escapes to the main loop, counted) stays held,
        unacknowledged, and is taken again next turn."""
        link = self.resp.link
        mq = self.mq
        while True:
            if not link.can_queue() or link.tx_pending >= _DATA_TX:
                return
            msg = mq.get()  # a memoryview into the client's receive buffer
            if msg is None:
                return
            kind = liveness.classify_down(msg)  # on down: the client takes no other topic
            if kind == liveness.IS_BAD:  # not traffic: proves nothing about the server
                self.diag("malformed frame on down dropped: %r" % bytes(msg[:40]))
            else:
                self.watch.heard(now)
                if kind == liveness.IS_DATA and not link.queue_message(msg):
                    return  # no room after all: held until next turn
            mq.release()

    def _tick(self, now) -> None:
        tk = self._tk
        t = tk[0]
        if time.ticks_diff(now, t) < 0:
            return
        # every _TICK_MS on average; after a long turn (a blocking connect or
        # disconnect) not a burst to catch up but the next tick from now, and
        # a 'K' at once (an 'R' then comes that much later)
        t = time.ticks_add(t, _TICK_MS)
        late = time.ticks_diff(t, now) <= 0
        if late:
            t = time.ticks_add(now, _TICK_MS)
        tk[0] = t
        cfg = self.cfg
        kp = cfg[_KEEPALIVE_MS] // _TICK_MS  # keepalive_ms >= _TICK_MS (link_core/schema.py)
        rp = (cfg[_REPORT_S] or 0) * (1000 // _TICK_MS)  # None before the first config
        # Ticks are counted, not derived from ticks_ms (whose signed distance
        # from 0 jumps by a non-multiple of the periods every 2**29 ms on the
        # ESP8266); the count wraps at a multiple of both periods, so every
        # K and R gap stays one period.
        n = tk[1] + 1
        if n >= kp * (rp or 1):
            n = 0
        tk[1] = n
        resp = self.resp
        resp.kick(None)
        link = resp.link
        if late or n % kp == 0:
            if link.synced and not link.peer_hold and link.can_queue():
                resp.queue_first(control.MSG_KEEPALIVE)
        if cfg[_CONN_ID] is None:
            return
        watch = self.watch
        mq = self.mq
        fl = self._fl
        ok = fl & _F_READY and watch.reachable(now)
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
        told = _F_TOLD | _F_TOLD_UP if ok else _F_TOLD
        if (fl & (_F_TOLD | _F_TOLD_UP)) != told and self._syncs == link.syncs:
            if self._ctl(control.MSG_SERVER_UP if ok else control.MSG_SERVER_DOWN):
                self._fl = (fl & ~_F_TOLD_UP) | told
        if rp > 0 and n % rp == 0:
            self.report_no += 1
            # mem_errors: caught since boot, here, in the Responder and in MQTT
            msg = control.encode_report(
                [self.connects, self.report_no, gc.mem_free(),
                 self.mem_errors + resp.mem_errors + mq.mem_errors])
            self._ctl(msg)
            self._report_msg = msg  # for the report topic too (published below)
        over = mq.oversize
        if over:  # told, then counted again from 0: no attribute here for the last told
            mq.oversize = 0
            self.diag("frames over %d bytes on down, or on other topics, dropped: %d"
                      % (names.MAX_MESSAGE, over))
        if not fl & _F_READY or not mq.isconnected():
            return
        if watch.heartbeat_due(now):
            hb = liveness.HEARTBEAT
            try:
                if mq.publish(cfg[_T_UP], hb, liveness.mqtt_level(hb)) >= 0:
                    watch.heartbeat_sent(now)
            except OSError:
                pass
        msg = self._report_msg
        if msg is not None:
            # PROTOCOL.md 4.1: retained, QoS 0, so any reader sees the latest report
            try:
                if mq.publish(cfg[_T_REPORT], msg[1:], 0, True) >= 0:
                    self._report_msg = None
            except OSError:
                pass

    def _net(self, now) -> None:
        """WiFi, then the broker, with backoff (one step per turn).

        A step that fails ends at the bottom, with why and lost set: off the
        network, then the backoff (_N_PAUSE). why None: WiFi failed; else the
        broker: an attempt failed (lost False; why its reason, a str or the
        exception: 'B' the first time since boot, 'E' every time) or the
        connection was lost (lost True: 'E'). The backoff doubles after a
        failed attempt, up to reconnect_max_ms."""
        cfg = self.cfg
        if cfg[_CONN_ID] is None:
            return
        mq = self.mq
        sta = self.sta
        ns = self._ns
        why: "Exception | str | None" = None  # a failure's reason (the docstring)
        lost = False
        if ns == _N_PAUSE:
            if time.ticks_diff(now, self._at) >= 0:
                self._ns = _N_WIFI
            return
        if ns < _N_CONNECT:  # WiFi (the section's comment)
            fl = self._fl
            if not sta.isconnected():
                self._fl = fl & ~_F_STABLE
                if ns == _N_WIFI:
                    try:
                        stored = bool(sta.config("ssid"))
                    except (OSError, ValueError, TypeError):
                        stored = True  # cannot tell: try it
                    if stored:
                        try:
                            sta.connect()  # the network stored in flash
                        except OSError:
                            pass
                        self._ns = _N_STORED
                        self._at = now
                        return
                elif ns != _N_STABLE and time.ticks_diff(now, self._at) < cfg[_WIFI_CONNECT_MS]:
                    return  # an attempt under way
                # none stored, or the stored one failed: the config's
                if ns < _N_CONFIG and cfg[_SSID]:
                    try:
                        sta.disconnect()
                        sta.connect(cfg[_SSID], cfg[_WIFI_PASSWORD])  # the ESP8266 stores these
                    except OSError:
                        pass
                    self._ns = _N_CONFIG
                    self._at = now
                    return
                if not fl & _F_WIFI_TOLD:
                    self._ctl(control.MSG_BAD_WIFI)
                self._fl |= _F_WIFI_TOLD
                self.diag("WiFi: no connection (status %d)" % sta.status())
            else:
                if not fl & _F_STABLE:  # up: it must stay so for wifi_stable_ms
                    if ns != _N_STABLE:
                        self._ns = _N_STABLE
                        self._at = now
                        return
                    if time.ticks_diff(now, self._at) < cfg[_WIFI_STABLE_MS]:
                        return
                self._fl = fl | _F_STABLE | _F_WIFI_TOLD
                try:
                    mq.connect(cfg[_HOST], cfg[_PORT], cfg[_TLS])
                    self._ns = _N_CONNECT
                    return
                except OSError as e:
                    why = e
        elif ns == _N_CONNECT and mq.connecting():
            return
        elif not mq.isconnected():
            # the attempt failed (its error), the broker dropped us between
            # CONNACK and SUBACK (the client records why) or, up, the connection ended
            err = mq.err if ns == _N_CONNECT else None
            why = mq.why if err is None else err
            lost = ns == _N_UP
        else:
            if ns == _N_CONNECT:
                self._ns = ns = _N_ONLINE
            up = True
            if time.ticks_diff(now, self._at) >= 0:  # every 200 ms, as WLAN calls cost
                self._at = time.ticks_add(now, 2 * _TICK_MS)
                up = sta.isconnected()
            if not up:
                self._fl &= ~_F_STABLE
                why = "WiFi lost"
                lost = True
            elif ns == _N_ONLINE:
                if mq.publish(cfg[_T_STATUS], names.ONLINE, liveness.QOS_STATUS, True) < 0:
                    return  # the in-flight table is full (resends): next turn
                # Up from here: with a persistent session the broker may send a
                # backlog on down before the SUBACK, which then waits behind it
                # (for as long as the link takes to drain it); meanwhile the
                # Pyboard's acks and the heartbeats must go out.
                self.watch.connected(now)  # server unknown yet: 'h' at once
                self._fl |= _F_READY
                if mq.isconnected():  # else the next turn reports the client's why
                    mq.subscribe(cfg[_T_DOWN], 1)
                self._ns = _N_SUB
                return
            elif ns == _N_SUB and mq.suback == 0x80:
                why = "subscription refused"
            else:
                if ns == _N_SUB and mq.suback >= 0:
                    self._fl |= _F_BROKER_TOLD
                    self.connects += 1
                    self._delay = cfg[_RECONNECT_MIN_MS]
                    self._ns = _N_UP
                return
        # failed (see the docstring)
        if why is not None:
            if isinstance(why, mqtt.MQTTError):
                why = why.args[0] if why.args else "refused"
            elif isinstance(why, Exception):
                why = "%s %s" % (type(why).__name__, why)
            self._fl &= ~_F_READY
            self.watch.disconnected()
            mq.close(why)
            if lost:
                self.diag("broker connection lost: %s" % why)
            else:
                if not self._fl & _F_BROKER_TOLD:
                    self._ctl(control.encode_text(control.BAD_BROKER, why))
                self._fl |= _F_BROKER_TOLD
                self.diag("broker %s:%d: %s" % (cfg[_HOST], cfg[_PORT], why))
        self._at = time.ticks_add(now, self._delay)
        self._ns = _N_PAUSE
        if not lost:
            self._delay = min(self._delay * 2, cfg[_RECONNECT_MAX_MS])

    # ----- the main loop -----

    def run(self) -> None:
        """The main loop: each turn every job, then one poll of the MQTT socket
        (shorter while the link moves). A MemoryError escaping a job is counted
        and the loop goes on (the job's state is kept: it is tried again next
        turn, and the other jobs still run); any other exception is a bug:
        RuntimeError, main.py resets the ESP8266."""
        gc.collect()
        resp = self.resp
        mq = self.mq
        seen = 0  # resp.exchanges at the last turn
        while True:
            now = time.ticks_ms()
            # the jobs by number, not a tuple of bound methods: no heap for them
            job = 0
            while job < 5:
                try:
                    if job == 0:
                        mq.step()
                    elif job == 1:
                        self._uplink(now)
                    elif job == 2:
                        self._downlink(now)
                    elif job == 3:
                        self._net(now)
                    else:
                        self._tick(now)
                except MemoryError:
                    self.mem_errors += 1
                    gc.collect()
                except Exception as e:
                    import sys  # built in: no module global for this one use

                    sys.print_exception(e)
                    raise RuntimeError("bridge task failed: %r" % (e,)) from e
                job += 1
            ex = resp.exchanges
            mq.wait(_BUSY_MS if ex != seen else _IDLE_MS)
            seen = ex
