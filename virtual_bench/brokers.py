"""Broker child processes on loopback ports: the one launcher of the bench, the
benchmarks and the tests (before, virtual_bench/harness.py, benchmarks/common.py
and tests/conftest.py each built their own).

- `amqtt_argv(port, extra)`: the command line of the embedded amqtt broker
  (broker/embedded.py) on 127.0.0.1 (the bench's `Lab` runs it as a
  `ManagedProcess`, virtual_bench/procs.py);
- `BrokerProcess`: a broker as a child process with its output in a log file,
  started and stopped from plain code (``start``/``stop``/``restart``) or from
  a running event loop (``start_async``/``stop_async``/``restart_async``);
- `amqtt_process` and `mosquitto_process` make one.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from virtual_bench.ports import HOST, WAIT_S, free_port, wait_for_port, wait_port_async
from virtual_bench.wiring import ROOT

STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long (amqtt's shutdown can hang)


def amqtt_argv(port: int, extra: Sequence[str] = ()) -> list[str]:
    """``python -m broker.embedded`` on 127.0.0.1:`port`, with `extra` arguments."""
    return [sys.executable, "-m", "broker.embedded", "--host", HOST, "--port", str(port),
            *extra]


class BrokerProcess:
    """A broker running as a child process on a fixed port; can be stopped and restarted.

    Its output goes to ``workdir/<log_name>`` (default ``<name>.log``), appended
    across restarts. ``new_session`` starts it in its own session (a Ctrl-C in
    the terminal does not reach it); ``preexec`` runs in the child before exec.
    ``start`` waits until the port accepts connections (RuntimeError when the
    process exits first, TimeoutError after ``start_timeout`` seconds, default
    ``WAIT_S``: 15, or ``$PBLINK_WAIT_S``).
    """

    def __init__(self, name: str, argv: list[str], port: int, workdir: Path, *,
                 log_name: str | None = None, new_session: bool = False,
                 preexec: Callable[[], None] | None = None,
                 start_timeout: float = WAIT_S) -> None:
        self.name = name
        self.argv = argv
        self.host = HOST
        self.port = port
        self.workdir = workdir
        self.log_name = log_name or f"{name}.log"
        self.new_session = new_session
        self.preexec = preexec
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def _spawn(self) -> None:
        with open(self.workdir / self.log_name, "ab") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=self.preexec,
                                         start_new_session=self.new_session)

    def _exited(self) -> str | None:
        proc = self.proc
        if proc is None or proc.poll() is None:
            return None
        return (f"{self.name} exited with {proc.returncode} before listening on {self.port}; "
                f"see {self.workdir / self.log_name}")

    def start(self) -> None:
        self._spawn()
        try:
            wait_for_port(self.port, self.start_timeout, exited=self._exited, name=self.name)
        except BaseException:  # not up, timed out or interrupted: no broker outlives its start
            self.stop()
            raise

    async def start_async(self) -> None:
        self._spawn()
        try:
            await wait_port_async(self.port, self.start_timeout, exited=self._exited,
                                  name=self.name)
        except BaseException:  # also cancelled (SIGTERM, Ctrl-C): the caller never got it
            self.stop()
            raise

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    async def stop_async(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        for _ in range(int(STOP_GRACE_S / 0.05)):
            if proc.poll() is not None:
                return
            await asyncio.sleep(0.05)
        proc.kill()
        proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    async def restart_async(self) -> None:
        await self.stop_async()
        await self.start_async()

    def log(self) -> str:
        path = self.workdir / self.log_name
        return path.read_text(errors="replace") if path.exists() else ""


def amqtt_process(workdir: Path, port: int | None = None, extra: Sequence[str] = (), *,
                  name: str = "amqtt", log_name: str | None = None, new_session: bool = False,
                  preexec: Callable[[], None] | None = None,
                  start_timeout: float = WAIT_S) -> BrokerProcess:
    """The embedded amqtt broker (not started) on `port` (default: a free one);
    the keywords as for `BrokerProcess`."""
    port = port or free_port()
    return BrokerProcess(name, amqtt_argv(port, extra), port, workdir, log_name=log_name,
                         new_session=new_session, preexec=preexec,
                         start_timeout=start_timeout)


def mosquitto_process(workdir: Path, binary: str, port: int | None = None,
                      conf_lines: Sequence[str] = (), *, conf_name: str = "mosquitto-test.conf",
                      log_name: str | None = None, new_session: bool = False,
                      preexec: Callable[[], None] | None = None,
                      start_timeout: float = WAIT_S) -> BrokerProcess:
    """Mosquitto (`binary`, not started) on 127.0.0.1:`port` (default: a free one),
    anonymous, with ``set_tcp_nodelay`` as in the shipped config (without it every
    acknowledged round trip waits ~40 ms for Nagle's algorithm), plus `conf_lines`;
    the config file is ``workdir/<conf_name>`` (``{port}`` in it is the port).
    The keywords as for `BrokerProcess`."""
    port = port or free_port()
    conf = workdir / conf_name.format(port=port)
    lines = [f"listener {port} {HOST}", "set_tcp_nodelay true", "allow_anonymous true",
             *conf_lines]
    conf.write_text("\n".join(lines) + "\n")
    return BrokerProcess("mosquitto", [binary, "-c", str(conf)], port, workdir,
                         log_name=log_name, new_session=new_session, preexec=preexec,
                         start_timeout=start_timeout)
