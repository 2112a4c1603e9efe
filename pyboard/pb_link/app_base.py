# AppBase: the Pyboard application's link to its server application.
#
# API (as the original pb_link, see docs/PYBOARD.md):
#   AppBase(conn_id, config, hardware, verbose=False)
#   coroutines readline(), write(line, qos=True, wait=True), reboot()
#   synchronous close(), status()
#   overridable coroutines bad_wifi(), bad_server(), report(data), server_ok(up)
#   the subclass's synchronous start() runs once, when the link first comes up
#
# One task runs the I2C link as the Initiator (docs/PROTOCOL.md section 1):
# reset pulse and SYNC, the config message, the poll loop, the keepalive
# watchdog. The end-to-end rules (section 3) live in link_core's Sender and
# Receiver; this file only feeds them frames and times.
import asyncio
import gc
import os
import sys
from time import ticks_diff, ticks_ms

from micropython import const

from link_core import control, frames, messages
from link_core.endpoint import Receiver, Sender, may_write
from link_core.i2c_link import INITIATOR, LinkEndpoint
from link_core.i2c_tools import SYNC_RETRY_MS, PollPolicy
from link_core.lines import line_bytes
from link_core.names import check_conn_id
from pb_link.ports import make_port

_sleep_ms = asyncio.sleep_ms  # type: ignore[attr-defined]

TX_WINDOW = const(8)  # unacknowledged qos lines (PROTOCOL.md section 0)
RX_WINDOW = const(16)
_LINK_TXQ = const(12)  # link messages queued for the ESP8266
_LINK_RXQ = const(4)  # complete link messages received, not yet handled
_ACK_ROOM = const(4)  # link queue slots that write() leaves for acks
_FAILS = const(2)  # failed exchanges in a row that mean "ESP8266 dead"

# C message indices (link_core/schema.py); the config list is the message
# without conn_id, so config[i - 1] holds entry i and config[10] the tuning dict.
_TIMEOUT_MS = const(3)
_BRIDGE_TUNING = const(11)


def _tuning(given: dict) -> dict:
    """The Pyboard timings: every "tuning" row of link_core/schema.py, from
    `given` (config[10]) or the row's default. ValueError (check_setting) for a bad one."""
    return control.group("tuning", given)


def _full_config(conn_id: str, config: list) -> tuple:
    """(the C message's entries, the tuning dict config[10]) for AppBase's arguments.

    ValueError from link_core.control.check_config for a bad entry."""
    cfg = list(config)
    if not 3 <= len(cfg) <= _BRIDGE_TUNING:
        raise ValueError("config has " + str(len(cfg)) + " entries: expected 3 to 11")
    tuning = cfg[_BRIDGE_TUNING - 1] if len(cfg) >= _BRIDGE_TUNING else {}
    if not isinstance(tuning, dict):
        raise ValueError("config[10] (tuning) is not a dict")
    full = control.check_config([conn_id] + cfg[: _BRIDGE_TUNING - 1])  # fills in the defaults
    bridge = tuning.get("bridge_tuning")  # None: the default, {}
    bridge = control.check_setting("bridge_tuning", {} if bridge is None else bridge)
    return full[:_BRIDGE_TUNING] + [bridge], tuning


def config_message(conn_id: str, config: list) -> bytes:
    """The 'C' link message for `config` (3 to 11 entries, see AppBase).

    Body (PROTOCOL.md 2): [conn_id, port, host, timeout_ms, report_s, ssid,
    wifi_password, mqtt_user, mqtt_password, topic_root, tls, bridge_tuning]
    where bridge_tuning is config[10]["bridge_tuning"] (a JSON object, {} for
    defaults). ValueError (link_core.control.check_config) names a bad entry.
    """
    return messages.encode_config(_full_config(conn_id, config)[0])


class AppBase:
    def __init__(self, conn_id: str, config: list, hardware: list, verbose: bool = False) -> None:
        if isinstance(conn_id, str) and conn_id.endswith("\n"):
            conn_id = conn_id[:-1]  # the original allowed one trailing newline
        self.conn_id = check_conn_id(conn_id)
        self.verbose = verbose
        full, given = _full_config(conn_id, config)
        self._cfg_msg = messages.encode_config(full)
        self.tuning = t = _tuning(given)  # every Pyboard timing, given or default
        self._boot_wait = t["boot_wait_ms"]
        self._idle_poll = max(1, t["idle_poll_ms"])
        self._ka_timeout = t["keepalive_timeout_ms"]
        self._sync_timeout = t["sync_timeout_ms"]
        self._rx_max = max(1, t["rx_queue"])
        i2c, syn, ack, rst = hardware
        self._syn = syn
        self._rst_pin, self._rst_level, self._rst_ms = rst
        self._port = make_port(i2c, syn, ack, max(1, t["exchange_timeout_ms"]))
        ep = LinkEndpoint(INITIATOR, _LINK_TXQ, _LINK_RXQ)
        ep.sync_message = self._cfg_msg
        self._ep = ep
        self._policy = PollPolicy(t["active_poll_ms"], self._idle_poll, t["idle_after_ms"])
        self._tx = Sender(frames.new_session(os.urandom(4)), TX_WINDOW, full[_TIMEOUT_MS])
        self._rx = Receiver(RX_WINDOW)
        self._lines: list[str] = []  # received lines (str, no newline), bounded by rx_queue
        self._revt = asyncio.Event()  # lines arrived (or closed)
        self._wevt = asyncio.Event()  # write conditions may have changed
        self._wlock = asyncio.Lock()  # writes go out in call order
        self._server_reachable = False  # the server application is reachable ('U')
        self._started = False
        self._resend = False  # resend every unacked frame (after 'U')
        self._reboot = False
        self._blocked = False  # line queue full: we hold back the ESP8266
        self._last_k = 0
        self._told = 0  # bit 0: bad_wifi run, bit 1: bad_server run
        self._closed = False
        self._error: Exception | None = None
        self.broker_reason = ""  # the ESP8266's reason with the last 'B'
        self.server_reason = ""  # the ESP8266's reason with the last reasoned 'D'
        self._down_told = False  # server_ok(False) ran since the last server_ok(True)
        self.pulses = 0  # reset pulses given
        self.acks_dropped = 0
        self._task = asyncio.create_task(self._run())

    # -- public API --------------------------------------------------------

    async def readline(self) -> str:
        """The next line from the server application, ending in '\\n'."""
        lines = self._lines
        while not lines:
            self._check_open()
            self._revt.clear()
            await self._revt.wait()
        return lines.pop(0) + "\n"

    async def write(self, line: "str | bytes", qos: bool = True, wait: bool = True) -> None:
        """Send a line (str, or UTF-8 bytes) to the server application.

        One trailing newline is optional. ValueError, before anything is
        queued, for an internal newline, more than MAX_LINE bytes or bytes
        that are not UTF-8. Pauses while the server is unreachable, while
        qos lines fill the window and, with qos and wait, until every
        earlier qos line is acknowledged.
        """
        data = line_bytes(line)
        tx = self._tx
        ep = self._ep
        async with self._wlock:
            while True:
                self._check_open()
                if ep.tx_pending < _LINK_TXQ - _ACK_ROOM and may_write(self._server_reachable, tx, qos, wait):
                    break
                self._wevt.clear()
                await self._wevt.wait()
            now = ticks_ms()
            ep.queue_message(tx.send(data, now) if qos else tx.unreliable(data))
            self._policy.kick(now)

    async def reboot(self) -> None:
        """Pulse the ESP8266's reset line; the link then resynchronises.

        Returns once the pulse has been given.
        """
        self._check_open()
        n = self.pulses
        self._reboot = True
        while self.pulses == n and not self._closed:
            await _sleep_ms(self._idle_poll)

    def close(self) -> None:
        """Stop the link, release the I2C target and the pins."""
        if self._closed:
            return
        self._closed = True
        self._server_reachable = False
        try:
            me = asyncio.current_task()
        except RuntimeError:  # called outside the event loop
            me = None
        if me is not self._task:
            self._task.cancel()
        self._port.close()
        self._revt.set()
        self._wevt.set()

    def status(self) -> bool:
        """True while the server application is reachable."""
        return self._server_reachable

    def start(self) -> None:
        """Override: runs once, when the server application is first reachable."""

    async def bad_wifi(self) -> None:
        print("No initial WiFi connection.")
        raise OSError("No initial WiFi connection.")

    async def bad_server(self) -> None:
        print("No initial connection to the broker:", self.broker_reason)
        raise OSError("No initial connection to the broker.")

    async def report(self, data: list) -> None:
        print("Connects {} Count {} Mem free {}".format(data[0], data[1], data[2]))

    async def server_ok(self, up: bool) -> None:
        print("Server is", "up" if up else "down")

    # -- internals -----------------------------------------------------------

    def _log(self, *args):
        if self.verbose:
            print("pb_link:", *args)

    def _check_open(self):
        if self._closed:
            raise self._error or OSError("pb_link is closed")

    def _spawn(self, coro, fatal=False):
        asyncio.create_task(self._guard(coro, fatal))

    async def _guard(self, coro, fatal):
        try:
            await coro
        except Exception as e:
            if fatal:
                # bad_wifi / bad_server raised: initialisation failed.
                self._error = e
                self.close()
            else:
                sys.print_exception(e)  # type: ignore[attr-defined]

    async def _run(self):
        pulse = True
        while not self._closed:
            try:
                if pulse:
                    await self._pulse()
                if await self._sync():
                    pulse = await self._poll()
                else:
                    pulse = True
            except Exception as e:  # a bug must not end the link for good
                sys.print_exception(e)  # type: ignore[attr-defined]
                pulse = True
                await _sleep_ms(self._boot_wait)
            self._link_lost()

    async def _pulse(self):
        # PROTOCOL.md 1.6 step 1: syn low, rst pulse, boot wait; step 2.
        self._reboot = False
        self._syn.value(0)
        lvl = self._rst_level
        self._log("reset pulse")
        self._rst_pin.value(lvl)
        await _sleep_ms(self._rst_ms)
        self._rst_pin.value(1 - lvl)
        self.pulses += 1
        await _sleep_ms(self._boot_wait)
        self._ep.reset()


    async def _sync(self):
        # 1.6 step 3: SYNC polls until a SYNC reply, for up to sync_timeout_ms.
        ep = self._ep
        t0 = ticks_ms()
        port = self._port
        while not self._closed and not self._reboot:
            ep.build_block(port.out)
            r = await port.exchange()
            if r is not None:
                ep.on_block(r)
            if ep.synced:
                self._log("link synchronised")
                gc.collect()
                return True
            if ticks_diff(ticks_ms(), t0) >= self._sync_timeout:
                self._log("no sync")
                return False
            await _sleep_ms(SYNC_RETRY_MS if r is None else self._idle_poll)
        return False

    async def _poll(self):
        # Runs while synchronised. True: reset pulse needed; False: FRESH.
        ep = self._ep
        port = self._port
        self._last_k = ticks_ms()
        fails = 0
        while not self._closed:
            if self._reboot:
                return True
            self._service(ticks_ms())
            ep.build_block(port.out)
            r = await port.exchange()
            now = ticks_ms()
            if r is None:  # the handshake or a bus transfer timed out
                fails += 1
                if fails >= _FAILS:
                    self._log("exchanges failing")
                    return True
                await _sleep_ms(self._idle_poll)
                continue
            fails = 0
            ep.on_block(r)  # False: corrupt, ignored; the next poll repeats it
            if not ep.synced:
                self._log("ESP8266 rebooted (FRESH)")
                return False
            self._service(now)
            if self._blocked:
                # We hold the ESP8266 back, so its keepalives cannot come.
                self._last_k = now
            elif ticks_diff(now, self._last_k) >= self._ka_timeout:
                self._log("no keepalive")
                return True
            await _sleep_ms(self._policy.delay_ms(now, ep.busy))
        return True

    def _link_lost(self):
        self._set_up(False)

    def _service(self, now):
        ep = self._ep
        lines = self._lines
        while len(lines) < self._rx_max:
            m = ep.pop_message()
            if m is None:
                break
            self._on_message(m, now)
        self._blocked = len(lines) >= self._rx_max
        tx = self._tx
        if not tx.in_flight:
            self._resend = False
        elif self._server_reachable and ep.tx_pending + tx.in_flight <= _LINK_TXQ:
            if self._resend:
                self._resend = False
                out = tx.resend_all(now)
            else:
                out = tx.due(now, True)
            for f in out:
                ep.queue_message(f)
        self._wevt.set()

    def _on_message(self, m, now):
        k = m[0]
        if messages.is_frame(m):
            self._on_frame(m)
        elif k == messages.KEEPALIVE:
            self._last_k = now
        elif k == messages.SERVER_UP:
            self._set_up(True)
        elif k == control.SERVER_DOWN:
            self._set_up(False)
            if len(m) > 1:  # the bridge says why nobody answers (PROTOCOL.md 4.4)
                try:
                    self.server_reason = messages.decode_text(m)
                except ValueError:
                    self.server_reason = "?"
                print("pb_link: server unreachable:", self.server_reason)
                if not self._down_told:
                    self._down_told = True
                    self._spawn(self.server_ok(False))
        elif k == messages.REPORT:
            try:
                rep = messages.decode_report(m)
            except ValueError as e:
                self._log("bad report", e)
            else:
                self._spawn(self.report(rep))
        elif k == messages.BAD_WIFI:
            if not self._started and not self._told & 1:
                self._told |= 1
                self._spawn(self.bad_wifi(), True)
        elif k == control.BAD_BROKER:
            if not self._started and not self._told & 2:
                self._told |= 2
                try:
                    self.broker_reason = messages.decode_text(m)
                except ValueError:
                    pass
                self._spawn(self.bad_server(), True)
        elif k == control.ERROR:
            if self.verbose:
                try:
                    print("ESP8266:", messages.decode_text(m))
                except ValueError:
                    pass
        else:
            self._log("unknown message", m[:16])

    def _on_frame(self, m):
        try:
            fr = frames.decode(m)
        except ValueError as e:
            self._log("bad frame", e)
            return
        if fr.kind == frames.ACK:
            self._tx.on_ack(fr.session, fr.msg_id)
            return
        ack, lines = self._rx.on_frame(fr)
        if ack is not None and not self._ep.queue_message(ack):
            self.acks_dropped += 1  # the server will resend; we ack then
        if lines:
            self._lines.extend(lines)
            self._revt.set()

    def _set_up(self, up):
        if up == self._server_reachable:
            return
        self._server_reachable = up
        self._log("server", "up" if up else "down")
        self._down_told = not up
        if up:
            self._resend = True
        self._spawn(self.server_ok(up))
        if up and not self._started:
            self._started = True
            try:
                self.start()
            except Exception as e:  # the application's bug: report it, keep the link
                sys.print_exception(e)  # type: ignore[attr-defined]
