"""Lines received and not yet read, and the ``async for`` loop over them.

One home for what every reading end of a link does: :class:`LineQueue` holds
received lines (``str`` without their newline) in a deque, ``readline()``
waits for one and hands it out with ``"\\n"`` appended, as ``pb_link``'s
``AppBase.readline()`` does; ``async for line in q`` calls ``readline()`` until
it raises one of the class's ``_end_of_lines`` exceptions (the reader was
closed), then ends. Used by :class:`server_apps.connection.Connection` (the
server end), ``virtual_bench.device_double.DeviceDouble`` (the device end) and,
through :class:`LineSource` alone, ``pblink.apps.CountingConnection`` (a
wrapper that counts what a server app reads).

No I/O and no paho here: importing this module costs nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import ClassVar


class Signal:
    """A level-free wake-up for coroutines waiting on a predicate.

    ``while not pred(): await sig.wait()`` is race free in asyncio: ``fire()``
    wakes every current waiter and re-arms.

    One future per waiter, dropped when it is woken or cancelled; a ``fire()``
    with nobody waiting costs a truth test (a server fires once per line
    received, docs/PERFORMANCE.md "Server scale").
    """

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    def fire(self) -> None:
        """Wake every coroutine waiting now; later waiters wait for the next fire."""
        waiters = self._waiters
        if waiters:
            self._waiters = []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    async def wait(self) -> None:
        """Wait for the next ``fire()``."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):  # not woken: no fire() took it out
                self._waiters.remove(fut)
            raise


class LineSource:
    """Anything with ``readline()``: ``async for`` reads it until it ends.

    Subclasses set ``_end_of_lines``, the exceptions by which ``readline()``
    says there will be no more lines (closed); the loop ends on them quietly.
    Any other exception propagates out of the ``async for``.
    """

    _end_of_lines: ClassVar[tuple[type[BaseException], ...]] = ()

    async def readline(self) -> str:
        """The next line, ending in ``"\\n"``."""
        raise NotImplementedError

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        while True:
            try:
                yield await self.readline()
            except self._end_of_lines:
                return


class LineQueue(LineSource):
    """Received lines waiting to be read, oldest first; ``readline()`` waits for one.

    ``_lines`` (a deque of ``str`` without newline) and ``_changed`` (a
    :class:`Signal`, fired whenever a line arrives or a waiter should look
    again) belong to the subclass to fill and fire. Hooks: ``_read_start()``
    is called once per ``readline()`` and returns a token (it may raise, e.g.
    when closed), ``_changed_wait(token)`` waits for the next change (and may
    raise before or after it), ``_line_taken()`` runs after a line was taken.
    """

    def __init__(self, lines: Iterable[str] = ()) -> None:
        self._lines: collections.deque[str] = collections.deque(lines)
        self._changed = Signal()

    async def readline(self) -> str:
        """The next line, ending in ``"\\n"``; waits for one (see the subclass for errors)."""
        token = self._read_start()
        while not self._lines:
            await self._changed_wait(token)
        line = self._lines.popleft()
        self._line_taken()
        return line + "\n"

    def _read_start(self) -> int:
        return 0

    async def _changed_wait(self, token: int) -> None:
        await self._changed.wait()

    def _line_taken(self) -> None:
        pass
