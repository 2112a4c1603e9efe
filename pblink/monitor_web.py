"""The web side of `pblink monitor`: an aiohttp application serving the status page.

Routes:

- ``GET /``: the page (pblink/monitor_page.html: inline CSS and script, nothing
  loaded from elsewhere), one table row per device, ``<tr id="dev-<conn_id>"
  data-online="true|false">``;
- ``GET /events``: server-sent events (``text/event-stream``), one
  ``event: devices`` whose data is the JSON list of
  :meth:`pblink.monitor_state.Fleet.snapshot` rows at connect and after every
  change (at most ``MAX_PUSH_HZ`` times a second), and at least every second
  so ages and rates stay current;
- ``GET /api/devices``: the same list, once, as JSON.

:class:`MonitorHub` is the bridge between the MQTT side (paho's thread calls
:meth:`MonitorHub.message` through the event loop) and the page's listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from pblink.monitor_state import Fleet

log = logging.getLogger("pblink.monitor")

PAGE = (Path(__file__).resolve().parent / "monitor_page.html").read_text(encoding="utf-8")
MAX_PUSH_HZ = 5
REFRESH_S = 1.0  # push even without changes: ages and rates move


class MonitorHub:
    """The fleet, its listeners and the silence ticker, on one event loop."""

    def __init__(self, fleet: Fleet, clock: Callable[[], float] = time.time,
                 title: str = "pblink monitor") -> None:
        self.fleet = fleet
        self.clock = clock
        self.title = title
        self.broker_up = False
        self.broker_note = "connecting"
        self._changed = asyncio.Event()
        self._generation = 0

    def message(self, topic: str, payload: bytes) -> None:
        """One MQTT message (call on the event loop)."""
        if self.fleet.on_message(topic, payload, self.clock()) is not None:
            self._poke()

    def broker(self, up: bool, note: str) -> None:
        self.broker_up, self.broker_note = up, note
        self._poke()

    def _poke(self) -> None:
        self._generation += 1
        self._changed.set()

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        return {"now": now, "root": self.fleet.root, "timeout_s": self.fleet.timeout_s,
                "broker_up": self.broker_up, "broker_note": self.broker_note,
                "devices": self.fleet.snapshot(now)}

    async def ticker(self) -> None:
        """Silence judgements, four times a second."""
        while True:
            await asyncio.sleep(0.25)
            if self.fleet.tick(self.clock()):
                self._poke()

    async def changes(self) -> None:
        """Wait for the next change, or REFRESH_S."""
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), REFRESH_S)


async def _page(request: web.Request) -> web.Response:
    hub: MonitorHub = request.app["hub"]
    return web.Response(text=PAGE.replace("__TITLE__", _html_escape(hub.title)),
                        content_type="text/html")


async def _api(request: web.Request) -> web.Response:
    hub: MonitorHub = request.app["hub"]
    return web.json_response(hub.snapshot())


async def _events(request: web.Request) -> web.StreamResponse:
    hub: MonitorHub = request.app["hub"]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    try:
        while True:
            data = json.dumps(hub.snapshot(), separators=(",", ":"))
            await resp.write(f"event: devices\ndata: {data}\n\n".encode())
            await asyncio.sleep(1 / MAX_PUSH_HZ)
            await hub.changes()
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return resp


def _html_escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def make_app(hub: MonitorHub) -> web.Application:
    """The aiohttp application for ``hub`` (runs its ticker while it runs)."""
    app = web.Application()
    app["hub"] = hub
    app.router.add_get("/", _page)
    app.router.add_get("/events", _events)
    app.router.add_get("/api/devices", _api)

    async def ticker(app: web.Application) -> Any:
        task = asyncio.create_task(hub.ticker())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(ticker)
    return app
