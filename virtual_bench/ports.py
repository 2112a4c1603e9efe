"""Loopback ports: a free one, and waiting until a child process listens on one.

The one home of these helpers for the bench, the benchmarks and the tests
(before, virtual_bench/harness.py, benchmarks/common.py and tests/conftest.py
each had their own).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable

HOST = "127.0.0.1"
# One knob stretches every wait of the tests, the bridge rig and the broker
# launchers (a slow machine: PBLINK_WAIT_S=30). Seconds.
WAIT_S = float(os.environ.get("PBLINK_WAIT_S", "15"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS's choice)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing is bound to now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _timeout_error(port: int, timeout: float, name: str) -> TimeoutError:
    prefix = f"{name}: " if name else ""
    return TimeoutError(f"{prefix}nothing listening on {HOST}:{port} after {timeout} s")


def _raise_if_exited(exited: Callable[[], str | None] | None) -> None:
    gone = exited() if exited is not None else None
    if gone is not None:
        raise RuntimeError(gone)


def wait_for_port(port: int, timeout: float, *, exited: Callable[[], str | None] | None = None,
                  name: str = "") -> None:
    """Block until something accepts TCP connections on 127.0.0.1:`port`, polling every 0.05 s.

    ``exited()`` (optional) says whether the process meant to listen has gone:
    None while it runs, else the text of the RuntimeError raised at once.
    TimeoutError after `timeout` seconds (its text starts with `name`).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _raise_if_exited(exited)
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise _timeout_error(port, timeout, name)


async def wait_port_async(port: int, limit_s: float, *,
                          exited: Callable[[], str | None] | None = None,
                          name: str = "") -> None:
    """`wait_for_port` for a running event loop: the same rules (`limit_s` is the
    timeout in seconds), without blocking it."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        _raise_if_exited(exited)
        try:
            _r, w = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        w.close()
        return
    raise _timeout_error(port, limit_s, name)
