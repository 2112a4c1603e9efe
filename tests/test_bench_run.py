"""`pblink run`: the user's own Pyboard app and server app on the bench, and a
failing verdict (with the traceback's file and line) for an app that crashes,
fails to import or has a syntax error."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow

BOARD_OK = """
import asyncio
from pb_link.app_base import AppBase


class Echo(AppBase):
    def start(self):
        asyncio.create_task(self.talk())

    async def talk(self):
        n = 0
        while True:
            n += 1
            await self.write("ping %d" % n)
            print("got", await self.readline(), end="")
"""

SERVER_OK = """
import asyncio


async def app(server, conn_ids):
    async def one(conn_id):
        conn = await server.connection(conn_id)
        async for line in conn:
            await conn.write("pong " + line)

    await asyncio.gather(*(one(c) for c in conn_ids))
"""

BOARD_CRASH = BOARD_OK.replace('            n += 1\n',
                               '            n += 1\n            if n == 3:\n'
                               '                raise RuntimeError("board app bug")\n')
SERVER_CRASH = SERVER_OK.replace('            await conn.write("pong " + line)',
                                 '            raise KeyError("server app bug")')


def pblink_run(tmp_path: Path, board: str, server: str, *extra: str,
               duration: str = "25") -> subprocess.CompletedProcess[str]:
    (tmp_path / "board_app.py").write_text(textwrap.dedent(board))
    (tmp_path / "server_app.py").write_text(textwrap.dedent(server))
    return subprocess.run(
        [sys.executable, "-m", "pblink", "run", "--board-app",
         f"{tmp_path / 'board_app.py'}:Echo", "--server-app",
         f"{tmp_path / 'server_app.py'}:app", "--duration", duration, "--view", "lines",
         *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=180)


def test_own_apps_exchange_lines(tmp_path: Path) -> None:
    proc = pblink_run(tmp_path, BOARD_OK, SERVER_OK, "--devices", "2", duration="10")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "pblink run summary" in proc.stdout
    assert "result: OK" in proc.stdout
    read, written = re.search(r"server app \((\d+) read, (\d+) written\)", proc.stdout).groups()
    assert int(read) >= 2 and int(written) >= 2, proc.stdout[-2000:]
    assert "dev1 pyboard: got pong ping 1" in proc.stdout
    assert "dev2 pyboard: got pong ping 1" in proc.stdout


def test_sensor_example_as_documented() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pblink", "run", "--board-app",
         "examples/sensor/sensor_app.py:Sensor", "--server-app",
         "examples/sensor/sensor_server.py:app", "--duration", "8", "--view", "lines"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "server: alarm 1 noted" in proc.stdout
    assert "without qos" in proc.stdout  # the readings


def assert_failed(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "result: FAILED" in proc.stdout, out[-3000:]
    for needle in needles:
        assert needle in out, (needle, out[-3000:])


def test_board_app_that_raises(tmp_path: Path) -> None:
    proc = pblink_run(tmp_path, BOARD_CRASH, SERVER_OK)
    assert_failed(proc, "dev1 Pyboard app raised RuntimeError: board app bug",
                  f'File "{tmp_path / "board_app.py"}", line 15')


def test_board_app_that_fails_to_import(tmp_path: Path) -> None:
    proc = pblink_run(tmp_path, "import no_such_module\n" + BOARD_OK, SERVER_OK)
    assert_failed(proc, "dev1 Pyboard app raised ImportError",
                  f'File "{tmp_path / "board_app.py"}", line 1')


def test_board_app_with_a_syntax_error(tmp_path: Path) -> None:
    proc = pblink_run(tmp_path, BOARD_OK.replace("def start(self):", "def start(self)"),
                      SERVER_OK)
    assert_failed(proc, "SyntaxError", f'File "{tmp_path / "board_app.py"}", line 7')


def test_server_app_that_raises(tmp_path: Path) -> None:
    proc = pblink_run(tmp_path, BOARD_OK, SERVER_CRASH)
    assert_failed(proc, "FAILED: server app raised KeyError", "KeyError: 'server app bug'",
                  f'File "{tmp_path / "server_app.py"}", line 9')


def test_server_app_that_fails_to_import(tmp_path: Path) -> None:
    proc = pblink_run(tmp_path, BOARD_OK, "import no_such_module\n" + SERVER_OK)
    assert_failed(proc, "FAILED: server app raised ModuleNotFoundError",
                  f'File "{tmp_path / "server_app.py"}", line 1')


def test_server_app_with_a_syntax_error(tmp_path: Path) -> None:
    proc = pblink_run(tmp_path, BOARD_OK, SERVER_OK.replace("async def app(server, conn_ids):",
                                                            "async def app(server, conn_ids)"))
    assert_failed(proc, "FAILED: server app exited (status 1)", "SyntaxError",
                  f'File "{tmp_path / "server_app.py"}", line 5')


def test_own_broker_with_credentials(tmp_path: Path) -> None:
    """--broker HOST:PORT --user/--password: the server app and every device log
    in with them (a broker that refuses anonymous clients), the tail hint names it."""
    from conftest import amqtt_process

    from broker.credentials import write_amqtt_users

    write_amqtt_users(tmp_path / "amqtt.passwd", {"bench": "bench-pw"})
    broker = amqtt_process(tmp_path, extra=["--password-file", str(tmp_path / "amqtt.passwd")])
    broker.start()
    try:
        proc = pblink_run(tmp_path, BOARD_OK, SERVER_OK, "--broker",
                          f"127.0.0.1:{broker.port}", "--user", "bench", "--password",
                          "bench-pw", "--root", "bench-test", duration="10")
    finally:
        broker.stop()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "dev1 pyboard: got pong ping 1" in proc.stdout
    assert (f"pblink tail 1 --broker 127.0.0.1:{broker.port} --root bench-test --user bench"
            in proc.stdout)


def test_board_app_not_an_appbase_subclass(tmp_path: Path) -> None:
    """A class that only looks like an app (its base is no AppBase) fails the
    run at once, naming the class, instead of running silently to the end."""
    board = "class Base:\n    pass\n\n\nclass Echo(Base):\n    pass\n"
    proc = pblink_run(tmp_path, board, SERVER_OK, duration="60")
    assert_failed(proc, f"dev1 Echo in {tmp_path / 'board_app.py'} is not an AppBase subclass")
    elapsed = float(proc.stdout.split("pblink run summary: ")[1].split(" s")[0])
    assert elapsed < 30, proc.stdout[-2000:]


SERVER_DEAF = """
import asyncio


async def app(server, conn_ids):
    for conn_id in conn_ids:
        await server.connection(conn_id)  # the library acknowledges lines unread
    await asyncio.Event().wait()
"""


def test_server_app_that_reads_nothing(tmp_path: Path) -> None:
    """Lines acknowledged by the library but never read by the app: not OK."""
    proc = pblink_run(tmp_path, BOARD_OK, SERVER_DEAF, duration="8")
    assert_failed(proc, "dev1: the server app read no line")


def test_chaos_too_short_warns(tmp_path: Path) -> None:
    """--chaos in a run too short for any fault says so at the start (and
    docs/RUN.md and --help say how long is enough)."""
    from virtual_bench.demo import CHAOS_MIN_DURATION_S

    proc = pblink_run(tmp_path, BOARD_OK, SERVER_OK, "--chaos", duration="6")
    need = f"--chaos needs --duration of at least {CHAOS_MIN_DURATION_S:g} s to inject faults"
    assert need in proc.stderr, proc.stderr
    assert f"at least {CHAOS_MIN_DURATION_S:g} s" in (ROOT / "docs" / "RUN.md").read_text()
    help_text = subprocess.run([sys.executable, "-m", "pblink", "run", "--help"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60).stdout
    assert f"at least {CHAOS_MIN_DURATION_S:g} s" in " ".join(help_text.split())
