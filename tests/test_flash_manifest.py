"""esp_bridge/manifest.py freezes every module the bridge imports.

The manifest runs here with stand-ins for MicroPython's manifest functions
(`include`, `module`, `package`, `require`, `freeze`, `metadata`, `options`)
that record what it freezes. The imports of esp_bridge/*.py and link_core/*.py
are walked with `ast` (from the modules `main.py` reaches, through the project's
own modules); each must be frozen by the manifest, be built into the ESP8266
port's firmware, or come from a manifest the bridge's manifest includes.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ROOT

BRIDGE = ROOT / "esp_bridge"
MANIFEST = BRIDGE / "manifest.py"
STUBS = ROOT / ".venv" / "stubs" / "esp8266"

# C modules of the ESP8266 port (MicroPython 1.2x, ESP8266_GENERIC), each checked
# against micropython-esp8266-stubs below when those are installed.
ESP8266_BUILTIN = {
    "array", "binascii", "builtins", "collections", "deflate", "errno", "esp", "espnow",
    "framebuf", "gc", "hashlib", "heapq", "io", "json", "lwip", "machine", "math",
    "micropython", "network", "os", "random", "re", "select", "socket", "struct", "sys", "time",
    "tls", "uctypes", "vfs",
}
# Python modules that come with manifests the bridge's manifest may include.
INCLUDED = {
    "$(MPY_DIR)/extmod/asyncio": {"asyncio", "asyncio.core", "asyncio.event", "asyncio.funcs",
                                  "asyncio.lock", "asyncio.stream"},
    "$(PORT_DIR)/boards/manifest.py": {"_boot", "flashbdev", "inisetup", "ssl"},
}


@dataclass
class Frozen:
    modules: set[str] = field(default_factory=set)
    files: list[Path] = field(default_factory=list)
    includes: list[str] = field(default_factory=list)
    requires: list[str] = field(default_factory=list)


def run_manifest(path: Path) -> Frozen:
    frozen = Frozen()
    here = path.parent

    def resolve(base_path: str, rel: str) -> Path:
        assert "$(" not in base_path, f"unexpected variable in base_path {base_path!r}"
        return (here / base_path / rel).resolve()

    def include(manifest_path: str, **_kwargs: object) -> None:
        frozen.includes.append(manifest_path.rstrip("/"))

    def module(module_path: str, base_path: str = ".", opt: int | None = None) -> None:
        file = resolve(base_path, module_path)
        assert file.is_file(), f"manifest module {module_path} (base {base_path}): no {file}"
        frozen.files.append(file)
        frozen.modules.add(Path(module_path).with_suffix("").as_posix().replace("/", "."))

    def package(package_path: str, files: list[str] | None = None, base_path: str = ".",
                opt: int | None = None) -> None:
        top = resolve(base_path, package_path)
        assert top.is_dir(), f"manifest package {package_path} (base {base_path}): no {top}"
        chosen = [top / f for f in files] if files else sorted(top.rglob("*.py"))
        prefix = package_path.replace("/", ".")
        frozen.modules.add(prefix)
        for file in chosen:
            assert file.is_file(), f"manifest package {package_path}: no {file}"
            if "__pycache__" in file.parts:
                continue
            frozen.files.append(file)
            rel = file.relative_to(top).with_suffix("").as_posix().replace("/", ".")
            if rel != "__init__":
                frozen.modules.add(f"{prefix}.{rel.removesuffix('.__init__')}")

    def freeze(path: str, script: str | None = None, opt: int | None = None) -> None:
        top = resolve(".", path)
        for file in [top / script] if script else sorted(top.rglob("*.py")):
            frozen.files.append(file)
            frozen.modules.add(file.relative_to(top).with_suffix("").as_posix().replace("/", "."))

    def require(name: str, **_kwargs: object) -> None:
        frozen.requires.append(name)

    class Options:
        def __getattr__(self, _name: str) -> None:
            return None

    namespace = {"include": include, "module": module, "package": package, "freeze": freeze,
                 "require": require, "metadata": lambda **_k: None, "options": Options(),
                 "add_library": lambda *_a, **_k: None, "__file__": str(path)}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return frozen


def imports_of(path: Path) -> list[tuple[str, bool, int]]:
    """(module, optional, line) for each absolute import; optional = inside try/except
    ImportError."""
    tree = ast.parse(path.read_text(), str(path))
    optional_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                h.type is not None and "ImportError" in ast.unparse(h.type) for h in node.handlers):
            for inner in node.body:
                for sub in ast.walk(inner):
                    optional_lines.add(getattr(sub, "lineno", -1))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((alias.name, node.lineno in optional_lines, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import (not frozen-safe)"
            assert node.module is not None
            found.append((node.module, node.lineno in optional_lines, node.lineno))
            for alias in node.names:  # `from link_core import control`: a submodule
                found.append((f"{node.module}.{alias.name}", True, node.lineno))
    return found


def local_file(module: str) -> Path | None:
    """The project file that provides `module` on the ESP8266, if any."""
    parts = module.split(".")
    if parts[0] == "link_core":
        base = ROOT.joinpath(*parts)
    else:
        base = BRIDGE.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def frozen() -> Frozen:
    if not MANIFEST.exists():
        pytest.fail(f"{MANIFEST} is missing")
    return run_manifest(MANIFEST)


def test_builtin_list_matches_the_esp8266_stubs() -> None:
    if not STUBS.is_dir():
        pytest.skip("micropython-esp8266-stubs are not installed (python3 dev.py setup)")
    names = {p.stem for p in STUBS.glob("*.pyi")} | {p.name for p in STUBS.iterdir() if p.is_dir()}
    # the stdlib ones appear as their u-aliases (uos, ujson...) in the port's stubs
    missing = sorted(m for m in ESP8266_BUILTIN - names
                     if m != "builtins" and "u" + m not in names)
    assert missing == [], f"not modules of the ESP8266 port per its stubs: {missing}"


def test_manifest_freezes_every_module_the_bridge_imports(frozen: Frozen) -> None:
    unknown_includes = [i for i in frozen.includes if i not in INCLUDED]
    assert unknown_includes == [], f"this test does not know what these provide: {unknown_includes}"
    provided = set(ESP8266_BUILTIN)
    for inc in frozen.includes:
        provided |= INCLUDED[inc]
    problems = []
    # every module reachable from main.py, plus every file of esp_bridge and link_core
    queue = [BRIDGE / "main.py", *sorted(BRIDGE.glob("*.py")), *sorted((ROOT / "link_core").glob(
        "*.py"))]
    seen: set[Path] = set()
    while queue:
        path = queue.pop()
        if path in seen or path == MANIFEST:
            continue
        seen.add(path)
        for module, optional, line in imports_of(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            local = local_file(module)
            if local is not None:
                queue.append(local)
                if module not in frozen.modules:
                    problems.append(f"{where}: imports {module}, which the manifest does not "
                                    "freeze")
            elif module in provided or module.split(".")[0] in provided & ESP8266_BUILTIN:
                continue
            elif not optional:
                problems.append(f"{where}: imports {module}: not frozen, not in the ESP8266 "
                                "firmware, not from an included manifest")
    assert problems == [], "\n".join(problems)
    assert BRIDGE / "main.py" in seen


def test_manifest_freezes_what_main_needs_and_nothing_missing(frozen: Frozen) -> None:
    assert "main" in frozen.modules  # the bridge starts at boot
    assert "link_core" in frozen.modules
    for file in frozen.files:
        assert file.is_file()
        assert file.suffix == ".py"
    for path in sorted((ROOT / "link_core").glob("*.py")):
        name = "link_core" if path.stem == "__init__" else f"link_core.{path.stem}"
        assert name in frozen.modules, f"{path.relative_to(ROOT)} is not frozen"
    assert not frozen.requires or all(isinstance(r, str) for r in frozen.requires)


def test_stand_ins_catch_a_missing_module(tmp_path: Path) -> None:
    """The checker itself: a manifest naming a file that is not there fails."""
    manifest = tmp_path / "manifest.py"
    manifest.write_text('module("nope.py")\n')
    with pytest.raises(AssertionError, match=r"no .*nope\.py"):
        run_manifest(manifest)
    (tmp_path / "a.py").write_text("")
    up = os.path.relpath(ROOT, tmp_path)
    manifest.write_text(f'module("a.py")\npackage("link_core", base_path="{up}")\n')
    got = run_manifest(manifest)
    assert {"a", "link_core", "link_core.names"} <= got.modules
