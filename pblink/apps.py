"""Loading the user's applications for `pblink server --app` and `pblink run`.

A server application is an async callable ``app(server, conn_ids)`` (see
``server_apps.s_app.app``), named ``MODULE:CALLABLE`` or ``FILE.py:CALLABLE``.
A Pyboard application is an ``AppBase`` subclass, named ``FILE.py:CLASS`` or
``DIR/PACKAGE:CLASS`` / ``DIR/PACKAGE/MODULE.py:CLASS``; it runs under
MicroPython on the bench, so here it is only located, not imported.

When the user's code fails to import (a syntax error, a missing module, an
exception at import time) the traceback is what the user needs: `AppLoadError`
carries it, formatted, with the file and line.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pblink.common import CliError, UsageError
from server_apps.errors import LinkClosedError
from server_apps.lines import LineSource

if TYPE_CHECKING:  # server_apps loads paho; the CLI imports it only when it runs an app
    from server_apps.link_server import Connection


class AppLoadError(CliError):
    """The user's application could not be loaded; `.details` is its traceback."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def _split(spec: str, what: str) -> tuple[str, str | None]:
    target, sep, name = spec.rpartition(":")
    if not sep:
        return spec, None
    if not target or not name.isidentifier():
        raise UsageError(f"{what} {spec!r}: expected MODULE_OR_FILE:NAME")
    return target, name


def _is_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target


def _top_level(source: Path) -> tuple[dict[str, ast.stmt], bool] | None:
    """The statements binding each top-level name of `source` and whether it
    has a star import (which may bind anything); None when it does not parse
    (the import reports that, with the traceback)."""
    try:
        tree = ast.parse(source.read_bytes(), str(source))
    except (SyntaxError, ValueError, OSError):
        return None
    names: dict[str, ast.stmt] = {}
    star = False
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names[node.name] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    star = True
                else:
                    names[alias.asname or alias.name.split(".")[0]] = node
        else:  # assignments, and names bound inside if/try/with: anything may be there
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    names.setdefault(sub.id, node)
                elif isinstance(sub, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.setdefault(sub.name, sub)
    return names, star


SERVER_APP_SHAPE = ("the server app must be an async callable "
                    "(async def app(server, conn_ids))")


def check_server_source(spec: str, source: Path, name: str) -> None:
    """UsageError now, before anything starts, when `source` (the server app's
    file, not imported) plainly lacks `name` or defines it with a plain `def`."""
    found = _top_level(source)
    if found is None:
        return
    names, star = found
    node = names.get(name)
    if node is None and not star:
        raise UsageError(f"server app {spec!r}: {source} has no callable {name!r}")
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        raise UsageError(f"server app {spec!r}: {name} in {source} is not async: "
                         f"{SERVER_APP_SHAPE}")


def _module_source(spec: str, module: str) -> Path | None:
    """The file of `module`, found without running it; UsageError when there is none."""
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # like `python -m`
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a parent package missing or failing
        found = None
    except Exception:  # a parent package raising at import: its traceback comes later
        return None
    if found is None:
        raise UsageError(f"server app {spec!r}: no module named {module!r} (a MODULE on the "
                         "Python path, or a FILE.py)")
    origin = found.origin
    return Path(origin) if origin and origin.endswith(".py") else None


def check_server_app(app: Any, spec: str) -> None:
    """UsageError unless `app`, the imported callable, is an async callable."""
    call = getattr(app, "__call__", None)  # noqa: B004 - an object with an async __call__
    if not (inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(call)):
        raise UsageError(f"server app {spec!r}: {SERVER_APP_SHAPE}")


def resolve_server_spec(spec: str) -> str:
    """`spec` made independent of the current folder (a server app started
    elsewhere finds it): a file's path made absolute, the current folder put on
    PYTHONPATH for a module. UsageError when a named file is not there."""
    import os

    target, name = _split(spec, "--server-app")
    if _is_file(target):
        path = Path(target)
        if not path.is_file():
            raise UsageError(f"server app {spec!r}: no such file {target}")
        check_server_source(spec, path, name or "app")
        return f"{path.resolve()}:{name}" if name else str(path.resolve())
    source = _module_source(spec, target)
    if source is not None:
        check_server_source(spec, source, name or "app")
    paths = [str(Path.cwd()), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    return spec


def load_server_app(spec: str) -> Any:
    """The callable named by `spec` (default name: ``app``), imported in this process.

    UsageError for a spec that names nothing; AppLoadError (with the traceback)
    when the user's module fails to import or lacks the callable.
    """
    target, name = _split(spec, "--app")
    name = name or "app"
    if _is_file(target):
        if not Path(target).is_file():
            raise UsageError(f"server app {spec!r}: no such file {target}")
        source: Path | None = Path(target)
    else:
        source = _module_source(spec, target)
    if source is not None:
        check_server_source(spec, source, name)
    try:
        if _is_file(target):
            path = Path(target)
            if not path.is_file():
                raise UsageError(f"server app {spec!r}: no such file {target}")
            sys.path.insert(0, str(path.resolve().parent))  # its siblings import
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[path.stem] = module
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))  # like `python -m`
            module = importlib.import_module(target)
    except CliError:
        raise
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise AppLoadError(f"server app {spec!r} failed to import: "
                           f"{type(exc).__name__}: {exc}", format_user_traceback(exc)) from None
    app = getattr(module, name, None)
    if not callable(app):
        raise UsageError(f"server app {spec!r}: {target} has no callable {name!r}")
    check_server_app(app, spec)
    return app


def format_user_traceback(exc: BaseException) -> str:
    """The traceback of an exception from the user's code, without pblink's own frames."""
    tb = exc.__traceback__
    root = Path(__file__).resolve().parent.parent
    own = (str(root / "pblink"), str(root / "server_apps"), "<frozen importlib")
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(own):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


BOARD_APP_ERROR = "pblink: board app error:"  # the launcher's line when the app cannot run


@dataclass
class BoardApp:
    """Where a Pyboard application lives: the folder to put on MICROPYPATH, the
    module to import there and the AppBase subclass in it."""

    path: Path
    module: str
    cls: str

    @classmethod
    def locate(cls, spec: str) -> BoardApp:
        """From FILE.py:CLASS, PKGDIR:CLASS (its __init__) or PKGDIR/MOD.py:CLASS
        (default CLASS: App). UsageError when the file or folder is not there."""
        target, name = _split(spec, "--board-app")
        name = name or "App"
        path = Path(target).resolve()
        if path.is_dir():
            if not (path / "__init__.py").is_file():
                raise UsageError(f"board app {spec!r}: {target} is a folder without __init__.py")
            return cls(path.parent, path.name, name).checked(spec, path / "__init__.py")
        if path.suffix != ".py" or not path.is_file():
            raise UsageError(f"board app {spec!r}: no such file {target} (a .py file or a "
                             "package folder)")
        parts = [path.stem]
        folder = path.parent
        while (folder / "__init__.py").is_file():  # a module inside a package
            parts.insert(0, folder.name)
            folder = folder.parent
        return cls(folder, ".".join(parts), name).checked(spec, path)

    def checked(self, spec: str, source: Path) -> BoardApp:
        """This app, after a look (without running it) at `source`: UsageError when
        it plainly has no class `self.cls` or defines it without a base class, so
        it cannot be an AppBase subclass. (The launcher checks the rest on the board.)"""
        found = _top_level(source)
        if found is None:
            return self  # a syntax error: the bench reports it with its line
        names, star = found
        node = names.get(self.cls)
        if node is None and not star:
            raise UsageError(f"board app {spec!r}: {source} has no class {self.cls!r}")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or (
                isinstance(node, ast.ClassDef) and all(
                    isinstance(b, ast.Name) and b.id == "object" for b in node.bases)):
            raise UsageError(f"board app {spec!r}: {self.cls} in {source} is not an AppBase "
                             f"subclass (class {self.cls}(AppBase): ...)")
        return self

    def source(self) -> Path:
        """The file of the app's module (a package's __init__.py)."""
        base = self.path / Path(*self.module.split("."))
        return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")

    def launcher(self) -> str:
        """The MicroPython module the bench's Pyboard imports: builds the app
        from pb_link.config, as a board's main.py would, and runs it forever."""
        return (
            "# Written by pblink run: starts the board app as a main.py would.\n"
            "import asyncio\n"
            "from pb_link import config\n"
            "from pb_link.app_base import AppBase\n"
            f"from {self.module} import {self.cls} as _App\n\n"
            "if not (isinstance(_App, type) and issubclass(_App, AppBase)):\n"
            f"    print({BOARD_APP_ERROR!r}, {self.cls!r}, 'in', {str(self.source())!r},\n"
            "          'is not an AppBase subclass (class %s(AppBase): ...)' % "
            f"{self.cls!r})\n"
            "    raise SystemExit(2)\n\n"
            "async def _main():\n"
            "    _App(config.conn_id, config.config, config.hardware, config.verbose)\n"
            "    await asyncio.Event().wait()\n\n\n"
            "asyncio.run(_main())\n")


APP_LINES = "server app lines:"  # the log line `pblink run`'s verdict reads counts from


class CountingConnection(LineSource):
    """A Connection that tells `on_line(conn_id, "read"|"written", line)` what
    the app read (readline, ``async for``) and wrote; else the same."""

    _end_of_lines = (LinkClosedError,)

    def __init__(self, conn: Connection, on_line: Callable[[str, str, str], None]) -> None:
        self._conn = conn
        self._on_line = on_line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def readline(self) -> str:
        line = await self._conn.readline()
        self._on_line(self._conn.conn_id, "read", line.rstrip("\n"))
        return line

    async def write(self, line: str | bytes, qos: bool = True, wait: bool = True) -> None:
        await self._conn.write(line, qos, wait)
        text = line.decode() if isinstance(line, bytes) else line
        self._on_line(self._conn.conn_id, "written", text.rstrip("\n"))


class CountingServer:
    """The LinkServer a server app gets: its connections report each line to
    `on_line` (see CountingConnection); else the same."""

    def __init__(self, server: Any, on_line: Any) -> None:
        self._server = server
        self._on_line = on_line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)

    async def connection(self, conn_id: str) -> CountingConnection:
        return CountingConnection(await self._server.connection(conn_id), self._on_line)


def counted(application: Any, every_s: float = 2.0) -> Any:
    """`application` run on a CountingServer that logs (INFO) per conn_id the
    lines the app read and wrote: ``server app lines: <conn_id> read N written M``,
    at once for a conn_id's first line, then at most every `every_s` seconds."""
    import asyncio
    import logging

    log = logging.getLogger("pblink.app")

    async def run(server: Any, conn_ids: Any) -> None:
        counts: dict[str, list[int]] = {}
        dirty: set[str] = set()

        def report(conn_id: str) -> None:
            read, written = counts[conn_id]
            log.info("%s %s read %d written %d", APP_LINES, conn_id, read, written)

        def on_line(conn_id: str, direction: str, _line: str) -> None:
            count = counts.setdefault(conn_id, [0, 0])
            index = 0 if direction == "read" else 1
            count[index] += 1
            if count[index] == 1:
                report(conn_id)
            else:
                dirty.add(conn_id)

        async def reporter() -> None:
            while True:
                await asyncio.sleep(every_s)
                for conn_id in sorted(dirty):
                    report(conn_id)
                dirty.clear()

        task = asyncio.create_task(reporter())
        try:
            await application(CountingServer(server, on_line), conn_ids)
        finally:
            task.cancel()
            for conn_id in sorted(dirty):
                report(conn_id)

    return run
