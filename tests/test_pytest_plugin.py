"""The pytest plugin is registered through the package's pytest11 entry point,
so a user's pytest finds its fixtures without any conftest."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

from conftest import ROOT, TEST_TIMEOUT


def test_registered_as_a_pytest11_entry_point() -> None:
    plugins = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert plugins.get("pblink") == "pblink.pytest_plugin"


def test_a_user_project_gets_the_fixtures(tmp_path: Path) -> None:
    """In a folder of its own (no conftest, no pyproject of ours), pytest lists
    the plugin's fixtures and explains a bench with no apps named."""
    (tmp_path / "test_mine.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.asyncio
        async def test_needs_apps(pblink_bench):
            pass
    """))
    proc = subprocess.run([sys.executable, "-m", "pytest", "--fixtures", "-p",
                           "no:cacheprovider"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=TEST_TIMEOUT * 2)
    assert "pblink_bench" in proc.stdout and "pblink_start" in proc.stdout, proc.stdout[-2000:]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=TEST_TIMEOUT * 2)
    assert proc.returncode == 1
    assert "name the apps with @pytest.mark.pblink" in proc.stdout, proc.stdout[-2000:]


def test_the_docs_example_is_the_one_that_runs() -> None:
    """docs/TESTING.md shows examples/sensor's files as they are."""
    doc = (ROOT / "docs" / "TESTING.md").read_text()
    for name in ("sensor_app.py", "test_sensor.py"):
        body = (ROOT / "examples" / "sensor" / name).read_text().strip()
        assert body in doc, f"docs/TESTING.md does not show examples/sensor/{name} as it is"


def test_bad_board_app_and_a_raising_app_reported_once(tmp_path: Path) -> None:
    """A board class that is no AppBase subclass: a clear error, not a
    TimeoutError; a failure the test reported is not reported again at teardown."""
    (tmp_path / "board.py").write_text(textwrap.dedent("""
        import asyncio
        from pb_link.app_base import AppBase

        class Base:
            pass

        class Fake(Base):
            pass

        class Crash(AppBase):
            def start(self):
                asyncio.create_task(self.boom())

            async def boom(self):
                raise RuntimeError("board app bug")
    """))
    (tmp_path / "server.py").write_text(textwrap.dedent("""
        async def app(server, conn_ids):
            conn = await server.connection("1")
            async for line in conn:
                pass
    """))
    (tmp_path / "test_mine.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.asyncio
        @pytest.mark.pblink(board_app="board.py:Fake", server_app="server.py:app")
        async def test_fake(pblink_bench):
            await pblink_bench.wait_server_received("x", timeout=60)

        @pytest.mark.asyncio
        @pytest.mark.pblink(board_app="board.py:Crash", server_app="server.py:app")
        async def test_crash(pblink_bench):
            await pblink_bench.wait_server_received("x", timeout=60)
    """))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-o", "asyncio_mode=strict"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=TEST_TIMEOUT * 6)
    out = proc.stdout
    assert proc.returncode == 1, out[-3000:]
    assert "Fake in " in out and "is not an AppBase subclass" in out, out[-3000:]
    assert "TimeoutError" not in out, out[-3000:]
    assert "RuntimeError: board app bug" in out, out[-3000:]
    assert "2 failed" in out and "error" not in out.splitlines()[-1], out[-3000:]


def test_without_pytest_asyncio_one_clear_line(tmp_path: Path) -> None:
    """A pytest that lacks pytest-asyncio gets pytest's usage error naming the fix, not a
    ModuleNotFoundError traceback from the plugin's import."""
    (tmp_path / "test_x.py").write_text("def test_x():\n    assert True\n")
    run = textwrap.dedent("""\
        import sys
        class NoAsyncio:  # as if pytest-asyncio were not installed
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "pytest_asyncio":
                    raise ModuleNotFoundError("No module named 'pytest_asyncio'", name=name)
        sys.meta_path.insert(0, NoAsyncio())
        import pytest
        sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-p", "no:asyncio",
                             "--assert=plain"]))  # no rewrite hook ahead of NoAsyncio
        """)
    proc = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True,
                          cwd=tmp_path, timeout=TEST_TIMEOUT)
    assert proc.returncode == 4, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert ("ERROR: pblink's pytest plugin needs pytest-asyncio: pip install "
            "'pblink-mqtt[pytest]'") in proc.stderr
