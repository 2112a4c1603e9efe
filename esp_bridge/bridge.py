# The relay: I2C link messages <-> MQTT (docs/PROTOCOL.md 2 and 4).
#
# Tasks (one asyncio loop):
#   responder   bus exchanges (Responder, below)
#   _main_loop  every 100 ms: 'K' keepalive, 'R' reports, 'U'/'D' changes
#   _uplink     link messages from the Pyboard: 'C' config; q/u/a -> <root>/<id>/up
#   _downlink   frames on <root>/<id>/down -> link messages to the Pyboard
#   _heartbeat  'h' on up when quiet (PROTOCOL.md 4.4); the last 'R' on <root>/<id>/report
#   _net        WiFi, then broker, with backoff; status online + will offline
#   run         the supervisor: restarts a task that ended with a MemoryError
#               (_on_error), stops on any other exception
#
# Bounded both ways: the link's received-message queue (full -> HOLD stops
# the Pyboard) is emptied only as fast as MQTT takes it; MQTT is read only
# while the link's outgoing queue has room for down frames. The bridge holds
# no end-to-end state: at most the messages in flight.
#
# No allocation failure stops it: a MemoryError leaves the chunk
# unacknowledged (Responder), the frame unpublished or the down frame
# unqueued (retried here) or the MQTT packet unacknowledged (mqtt.py); each is
# counted and the count goes out in the next 'R' report (PROTOCOL.md 2).
from micropython import const
import asyncio
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


# ----- the I2C Responder (docs/PROTOCOL.md 1.2) -----
#
# The Pyboard (Initiator, I2C target at 0x12 with a 256-byte memory) raises
# syn when its block is at memory 0x00. An IRQ on both edges of syn sets a
# ThreadSafeFlag; the task below then carries out exactly four bus
# transactions, feeds link_core's LinkEndpoint, raises ack, and lowers it
# again once syn is low. A bus error (OSError from SoftI2C) aborts the
# exchange without raising ack: the Initiator times out and retries. A
# MemoryError (no room for a completed message on a fragmented heap) leaves
# that chunk unacknowledged: the exchange goes on, the Pyboard resends it.

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
        self._rx = bytearray(BLOCK_MAX)
        self._rxv = memoryview(self._rx)
        self._hdr = self._rxv[:HEADER]
        self._flag = asyncio.ThreadSafeFlag()
        # a complete message arrived or room was made in the outgoing queue
        # (one Event: each waiter re-checks its own condition)
        self._ev = asyncio.Event()
        self._failed = False  # bus error in this exchange: wait for syn low
        # True while the event loop is blocked in a call that still runs
        # scheduled IRQ handlers (DNS lookup): exchanges then run in the handler
        self.inline = False
        self._gone = 0  # messages that left the outgoing queue (sent or dropped)
        self.exchanges = 0
        self.bus_errors = 0
        self.mem_errors = 0  # MemoryErrors caught in exchanges (the chunk is resent)
        syn.irq(handler=self._irq, trigger=syn.IRQ_RISING | syn.IRQ_FALLING)

    def _irq(self, _pin) -> None:
        if self.inline:
            self._service()
        else:
            self._flag.set()

    def blocking(self, on: bool) -> None:
        """Bracket a blocking call (e.g. getaddrinfo) so exchanges go on meanwhile."""
        self.inline = on
        if not on:
            self._flag.set()

    def kick(self) -> None:
        """Re-examine the handshake lines (a lost edge costs one tick, not a reset)."""
        self._flag.set()

    # ----- messages -----

    async def get(self):
        """Wait for the next message from the Pyboard."""
        while True:
            m = self.link.pop_message()
            if m is not None:
                return m
            self._ev.clear()
            await self._ev.wait()

    async def put(self, msg, limit: int = 0) -> None:
        """Queue a message, waiting while limit (default: the whole queue) is reached."""
        link = self.link
        while not link.can_queue() or (limit and link.tx_pending >= limit):
            self._ev.clear()
            await self._ev.wait()
        link.queue_message(msg)

    async def room(self, limit: int) -> None:
        """Wait until fewer than limit messages are queued for the Pyboard."""
        link = self.link
        while not link.can_queue() or link.tx_pending >= limit:
            self._ev.clear()
            await self._ev.wait()

    # ----- the bus -----

    def exchange(self) -> bool:
        """One exchange, steps 2.1 to 2.4 of PROTOCOL.md 1.2. False on a bus error.

        Reads into the preallocated block buffer and builds the answer in it:
        no per-exchange allocation beyond two memoryview slices."""
        i2c = self.i2c
        buf = self._rx
        bv = self._rxv
        hdr = self._hdr
        link = self.link
        try:
            i2c.readfrom_mem_into(i2c_link.I2C_ADDR, i2c_link.MEM_INITIATOR, hdr)
            n = buf[3]
            if n <= CHUNK_MAX:
                block = bv[: n + 6]
                i2c.readfrom_mem_into(i2c_link.I2C_ADDR, i2c_link.MEM_INITIATOR + 4, block[4:])
            else:
                block = hdr  # too long: corrupt, counted, ignored
            try:
                link.on_block(block)
            except MemoryError:
                self.mem_errors += 1  # its chunk stays unacknowledged: resent
            ln = link.build_block(buf)
            i2c.writeto_mem(i2c_link.I2C_ADDR, i2c_link.MEM_RESPONDER, hdr)
            i2c.writeto_mem(i2c_link.I2C_ADDR, i2c_link.MEM_RESPONDER + 4, bv[4:ln])
        except OSError:
            self.bus_errors += 1
            return False
        except MemoryError:  # a slice: no ack, the Initiator retries the exchange
            self.mem_errors += 1
            return False
        self.exchanges += 1
        if link.rx_pending:
            self._ev.set()
        gone = link.messages_out + link.dropped
        if gone != self._gone:  # room was made: wake a waiting put()/room()
            self._gone = gone
            self._ev.set()
        return True

    def _service(self) -> None:
        """Act on the handshake lines: exchange on syn high, ack low on syn low."""
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

    async def run(self) -> None:
        flag = self._flag
        flag.set()  # syn may already be high
        while True:
            await flag.wait()
            self._service()


# ----- WiFi -----
#
# connect(): the network stored in flash first (the ESP8266 SDK keeps the
# last one), then the config's ssid/password; then WiFi must stay up for
# stable_ms before the caller may try the broker. The access point interface
# is switched off and WiFi sleep is disabled (modem sleep drops packets and
# adds latency).


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

    def isconnected(self) -> bool:
        up = self.sta.isconnected()
        if not up:
            self._stable = False
        return up

    async def _wait_up(self) -> bool:
        t0 = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), t0) < self.connect_ms:
            if self.sta.isconnected():
                return True
            await asyncio.sleep_ms(100)
        self.status = self.sta.status()
        return False

    async def _wait_stable(self) -> bool:
        t0 = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), t0) < self.stable_ms:
            if not self.sta.isconnected():
                return False
            await asyncio.sleep_ms(100)
        return self.sta.isconnected()

    async def connect(self, ssid: str = "", password: str = "") -> bool:
        """Bring the station up; True once it has been up for stable_ms."""
        sta = self.sta
        if self.isconnected() and self._stable:
            return True
        if not sta.isconnected():
            up = False
            if self._stored():
                try:
                    sta.connect()  # the network stored in flash
                except OSError:
                    pass
                up = await self._wait_up()
            if not up and ssid:
                try:
                    sta.disconnect()
                    sta.connect(ssid, password)  # the ESP8266 also stores these
                except OSError:
                    pass
                up = await self._wait_up()
            if not up:
                return False
        self._stable = await self._wait_stable()
        return self._stable

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
        self.mq.on_block = self.resp.blocking  # the link goes on during a DNS lookup
        self.cfg = None
        self.tun = control.group("bridge", {})  # bridge_tuning: link_core/schema.py "bridge" rows
        self._gen = 0  # counts config changes
        self._net_gen = -1  # the config _net last applied
        self._syncs = -1  # link.syncs when the last 'C' came
        self._ready = False  # connected, online published, subscribed
        self._up_topic = b""
        self._down = b""
        self._status = b""
        self._report = b""
        self._report_msg = None  # the last R message not yet published on MQTT
        self.connects = 0
        self.report_no = 0
        self.mem_errors = 0  # MemoryErrors caught here (see mem_errors_total)
        self._first_wifi = True
        self._first_broker = True
        self._server_ok = False
        self._told = -1  # last U/D told since the last 'C': 1, 0, -1 none
        self.watch = liveness.ServerWatch(1500)  # PROTOCOL.md 4.4; timeout_ms from the config
        self._oversize = 0
        self._crash: Exception | None = None  # set by _on_error: run() stops
        self._tasks: list = []  # the running task of each job (run())
        self._dead = 0  # bit i: job i ended with a MemoryError, not restarted yet

    def mem_errors_total(self) -> int:
        """MemoryErrors caught since boot, in the bridge, the responder and MQTT."""
        return self.mem_errors + self.resp.mem_errors + self.mq.mem_errors

    def _oom(self) -> None:
        self.mem_errors += 1
        gc.collect()

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
        self._up_topic = topics.up.encode()
        self._down = topics.down.encode()
        self._status = topics.status.encode()
        self._report = topics.report.encode()
        self._gen += 1

    # ----- tasks -----

    async def _main_loop(self) -> None:
        resp = self.resp
        link = resp.link
        next_k = time.ticks_ms()
        next_r = next_k
        r_armed = False  # next_r set for the current report_s
        while True:
            await asyncio.sleep_ms(_TICK_MS)
            resp.kick()
            now = time.ticks_ms()
            tun = self.tun
            if time.ticks_diff(now, next_k) >= 0:
                next_k = time.ticks_add(now, tun["keepalive_ms"])
                if link.synced and not link.peer_hold and link.can_queue():
                    link.queue_message(control.MSG_KEEPALIVE, True)
            cfg = self.cfg
            if cfg is None:
                continue
            watch = self.watch
            ok = self._ready and watch.reachable(now)
            self._server_ok = ok
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
                r_armed = False
            elif not r_armed:
                r_armed = True
                next_r = time.ticks_add(now, cfg[_REPORT_S] * 1000)
            elif time.ticks_diff(now, next_r) >= 0:
                next_r = time.ticks_add(now, cfg[_REPORT_S] * 1000)
                self.report_no += 1
                msg = control.encode_report(
                    [self.connects, self.report_no, gc.mem_free(), self.mem_errors_total()])
                self._ctl(msg)
                self._report_msg = msg  # for the report topic too (_heartbeat publishes it)
            if self.mq.oversize != self._oversize:
                self._oversize = self.mq.oversize
                n = self._oversize
                self.diag("frames over %d bytes on down dropped: %d" % (MAX_MESSAGE, n))

    async def _publish(self, msg) -> None:
        """Publish a frame on up at its QoS, waiting out outages; dropped on a link resync."""
        mq = self.mq
        syncs = self._syncs
        while True:
            if syncs != self._syncs or syncs != self.resp.link.syncs:
                return  # the Pyboard resynchronised: it resends what matters
            if self._ready and mq.isconnected():
                try:
                    await mq.publish(self._up_topic, msg, liveness.mqtt_level(msg))
                    self.watch.published(time.ticks_ms())
                    return
                except OSError:
                    pass
                except MemoryError:  # not published: tried again
                    self._oom()
            await asyncio.sleep_ms(_TICK_MS)

    async def _uplink(self) -> None:
        resp = self.resp
        link = resp.link
        while True:
            m = await resp.get()
            while True:  # a message taken is handled, however long memory is short
                try:
                    await self._up_message(m, link)
                    break
                except MemoryError:
                    self._oom()
                    await asyncio.sleep_ms(_TICK_MS)

    async def _up_message(self, m, link) -> None:
        k = m[0]
        if k == control.CONFIG:
            self._on_config(m)
        elif k == control.QOS or k == control.UNRELIABLE or k == control.ACK:
            if self.cfg is None:
                self.diag("no config yet: frame dropped")
            elif self._syncs == link.syncs:  # else: from before a resync, awaiting 'C'
                await self._publish(m)
        else:
            self.diag("unknown link message kind %r dropped" % chr(k))

    async def _downlink(self) -> None:
        resp = self.resp
        mq = self.mq
        while True:
            await resp.room(_DATA_TX)
            topic, msg, _retain = await mq.next()  # retain set by amqtt on queued: ignored
            if topic != self._down:
                continue
            kind = liveness.classify_down(msg)
            if kind == liveness.IS_BAD:  # not traffic: proves nothing about the server
                self.diag("malformed frame on down dropped: %r" % msg[:40])
                continue
            self.watch.heard(time.ticks_ms())
            if kind == liveness.IS_DATA:
                while True:  # taken from MQTT: queued for the Pyboard, whatever it takes
                    try:
                        await resp.put(msg, _DATA_TX)
                        break
                    except MemoryError:
                        self._oom()
                        await asyncio.sleep_ms(_TICK_MS)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep_ms(_TICK_MS)
            if not self._ready or self.cfg is None:
                continue
            now = time.ticks_ms()
            if self.watch.heartbeat_due(now):
                self.watch.heartbeat_sent(now)
                hb = liveness.HEARTBEAT
                try:
                    await self.mq.publish(self._up_topic, hb, liveness.mqtt_level(hb))
                except OSError:
                    pass
            msg = self._report_msg
            if msg is not None and self.mq.isconnected():
                # PROTOCOL.md 4.1: retained, QoS 0, so any reader sees the latest report
                self._report_msg = None
                try:
                    await self.mq.publish(self._report, msg[1:], 0, True)
                except OSError:
                    pass

    async def _pause(self, ms: int, gen: int) -> None:
        t0 = time.ticks_ms()
        while gen == self._gen and time.ticks_diff(time.ticks_ms(), t0) < ms:
            await asyncio.sleep_ms(_TICK_MS)

    async def _net(self) -> None:
        mq = self.mq
        wifi = self.wifi
        while self.cfg is None:
            await asyncio.sleep_ms(_TICK_MS)
        # restarted after a MemoryError (_on_error): reconnect, but keep the
        # MQTT session (configure() would forget the QoS 1 messages in flight)
        self._ready = False
        if mq.isconnected():
            mq.close("out of memory")
        cfg = self.cfg
        tun = self.tun
        delay = tun["reconnect_min_ms"]
        gen = self._net_gen
        while True:
            if gen != self._gen:
                gen = self._gen
                self._net_gen = gen
                cfg = self.cfg
                tun = self.tun
                delay = tun["reconnect_min_ms"]
                mq.configure(
                    client_id(cfg[_CONN_ID]), cfg[_MQTT_USER], cfg[_MQTT_PASSWORD],
                    tun["mqtt_keepalive_s"],
                    (self._status, OFFLINE, liveness.QOS_STATUS, True),
                    tun["mqtt_response_ms"], tun["mqtt_retries"],
                )
                wifi.connect_ms = tun["wifi_connect_ms"]
                wifi.stable_ms = tun["wifi_stable_ms"]
            if not await wifi.connect(cfg[_SSID], cfg[_WIFI_PASSWORD]):
                if gen != self._gen:
                    continue
                if self._first_wifi:
                    self._ctl(control.MSG_BAD_WIFI)
                self._first_wifi = False
                self.diag("WiFi: no connection (status %d)" % wifi.status)
                await self._pause(delay, gen)
                delay = min(delay * 2, tun["reconnect_max_ms"])
                continue
            self._first_wifi = False
            if gen != self._gen:
                continue
            try:
                await mq.connect(cfg[_HOST], cfg[_PORT], cfg[_TLS])
                await mq.publish(self._status, ONLINE, liveness.QOS_STATUS, True)
                # Up from here: with a persistent session the broker may send a
                # backlog on down before the SUBACK, which then waits behind it
                # (for as long as the link takes to drain it); meanwhile the
                # Pyboard's acks and the heartbeats must go out.
                self.watch.connected(time.ticks_ms())  # server unknown yet: 'h' at once
                self._ready = True
                await mq.subscribe(self._down, 1)
            except (OSError, MQTTError) as e:
                self._ready = False
                self.watch.disconnected()
                # the broker may drop us between CONNACK and SUBACK: the reader
                # then records why, and the publish's ENOTCONN says nothing
                why = mq.why or _reason(e)
                mq.close()
                if self._first_broker:
                    self._ctl(control.encode_text(control.BAD_BROKER, why))
                self._first_broker = False
                self.diag("broker %s:%d: %s" % (cfg[_HOST], cfg[_PORT], why))
                await self._pause(delay, gen)
                delay = min(delay * 2, tun["reconnect_max_ms"])
                continue
            self._first_broker = False
            self.connects += 1
            delay = tun["reconnect_min_ms"]
            while mq.isconnected() and wifi.isconnected() and gen == self._gen:
                await asyncio.sleep_ms(_TICK_MS * 2)
            self._ready = False
            self.watch.disconnected()
            if gen != self._gen:  # new config: leave cleanly, status offline
                try:
                    await mq.publish(self._status_of(cfg), OFFLINE, liveness.QOS_STATUS, True)
                    await mq.disconnect()
                except OSError:
                    pass
                mq.close()
                continue
            why = mq.why if not mq.isconnected() else "WiFi lost"
            mq.close(why)
            self.diag("broker connection lost: %s" % why)
            await self._pause(delay, gen)

    def _status_of(self, cfg) -> bytes:
        return Topics(cfg[_TOPIC_ROOT], cfg[_CONN_ID]).status.encode()

    # A task per job, no wrapper coroutine for each (a generator frame each):
    # asyncio calls _on_error when one ends with an exception nobody awaits.

    def _jobs(self) -> tuple:
        return (self.resp.run, self._main_loop, self._uplink, self._downlink,
                self._heartbeat, self._net)

    def _on_error(self, loop, ctx) -> None:
        """asyncio's exception handler. A job that ended with a MemoryError (one
        its own loop did not absorb) is counted and restarted by run(); any
        other exception is a bug: run() stops, main.py resets the ESP8266. Tasks not
        the bridge's jobs (the MQTT client's) get asyncio's default handler.
        Allocates nothing: it runs on a heap that was just exhausted."""
        t = ctx["future"]
        e = ctx["exception"]
        if t not in self._tasks:
            loop.default_exception_handler(loop, ctx)
            return
        if isinstance(e, MemoryError):
            self._oom()
            self._dead |= 1 << self._tasks.index(t)
            return
        sys.print_exception(e)
        self._crash = e

    async def run(self) -> None:
        """Start the jobs, then supervise them: restart the jobs _on_error marked
        dead, within a tick of their failure (a restart that cannot be allocated
        is tried again a tick later); RuntimeError within a tick of any other
        exception in a job. The supervisor is this coroutine, not a task of its
        own, and it polls instead of waiting on an Event (docs/FIRMWARE.md)."""
        gc.collect()
        asyncio.get_event_loop().set_exception_handler(self._on_error)
        self._tasks = [asyncio.create_task(job()) for job in self._jobs()]
        while self._crash is None:
            await asyncio.sleep_ms(_TICK_MS)
            if not self._dead:
                continue
            try:
                jobs = self._jobs()
                for i in range(len(jobs)):
                    if self._dead & (1 << i):
                        self._tasks[i] = asyncio.create_task(jobs[i]())
                        self._dead &= ~(1 << i)
            except MemoryError:
                self._oom()
        raise RuntimeError("bridge task failed: %r" % (self._crash,))


def run() -> None:
    asyncio.run(Bridge().run())
