"""`Lab`: a broker, optionally a server app, and N benches (the fault API of several)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from virtual_bench.bench import Bench
from virtual_bench.board_link import OutputLine
from virtual_bench.lifecycle import Started, scratch_dir
from virtual_bench.procs import ManagedProcess, broker_process, server_app_process


class Lab(Started):
    """A broker, optionally a server app (`pblink server server_args`: the demo
    unless they say `--app`), and N benches (conn_ids 1..N).

    Fault API on top of each bench's: `drop_broker(seconds)`, `restart_server_app()`.
    """

    def __init__(self, *, devices: int = 1, broker: tuple[str, int] | None = None,
                 server_app: bool = True, server_args: Sequence[str] = (),
                 server_env: dict[str, str] | None = None,
                 workdir: str | Path | None = None, conn_ids: Iterable[str] | None = None,
                 on_line: Callable[[Bench, OutputLine], None] | None = None,
                 on_server_line: Callable[[str, str], None] | None = None,
                 **bench_options: Any) -> None:
        self.external_broker = broker
        self.server_app_wanted = server_app
        self.server_args = list(server_args)
        self.server_env = server_env
        self.workdir = Path(workdir) if workdir else None
        self.conn_ids = [str(c) for c in conn_ids] if conn_ids else [
            str(i) for i in range(1, devices + 1)]
        self.on_line = on_line
        self.on_server_line = on_server_line
        self.bench_options = bench_options
        self.broker: ManagedProcess | None = None
        self.server: ManagedProcess | None = None
        self.benches: list[Bench] = []
        self.broker_drops = 0
        self.server_restarts = 0
        self.restarting_server = False  # restart_server_app() is under way
        self._tmp: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def broker_address(self) -> tuple[str, int]:
        if self.external_broker is not None:
            return self.external_broker
        assert self.broker is not None and self.broker.port is not None
        return ("127.0.0.1", self.broker.port)

    async def start(self) -> None:
        self.workdir, self._tmp = scratch_dir(self.workdir, "pblink-lab-")
        if self.external_broker is None:
            self.broker = broker_process(log_path=self.workdir / "broker.log")
            await self.broker.start()
        host, port = self.broker_address
        if self.server_app_wanted:
            self.server = server_app_process(host, port, self.server_args, cwd=self.workdir,
                                             log_path=self.workdir / "server_app.log",
                                             on_line=self.on_server_line,
                                             env=self.server_env)
            await self.server.start()
        for conn_id in self.conn_ids:
            bench = Bench(self.broker_address, conn_id=conn_id, on_line=self.on_line,
                          workdir=self.workdir / f"dev{conn_id}", **self.bench_options)
            self.benches.append(bench)
        await asyncio.gather(*(b.start() for b in self.benches))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.server is not None:  # first, while its replies can still be delivered
            await self.server.stop()
        await asyncio.gather(*(b.stop() for b in self.benches), return_exceptions=True)
        if self.broker is not None:
            await self.broker.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    async def drop_broker(self, seconds: float = 2.0, wait: bool = False) -> None:
        """Stop the broker process; start it again after `seconds` (in the
        background unless `wait`)."""
        if self.broker is None:
            raise RuntimeError("drop_broker needs the lab's own broker (not --broker)")
        self.broker_drops += 1
        for bench in self.benches:
            bench._event("fault", f"broker down for {seconds} s")
        await self.broker.stop()

        async def back() -> None:
            await asyncio.sleep(seconds)
            assert self.broker is not None
            await self.broker.start()
            for bench in self.benches:
                bench._event("fault", "broker back")

        if wait:
            await back()
        else:
            task = asyncio.create_task(back())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def restart_server_app(self) -> None:
        """Stop the server app (SIGTERM: a clean shutdown) and start it again."""
        if self.server is None:
            raise RuntimeError("this lab runs no server app")
        self.server_restarts += 1
        for bench in self.benches:
            bench._event("fault", "server app restart")
        self.restarting_server = True
        try:
            await self.server.restart()
        finally:
            self.restarting_server = False
