"""The docs: their examples run as printed, the API reference builds, and the
project's files point only at files of the repository: never at the developers'
shared/ folder, which users do not have. (`shared/runtime/...` of the
MicroPython source tree is named as such.)"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, amqtt_process

SHARED = re.compile(r"(?<![\w/.-])(\.\./)?shared/(?!runtime/)")


# The one exception: the 32-bit heap gate's tool locator (DEVELOPERS' rule: a test
# gate may use a tool from shared/, skipped with a visible reason where it is absent).
GATE_TOOL = "virtual_bench/micropython32.py"


def test_no_file_points_into_shared() -> None:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    offenders = []
    for name in files:
        if not name.endswith((".md", ".py", ".toml", ".yml", ".txt", ".cfg")) or \
                name == "tests/test_docs.py":
            continue
        for number, line in enumerate((ROOT / name).read_text(errors="replace").splitlines(), 1):
            if SHARED.search(line) or (name != GATE_TOOL and '"shared"' in line):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def doc_block(doc: str, after: str) -> str:
    """The first ```python block that follows the line starting with `after` in docs/<doc>."""
    text = (ROOT / "docs" / doc).read_text()
    match = re.search(r"```python\n(.*?)```", text[text.index(after):], re.S)
    assert match, f"no python block after {after!r} in docs/{doc}"
    return match.group(1)


def run_snippet(code: str, port: int, cwd: Path) -> tuple[int | None, str, str]:
    """`code` with its broker at localhost:1883 moved to the test's broker: the
    exit status (None: still serving after 5 s, then stopped), stdout, stderr."""
    code = code.replace('"localhost", 1883', f'"127.0.0.1", {port}')
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=5)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return None, out, err


def test_api_guide_examples_run_as_printed(tmp_path: Path) -> None:
    """Every python block of docs/api/ is a whole program: it compiles, and each
    that talks to localhost:1883 runs against a real broker without an error
    (one that serves for ever is stopped after 5 s)."""
    broker = amqtt_process(tmp_path)
    broker.start()
    try:
        ran = 0
        for doc in ("guide.md", "index.md"):
            text = (ROOT / "docs" / "api" / doc).read_text()
            for number, code in enumerate(re.findall(r"```python\n(.*?)```", text, re.S)):
                compile(code, f"docs/api/{doc} block {number + 1}", "exec")
                if '"localhost", 1883' not in code:
                    continue
                status, out, err = run_snippet(code, broker.port, tmp_path)
                where = f"docs/api/{doc} block {number + 1}"
                assert status in (0, None) and "Traceback" not in err, (where, err[-2000:])
                if status == 0 and "connected:" in code:
                    assert "connected: True" in out, (where, out, err[-2000:])
                ran += 1
    finally:
        broker.stop()
    assert ran >= 4


@pytest.mark.slow
def test_bench_md_harness_example_runs_as_printed() -> None:
    code = doc_block("BENCH.md", "The harness underneath")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cuts, _, last = proc.stdout.strip().partition(" ")
    assert cuts == "1" and last.startswith("["), proc.stdout


def test_api_reference_builds_without_warnings(tmp_path: Path) -> None:
    """mkdocs + mkdocstrings from the docstrings, warnings as errors, offline."""
    mkdocs = Path(sys.executable).parent / "mkdocs"
    proc = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    page = (tmp_path / "site" / "reference" / "link_server" / "index.html").read_text()
    for name in ("connect_timeout", "state_path", "connection", "BrokerUnreachableError"):
        assert name in page, name
    guide = (tmp_path / "site" / "guide" / "index.html").read_text()
    for section in ("Connect", "Serve several conn_ids", "qos and wait", "Outages",
                    "The state file", "TLS and credentials", "Splitting conn_ids over processes"):
        assert section in guide, section


def _public(cls: type) -> list[str]:
    return [name for name, value in vars(cls).items()
            if not name.startswith("_") and (callable(value) or isinstance(value, property))]


def test_every_public_name_of_the_server_library_is_documented() -> None:
    """What the reference shows: every public class, method, property and
    exception has a docstring, and every argument of LinkServer, write() and
    connection() is described with its default."""
    import server_apps
    from server_apps import Connection, LinkServer, s_app

    missing = []
    for name in server_apps.__all__:
        obj = getattr(server_apps, name)
        if isinstance(obj, type):
            if not (obj.__doc__ or "").strip():
                missing.append(name)
            missing += [f"{name}.{m}" for m in _public(obj)
                        if not (inspect.getdoc(getattr(obj, m)) or "").strip()]
    for func in (s_app.app, s_app.serve, s_app.reply_for, s_app.AppError):
        if not (func.__doc__ or "").strip():
            missing.append(f"s_app.{func.__name__}")
    assert not missing, missing
    for func, doc in ((LinkServer.__init__, LinkServer.__doc__),
                      (Connection.write, Connection.write.__doc__)):
        for param in list(inspect.signature(func).parameters)[1:]:
            assert f"        {param}: " in (doc or ""), f"{func.__qualname__}: {param}"


def test_reference_shows_the_values_of_named_defaults() -> None:
    """A default given as a constant's name is shown with its value too."""
    from server_apps import s_app

    doc = (inspect.getdoc(s_app.serve) or "") + (inspect.getdoc(s_app.app) or "")
    assert repr(s_app.DEFAULT_IDS).replace("'", '"') in doc
    assert repr(s_app.DEFAULT_STATE_DIR).replace("'", '"') in doc
    assert f"({s_app.STOP_GRACE_S})" in doc


@pytest.mark.parametrize("port", [0, 65536, "1883", True])
def test_bad_port_is_the_documented_error(port: object) -> None:
    from server_apps import LinkServer

    with pytest.raises(ValueError, match=f"^port {re.escape(repr(port))} is not an int from 1 to "
                                         "65535$"):  # the devices' rule, link_core/schema.py
        LinkServer("localhost", port)  # type: ignore[arg-type]
    assert "``port`` outside 1 to 65535" in " ".join((LinkServer.__doc__ or "").split())


def fenced_block(doc: str, lang: str, after: str) -> str:
    """The first ```<lang> block that follows the line starting with `after` in docs/<doc>."""
    text = (ROOT / "docs" / doc).read_text()
    match = re.search(rf"```{lang}\n(.*?)```", text[text.index(after):], re.S)
    assert match, f"no {lang} block after {after!r} in docs/{doc}"
    return match.group(1)


def check_server_argv(argv: list[str]) -> None:
    """A documented `pblink server ...` command line parses with the CLI's own parser."""
    from pblink.cli import build_parser

    assert argv[:2] == ["pblink", "server"], argv
    args = build_parser().parse_args(argv[1:])
    assert args.state_db and args.client_id and args.ids, argv


def test_server_md_systemd_unit_is_valid(tmp_path: Path) -> None:
    """SERVER.md's supervisor example: systemd accepts the unit (Restart=always), and
    its ExecStart is a valid `pblink server` command line."""
    import shlex
    import shutil

    unit = fenced_block("SERVER.md", "ini", "### Running under a supervisor")
    assert "\nRestart=always\n" in unit
    exec_start = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[0].endswith("/bin/pblink")
    check_server_argv(["pblink", *argv[1:]])
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    # the program path must exist for `verify`: this venv's pblink (or any executable)
    real = Path(sys.executable).parent / "pblink"
    path = tmp_path / "pblink-server-a.service"
    path.write_text(unit.replace(argv[0], str(real if real.exists() else "/bin/true"))
                    .replace("User=pblink\n", ""))  # no such user on a test machine
    proc = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_server_md_compose_service_is_valid(tmp_path: Path) -> None:
    """SERVER.md's Docker Compose example: `restart: unless-stopped`, a valid `pblink
    server` command, and `docker-compose config` accepts it beside the project's file."""
    import shutil

    yaml = pytest.importorskip("yaml")  # PyYAML: not a dependency of the project

    text = fenced_block("SERVER.md", "yaml", "### Running under a supervisor")
    doc = yaml.safe_load(text)
    service = doc["services"]["server-a"]
    assert service["restart"] == "unless-stopped"
    check_server_argv(service["command"])
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose not installed")
    (tmp_path / "pgpass").write_text("db:5432:pblink:pblink:secret\n")
    (tmp_path / "server.yml").write_text(text)
    proc = subprocess.run([compose, "-f", str(ROOT / "docker-compose.yml"), "-f",
                           str(tmp_path / "server.yml"), "config"], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "server-a" in proc.stdout and "broker" in proc.stdout
