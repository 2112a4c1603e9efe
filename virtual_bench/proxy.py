"""The ESP8266's TCP route to the broker, which a WiFi outage or a refusing broker cuts."""

from __future__ import annotations

import asyncio
import contextlib

from virtual_bench.ports import free_port


class TcpProxy:
    """The ESP8266's route to the broker: forwards TCP, can be cut like WiFi.

    mode "up": forward; "down": existing connections dropped, new ones refused
    (nothing listens); "not_authorised": accept, answer the MQTT CONNECT with
    CONNACK return code 5 and close.
    """

    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = port
        self.mode = "up"
        self.bytes_up = 0  # ESP8266 -> broker
        self.bytes_down = 0
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, mode: str = "up") -> None:
        self.mode = mode
        if mode != "down":
            await self._listen()
        elif not self.port:
            self.port = free_port()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def set_mode(self, mode: str) -> None:
        if mode == self.mode:
            return
        self.mode = mode
        if mode == "down":
            if self._server is not None:
                self._server.close()
                self._server = None
            self.drop_all()
        else:
            await self._listen()

    def drop_all(self) -> None:
        for client, upstream in list(self._pairs):
            for writer in (client, upstream):
                with contextlib.suppress(Exception):
                    writer.transport.abort()
        self._pairs.clear()

    async def stop(self) -> None:
        await self.set_mode("down")
        for task in list(self._tasks):
            task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "not_authorised":
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader.read(1024), 2)
                writer.write(b"\x20\x02\x00\x05")  # CONNACK, rc 5 not authorised
                await writer.drain()
            writer.close()
            return
        if self.mode != "up":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()  # the broker is down: the client sees a reset
            return
        self.connections += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        t1 = asyncio.create_task(self._pipe(reader, up_writer, pair, True))
        t2 = asyncio.create_task(self._pipe(up_reader, writer, pair, False))
        self._tasks.update((t1, t2))
        t1.add_done_callback(self._tasks.discard)
        t2.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter], up: bool) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._pairs.discard(pair)
            for w in pair:
                with contextlib.suppress(Exception):
                    w.close()
