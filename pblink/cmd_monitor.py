"""`pblink monitor`: a live status page of the devices under one topic root."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from pblink.common import (
    LINK_TIMEOUT_MS,
    CliError,
    add_broker_options,
    add_command,
    address_text,
    listen_address,
)

log = logging.getLogger("pblink.monitor")

DESCRIPTION = """\
Serve a web page that shows, live, every device under one topic root:
conn_id, online or offline and since when, whether its server app is
reachable (unknown, shown as a dash, while the device is offline), the last
line each way, line rates, the lines acknowledged each way (up lines acked by
the server app / down lines acked by the device) and retransmissions, and the
bridge's last report (connects, mem_free; when its report_s > 0).
Open http://LISTEN/ in a browser; the page updates itself (server-sent events
from /events; /api/devices is the same as JSON).

Online and reachable are judged as the server library and the bridge judge
them (docs/PROTOCOL.md 4.4), so pass the devices' --timeout-ms if it is not
the default. The monitor only subscribes (to <root>/+/up, down, status and
report):
it publishes nothing and acknowledges no frame, so it never changes what it
watches. Connect with credentials that may read every device's topics (the
server's; a device's may read only its own subtree)."""


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "monitor", help="a live web page of the devices' state",
                         description=DESCRIPTION)
    parser.add_argument("--listen", type=listen_address, default=("127.0.0.1", 8080),
                        metavar="HOST:PORT",
                        help="where the page is served (default 127.0.0.1:8080; port 0: any; "
                        "an IPv6 address in brackets, [::1]:8080)")
    parser.add_argument("--timeout-ms", type=LINK_TIMEOUT_MS, default=1500, metavar="MS",
                        help="the devices' link timeout_ms (default %(default)s)")
    add_broker_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    return asyncio.run(serve(args))


async def serve(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from aiohttp import web

    from pblink.common import BrokerOptions, connect_paho, random_client_id, stop_paho
    from pblink.monitor_state import Fleet
    from pblink.monitor_web import MonitorHub, make_app

    opts = BrokerOptions.from_args(args)
    fleet = Fleet(opts.root, args.timeout_ms)
    hub = MonitorHub(fleet, title=f"pblink monitor: {opts.root} on {opts.address}")
    loop = asyncio.get_running_loop()

    def setup(client: Any) -> None:
        client.on_message = lambda c, u, msg: loop.call_soon_threadsafe(
            hub.message, msg.topic, bytes(msg.payload))

    def on_connected(client: Any) -> None:
        client.subscribe([(topic, 0) for topic in fleet.subscriptions()])
        loop.call_soon_threadsafe(hub.broker, True, f"{opts.address} connected")

    def on_lost(reason: str) -> None:
        log.warning("lost the MQTT broker %s (%s); reconnecting", opts.address, reason)
        loop.call_soon_threadsafe(hub.broker, False, f"{opts.address} lost ({reason})")

    client = await asyncio.to_thread(connect_paho, opts, random_client_id("monitor"),
                                     setup=setup, on_connected=on_connected, on_lost=on_lost)
    runner = web.AppRunner(make_app(hub), access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, *args.listen)
        try:
            await site.start()
        except OSError as exc:
            raise CliError(f"cannot listen on {address_text(*args.listen)}: "
                           f"{exc.strerror or exc}") from None
        host, port = runner.addresses[0][:2]
        print(f"pblink monitor: http://{address_text(host, port)}/ (root {opts.root} on "
              f"{opts.address}); Ctrl-C stops", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
        await asyncio.to_thread(stop_paho, client)
    return 0
