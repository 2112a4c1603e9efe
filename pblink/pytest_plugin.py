"""pytest plugin: test your pblink-mqtt apps on the virtual bench, under faults.

Registered through the ``pytest11`` entry point of the pblink-mqtt package,
so installing the package is enough. Needs pytest-asyncio (the fixtures are
async): without it every pytest run in that environment stops with one line,
``ERROR: pblink's pytest plugin needs pytest-asyncio: pip install
'pblink-mqtt[pytest]'`` (exit 4, pytest's usage error). Fixtures:

``pblink_bench``
    An `pblink.testing.AppBench`, started, with the apps named by the test's
    ``@pytest.mark.pblink(board_app=..., server_app=..., devices=1,
    settings=None, app_settings=None, timeout=None)`` marker, else the ``pblink_board_app`` /
    ``pblink_server_app`` ini options. Relative paths are taken from the test
    file's folder. Stopped after the test; the test fails if an app raised.

``pblink_start``
    A factory for more than one bench or apps chosen in the test:
    ``bench = await pblink_start(board_app, server_app, devices=..., settings=...)``
    (the same arguments as AppBench). Each is stopped and checked after the test.

Timeouts: every ``wait_*`` waits ``timeout`` seconds: the marker's, else
``--pblink-timeout``, else the ``pblink_timeout`` ini option (default 30).

Async tests: a coroutine test that carries the ``pblink`` marker (on it, its
class or module) or asks for ``pblink_bench`` / ``pblink_start`` is marked
``@pytest.mark.asyncio`` at collection, so it runs in pytest-asyncio's default
(strict) mode without ``asyncio_mode = "auto"``.

Bad arguments are one line each: the marker's (``@pytest.mark.pblink: ...``, the
checks of `pblink.testing.AppBench`), ``--pblink-timeout`` and the
``pblink_timeout`` ini option (pytest's usage error, exit 4).
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

try:
    import pytest_asyncio
except ImportError:  # one clear line (pytest prints "ERROR: ..." and exits 4), not a traceback
    raise pytest.UsageError(
        "pblink's pytest plugin needs pytest-asyncio: pip install 'pblink-mqtt[pytest]'"
    ) from None

if TYPE_CHECKING:  # imported by the fixtures: a test run that uses none stays light
    from pblink.testing import AppBench

DEFAULT_TIMEOUT = 30.0
MARKER_ARGS = ("board_app", "server_app", "devices", "settings", "app_settings", "timeout")
FIXTURES = ("pblink_bench", "pblink_start")


def _seconds(text: str) -> float:
    """The type of --pblink-timeout and pblink_timeout: a finite number > 0 (the
    `pblink` commands' own argument type for seconds)."""
    from pblink.common import SECONDS

    return float(SECONDS(text))


_seconds.__name__ = "float"  # argparse names the type in its messages


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pblink", "pblink-mqtt virtual bench")
    group.addoption("--pblink-timeout", type=_seconds, default=None, metavar="S",
                    help="seconds each pblink_bench wait_* call waits (default: the "
                    "pblink_timeout ini option, else 30)")
    parser.addini("pblink_timeout", f"seconds each wait_* waits (default {DEFAULT_TIMEOUT:g})",
                  default=str(DEFAULT_TIMEOUT))
    parser.addini("pblink_board_app", "default Pyboard app of pblink_bench (FILE.py:CLASS)",
                  default="")
    parser.addini("pblink_server_app", "default server app of pblink_bench (MODULE:CALLABLE)",
                  default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "pblink(board_app=None, server_app=None, devices=1, settings=None, "
        "app_settings=None, timeout=None): the apps and options of the pblink_bench fixture")
    _timeout(config)  # a bad pblink_timeout ini value stops the run before collection


def _timeout(config: pytest.Config) -> float:
    option = config.getoption("pblink_timeout")
    if option is not None:
        return float(option)
    raw = config.getini("pblink_timeout")
    try:
        return _seconds(str(raw))
    except argparse.ArgumentTypeError as exc:
        raise pytest.UsageError(f"ini option pblink_timeout = {raw}: {exc} (seconds each "
                                "pblink wait_* waits)") from None


def _wants_asyncio(collector: pytest.Module | pytest.Class, obj: object) -> bool:
    """A coroutine test of this plugin's: it has the pblink marker or asks for its fixtures."""
    if not inspect.iscoroutinefunction(obj):
        return False
    marks = getattr(obj, "pytestmark", [])
    if any(getattr(m, "name", None) == "asyncio" for m in marks) or \
            collector.get_closest_marker("asyncio") is not None:
        return False  # the user's own asyncio mark (its loop_scope) stays the closest
    if any(getattr(m, "name", None) == "pblink" for m in marks):
        return True
    if collector.get_closest_marker("pblink") is not None:
        return True
    try:
        return any(name in FIXTURES for name in inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return False


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(collector: pytest.Module | pytest.Class, name: str,
                              obj: object) -> Generator[None, Any, Any]:
    """Mark the plugin's coroutine tests asyncio before pytest-asyncio looks at them:
    they run in its strict (default) mode too, with no configuration."""
    if collector.istestfunction(obj, name) and _wants_asyncio(collector, obj):
        pytest.mark.asyncio(obj)
    return (yield)


@pytest_asyncio.fixture
async def pblink_start(request: pytest.FixtureRequest, tmp_path: Path,
                       ) -> AsyncIterator[Callable[..., Awaitable[AppBench]]]:
    started: list[AppBench] = []
    base = request.path.parent

    from pblink.testing import AppBench

    async def start(board_app: str, server_app: Any, **options: Any) -> AppBench:
        options.setdefault("timeout", _timeout(request.config))
        options.setdefault("workdir", tmp_path / f"bench{len(started) + 1}")
        options.setdefault("base", base)
        bench = AppBench(board_app, server_app, **options)
        started.append(bench)
        await bench.start()
        return bench

    yield start
    for bench in reversed(started):
        await bench.stop()
    for bench in started:
        bench.check(new_only=True)


@pytest_asyncio.fixture
async def pblink_bench(request: pytest.FixtureRequest,
                       pblink_start: Callable[..., Awaitable[AppBench]]) -> AppBench:
    marker = request.node.get_closest_marker("pblink")
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    if marker is not None and marker.args:
        pytest.fail(f"@pytest.mark.pblink: takes keyword arguments only "
                    f"({', '.join(MARKER_ARGS)}), not {marker.args!r}", pytrace=False)
    unknown = sorted(set(options) - set(MARKER_ARGS))
    if unknown:
        pytest.fail(f"@pytest.mark.pblink: no argument {', '.join(unknown)} (it takes "
                    f"{', '.join(MARKER_ARGS)})", pytrace=False)
    board_app = options.pop("board_app", None) or request.config.getini("pblink_board_app")
    server_app = options.pop("server_app", None) or request.config.getini("pblink_server_app")
    if not board_app or not server_app:
        pytest.fail("pblink_bench: name the apps with @pytest.mark.pblink(board_app=..., "
                    "server_app=...) or the pblink_board_app/pblink_server_app ini options",
                    pytrace=False)
    if options.get("timeout") is None:
        options.pop("timeout", None)
    from pblink.apps import AppLoadError
    from pblink.common import UsageError
    from pblink.testing import check_arguments

    # pytest.fail outside the except blocks: the error is the one line, with no
    # "During handling of the above exception" repeating it
    failure = ""
    try:  # the marker's values, named as the marker's, before anything starts
        check_arguments(board_app, server_app, **options)
    except (TypeError, ValueError) as exc:
        failure = str(exc)
    if failure:
        pytest.fail(f"@pytest.mark.pblink: {failure}", pytrace=False)
    try:  # only the apps' own errors are the marker's: anything else keeps its traceback
        return await pblink_start(board_app, server_app, **options)
    except AppLoadError as exc:  # the user's app failed to import: its traceback, not ours
        failure = f"{exc}\n{exc.details}"
    except UsageError as exc:  # an app that names nothing (no such file, no such class)
        failure = str(exc)
    pytest.fail(f"@pytest.mark.pblink: {failure}", pytrace=False)
