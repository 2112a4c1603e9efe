"""The pytest plugin is registered through the package's pytest11 entry point,
so a user's pytest finds its fixtures without any conftest."""

from __future__ import annotations

import asyncio
import inspect
import re
import shutil
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, TEST_TIMEOUT

from pblink.testing import TEST_SETTINGS, AppBench


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


# -- every argument checked at the call (review finding 4) ---------------------------

SENSOR = ROOT / "examples" / "sensor"


def sensor_bench(**options: Any) -> AppBench:
    """An AppBench of the sensor example, not started (the checks need no bench)."""
    return AppBench("sensor_app.py:Sensor", "sensor_server.py:app", base=SENSOR, **options)


def conn_id_methods() -> list[str]:
    """Every public AppBench method that takes a conn_id: the whole kind, found, not listed."""
    return sorted(name for name, fn in vars(AppBench).items()
                  if not name.startswith("_") and callable(fn)
                  and "conn_id" in inspect.signature(fn).parameters)


def call(bench: AppBench, name: str, conn_id: Any) -> Any:
    fn = getattr(bench, name)
    params = inspect.signature(fn).parameters
    args = ["x"] if "pattern" in params else []
    result = fn(*args, conn_id=conn_id)
    if inspect.iscoroutine(result):
        return asyncio.run(result)
    return result


def test_every_conn_id_method_is_found() -> None:
    found = conn_id_methods()
    for name in ("cut_wifi", "crash_esp", "hang_esp", "corrupt_i2c", "device",
                 "server_received", "server_sent", "board_received", "board_sent",
                 "board_output", "link_downs", "esp_boots", "wait_server_received",
                 "wait_board_received", "wait_board_output"):
        assert name in found


@pytest.mark.parametrize("name", conn_id_methods())
def test_a_conn_id_of_the_wrong_type_or_no_device_is_named(name: str) -> None:
    bench = sensor_bench(devices=2)
    with pytest.raises(TypeError, match=r"^conn_id=1: conn_ids are str \(conn_id='1'\)"):
        call(bench, name, 1)
    with pytest.raises(ValueError, match=r"^conn_id='7': no such device on this bench "
                       r"\(its devices: '1', '2'\)$"):
        call(bench, name, "7")


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"devices": 0}, ValueError, "devices=0: must be 1 to 9"),
    ({"devices": -1}, ValueError, "devices=-1: must be 1 to 9"),
    ({"devices": 10}, ValueError, "devices=10: must be 1 to 9"),
    ({"devices": "2"}, TypeError, "devices='2': an int, not a str"),
    ({"devices": True}, TypeError, "devices=True: an int"),
    ({"timeout": -5}, ValueError, "timeout=-5: must be a finite number of seconds above 0"),
    ({"timeout": 0}, ValueError, "timeout=0: must be"),
    ({"timeout": float("nan")}, ValueError, "timeout=nan: must be"),
    ({"timeout": "5"}, TypeError, "timeout='5': a number of seconds, not a str"),
    ({"settings": {"timout_ms": 500}}, ValueError,
     "settings: pb_link reads no setting 'timout_ms' (link_core/schema.py); did you mean "
     "timeout_ms? an application's own names go in app_settings"),
    ({"settings": {"timeout_ms": 10}}, ValueError, "settings: timeout_ms 10 is not an int"),
    ({"settings": {"bridge_tuning": {"keepalive_msx": 5}}}, ValueError, "settings: "),
    ({"settings": {"conn_id": "9"}}, ValueError, "settings: conn_id is set by the bench"),
    ({"settings": [("timeout_ms", 500)]}, TypeError, "settings=[('timeout_ms', 500)]: a dict"),
    ({"app_settings": {"timeout_ms": 500}}, ValueError,
     "app_settings: timeout_ms is a pb_link setting: pass it in settings"),
    ({"app_settings": {"my knob": 1}}, ValueError, "app_settings: 'my knob' is not a Python"),
    ({"app_settings": {"knob": object}}, ValueError, "app_settings: knob=<class 'object'> is"),
])
def test_bad_bench_options_are_one_line_errors(options: dict[str, Any], error: type,
                                               message: str) -> None:
    with pytest.raises(error) as info:
        sensor_bench(**options)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_good_settings_reach_pb_settings() -> None:
    bench = sensor_bench(devices=9, timeout=2, settings={"timeout_ms": 500,
                         "bridge_tuning": {"mqtt_retries": 2}}, app_settings={"my_knob": 3})
    assert bench.conn_ids == [str(i) for i in range(1, 10)]
    assert bench.timeout == 2.0
    assert bench.settings["timeout_ms"] == 500 and bench.settings["my_knob"] == 3
    # bridge_tuning keys merge over TEST_SETTINGS's: the short test timings stay
    assert bench.settings["bridge_tuning"]["mqtt_retries"] == 2
    assert bench.settings["bridge_tuning"]["keepalive_ms"] == \
        TEST_SETTINGS["bridge_tuning"]["keepalive_ms"]


@pytest.mark.parametrize(("method", "kwargs", "error", "message"), [
    ("wait_server_received", {"pattern": "x", "timeout": -5}, ValueError, "timeout=-5: must"),
    ("wait_board_output", {"pattern": "x", "timeout": 0}, ValueError, "timeout=0: must"),
    ("wait_board_received", {"pattern": "(", "timeout": 1}, ValueError,
     "pattern='(': not a regular expression"),
    ("wait_server_received", {"pattern": 5}, TypeError, "pattern=5: a regular expression"),
    ("wait_for", {"condition": lambda: True, "timeout": -1}, ValueError, "timeout=-1: must"),
    ("wait_for", {"condition": "x"}, TypeError, "condition='x': a callable"),
    ("cut_wifi", {"seconds": -1.0}, ValueError, "seconds=-1.0: must"),
    ("corrupt_i2c", {"count": -1}, ValueError, "count=-1: must be 0 or more"),
    ("corrupt_i2c", {"probability": 2}, ValueError, "probability=2: must be 0 to 1"),
    ("corrupt_i2c", {"seconds": 0}, ValueError, "seconds=0: must"),
    ("restart_broker", {"down_s": -2}, ValueError, "down_s=-2: must be a finite number of "
     "seconds >= 0"),
    ("restart_server_app", {"down_s": -1}, ValueError, "down_s=-1: must"),
    ("restart_server_app", {"crash": "yes"}, TypeError, "crash='yes': a bool"),
])
def test_bad_call_arguments_are_one_line_errors(method: str, kwargs: dict[str, Any],
                                                error: type, message: str) -> None:
    result = getattr(sensor_bench(), method)(**kwargs)
    with pytest.raises(error) as info:
        asyncio.run(result) if inspect.iscoroutine(result) else None
    assert str(info.value).startswith(message), str(info.value)


def run_user_pytest(folder: Path, *args: str, timeout: float = TEST_TIMEOUT * 2,
                    ) -> subprocess.CompletedProcess[str]:
    """pytest in a user's folder: no conftest or configuration of this project's."""
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *args], cwd=folder, capture_output=True, text=True, timeout=timeout)


def test_bad_marker_arguments_fail_the_test_before_a_bench_starts(tmp_path: Path) -> None:
    (tmp_path / "test_mine.py").write_text(textwrap.dedent("""
        import pytest

        APPS = dict(board_app="board.py:App", server_app="server.py:app")

        @pytest.mark.pblink(devices=0, **APPS)
        async def test_no_devices(pblink_bench):
            pass

        @pytest.mark.pblink(devices=-1, **APPS)
        async def test_negative_devices(pblink_bench):
            pass

        @pytest.mark.pblink(timeout=-5, **APPS)
        async def test_negative_timeout(pblink_bench):
            pass

        @pytest.mark.pblink(settings={"timout_ms": 500}, **APPS)
        async def test_typo(pblink_bench):
            pass

        @pytest.mark.pblink(devics=2, **APPS)
        async def test_unknown_argument(pblink_bench):
            pass

        @pytest.mark.pblink(board_app="board.py:App", server_app=5)
        async def test_server_app_type(pblink_bench):
            pass

        @pytest.mark.pblink(board_app="nofile.py:App", server_app="server.py:app")
        async def test_no_board_file(pblink_bench):
            pass

        @pytest.mark.pblink(board_app="board.py:App", server_app="broken.py:app")
        async def test_server_app_fails_to_import(pblink_bench):
            pass
    """))
    (tmp_path / "broken.py").write_text("import no_such_module_here\n\n\n"
                                        "async def app(server, conn_ids):\n    pass\n")
    (tmp_path / "board.py").write_text("from pb_link import AppBase\n\n\n"
                                       "class App(AppBase):\n    pass\n")
    proc = run_user_pytest(tmp_path)
    out = proc.stdout
    assert proc.returncode == 1, out[-3000:]
    assert "8 errors" in out.splitlines()[-1], out[-3000:]
    assert re.search(r"@pytest.mark.pblink: board app '\S*nofile.py:App': no such file", out), \
        out[-3000:]
    assert "During handling" not in out, out[-3000:]
    assert re.search(r"@pytest.mark.pblink: server app '\S*broken.py:app' failed to import", out), \
        out[-3000:]
    assert "No module named 'no_such_module_here'" in out, out[-3000:]
    for line in ("@pytest.mark.pblink: devices=0: must be 1 to 9",
                 "@pytest.mark.pblink: devices=-1: must be 1 to 9",
                 "@pytest.mark.pblink: timeout=-5: must be a finite number of seconds above 0",
                 "@pytest.mark.pblink: settings: pb_link reads no setting 'timout_ms'",
                 "@pytest.mark.pblink: no argument devics (it takes board_app, server_app, ",
                 "@pytest.mark.pblink: server_app=5: MODULE:CALLABLE, FILE.py:CALLABLE or an "
                 "async callable, not an int"):
        assert line in out, (line, out[-3000:])
    # the broken app's own traceback (once in the error, once more in the summary
    # where pytest does not cut it, as under CI=true), and no frame of pblink's
    assert out.count("Traceback") == out.count('broken.py", line 1, in <module>') >= 1, \
        out[-3000:]
    assert not re.search(r'File "[^"]*/pblink/', out), out[-3000:]


@pytest.mark.parametrize(("args", "message"), [
    (["--pblink-timeout", "-3"], "argument --pblink-timeout: -3 is out of range: must be "
     "above 0"),
    (["--pblink-timeout", "abc"], "argument --pblink-timeout: 'abc' is not a number"),
    (["-o", "pblink_timeout=abc"], "ERROR: ini option pblink_timeout = abc: 'abc' is not a "
     "number"),
    (["-o", "pblink_timeout=0"], "ERROR: ini option pblink_timeout = 0: 0 is out of range"),
])
def test_a_bad_timeout_option_is_a_usage_error_naming_it(tmp_path: Path, args: list[str],
                                                          message: str) -> None:
    (tmp_path / "test_x.py").write_text("def test_x():\n    assert True\n")
    proc = run_user_pytest(tmp_path, *args)
    assert proc.returncode == 4, (proc.stdout, proc.stderr)
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# -- the README's snippet in a folder of the user's (review finding 5) ----------------


def readme_block(after: str, lang: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(re.escape(after) + r".*?```" + lang + r"\n(.*?)```", text, re.S)
    assert match, f"no {lang} block after {after!r} in README.md"
    return match.group(1)


def test_the_readme_snippet_runs_in_a_users_folder(tmp_path: Path) -> None:
    """Copied as the README says: no asyncio_mode (pytest-asyncio's strict default),
    and with its one line of pytest.ini no PytestDeprecationWarning."""
    for name in ("sensor_app.py", "sensor_server.py"):
        shutil.copy(SENSOR / name, tmp_path / name)
    (tmp_path / "test_sensor.py").write_text(
        readme_block("The pytest plugin (installed with the package)", "python"))
    (tmp_path / "pytest.ini").write_text(readme_block("Copied into a folder", "ini"))
    proc = run_user_pytest(tmp_path, "-W", "error::pytest.PytestDeprecationWarning",
                           timeout=TEST_TIMEOUT * 6)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "1 passed" in proc.stdout.splitlines()[-1], out[-3000:]
    assert "asyncio_default_fixture_loop_scope" not in out


def test_only_the_plugins_coroutine_tests_are_marked_asyncio(tmp_path: Path) -> None:
    """Strict mode, no configuration: the plugin marks the coroutine tests that carry its
    marker (on the function, the class, the module) or ask for its fixtures, and no others."""
    (tmp_path / "test_mine.py").write_text(textwrap.dedent("""
        import pytest

        async def test_fixture(pblink_start):
            assert callable(pblink_start)

        @pytest.mark.pblink(board_app="b.py:App", server_app="s.py:app")
        async def test_marker():
            pass

        @pytest.mark.pblink(board_app="b.py:App", server_app="s.py:app")
        class TestClass:
            async def test_in_class(self):
                pass

        async def test_plain():
            pass

        @pytest.mark.asyncio(loop_scope="class")
        @pytest.mark.pblink(board_app="b.py:App", server_app="s.py:app")
        class TestOwnLoopScope:
            loops = []

            async def test_one(self):
                self.loops.append(asyncio.get_running_loop())

            async def test_two(self):
                assert self.loops == [asyncio.get_running_loop()]  # the class's loop, kept
    """).replace("import pytest", "import asyncio\nimport pytest"))
    proc = run_user_pytest(tmp_path, "-rA")
    out = proc.stdout
    for name in ("test_fixture", "test_marker", "TestClass::test_in_class",
                 "TestOwnLoopScope::test_one", "TestOwnLoopScope::test_two"):
        assert f"PASSED test_mine.py::{name}" in out, out[-3000:]
    # an async test of the user's own is left to pytest-asyncio's rules (strict: unmarked)
    assert "PASSED test_mine.py::test_plain" not in out, out[-3000:]
