"""Every `pblink` command with bad input of each kind: one line on stderr
naming the problem, and the exit code `pblink --help` promises
(2 bad arguments, 3 broker unreachable, 4 broker refused the connection)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TEST_TIMEOUT, BrokerProcess, amqtt_process, free_port

from broker.credentials import write_amqtt_users
from pblink import cli
from pblink.common import EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE

RUN_APPS = ["--board-app", "examples/sensor/sensor_app.py:Sensor",
            "--server-app", "examples/sensor/sensor_server.py:app"]
# Each command that connects to a broker, with what it needs besides.
CONNECTING = {
    "send": ["send", "1", "hi"],
    "tail": ["tail", "1"],
    "server": ["server", "--state-dir", ""],
    "demo": ["demo", "--duration", "5"],
    "run": ["run", *RUN_APPS, "--duration", "5"],
}
if "monitor" in cli.command_names():
    CONNECTING["monitor"] = ["monitor"]


def pblink(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pblink", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=TEST_TIMEOUT * 2, env=env, stdin=subprocess.DEVNULL)


def assert_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pblink"), lines[0]
    assert not re.search(r"(^|[\s(])b'", lines[0]), lines[0]  # no Python byte reprs
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# -- numbers and addresses: parsed with ranges, before anything else happens -----

BAD_ARGUMENTS = [
    (["send", "1", "hi", "--port", "99999"],
     "--port/--broker-port: port 99999 is not an int from 1 to 65535"),
    (["send", "1", "hi", "--port", "x"],
     "--port/--broker-port: port 'x' is not an int from 1 to 65535"),
    (["send", "1", "hi", "--timeout", "0"], "--timeout: 0 is out of range: must be above 0"),
    (["send", "1", "hi", "--timeout", "nan"], "--timeout: 'nan' is not a finite number"),
    (["send", "1", "hi", "--retry-ms", "0"], "--retry-ms: 0 is out of range"),
    (["send", "1", "hi", "--connect-timeout", "-1"], "--connect-timeout: -1 is out of range"),
    (["send", "1", "hi", "--broker", "nohost"], "--broker: 'nohost' is not HOST:PORT"),
    (["send", "1", "hi", "--broker", "h:0"], "--broker: port 0 is not an int from 1 to 65535"),
    (["send", "1", "hi", "--broker", "h:1", "--host", "x"], "--broker HOST:PORT or --host"),
    (["send", "1", "hi", "--cafile", "/no/such/ca.pem"], "CA file /no/such/ca.pem: no such file"),
    (["send", "1", "hi", "--root", "a//b"], "topic root 'a//b' has an empty level"),
    (["send", "1", "a\nb"], "line 'a\\nb' has a newline at byte 1"),
    (["tail", "1", "--count", "0"], "--count: 0 is out of range: must be at least 1"),
    (["tail", "1", "--timeout", "-2"], "--timeout: -2 is out of range"),
    (["tail", "1", "--port", "65536"], "--port/--broker-port: port 65536 is not an int from 1 to"),
    (["server", "--port", "0"], "--port/--broker-port: port 0 is not an int from 1 to 65535"),
    (["server", "--timeout-ms", "5"],
     "--timeout-ms: timeout_ms 5 is not an int from 200 to 3600000"),  # link_core/schema.py
    (["server", "--connect-timeout", "0"], "--connect-timeout: 0 is out of range"),
    (["server", "--app", "no_such_file.py:app"], "no such file no_such_file.py"),
    # where the state goes: before anything connects (no broker runs on these ports)
    (["server", "--port", "1", "--state-db", ""], "--state-db: not a postgresql:// URL: ''"),
    (["server", "--port", "1", "--state-db", "mysql://x@y/z"],
     "--state-db: not a postgresql:// URL: 'mysql://x@y/z'"),
    (["server", "--port", "1", "--state-db", "notaurl"], "--state-db: not a postgresql:// URL"),
    (["server", "--port", "1", "--state-db", "mysql://u:secret@y/z"], "mysql://u:***@y/z"),
    (["server", "--port", "1", "--state-db", "postgresql://h/db?connect_timeout=x"],
     "--state-db: 'postgresql://h/db?connect_timeout=x': bad value for connect_timeout: 'x'"),
    (["server", "--port", "1", "--state-db", "host=h dbname=db sslmod=require"],
     "--state-db: 'host=h dbname=db sslmod=require': invalid connection option \"sslmod\""),
    (["server", "--port", "1", "--state-db", "postgresql://h/db", "--state-dir", "s"],
     "give --state-dir (a state file) or --state-db (PostgreSQL), not both"),
    (["server", "--port", "1", "--state-db", "host=h", "--state-dir", ""], "not both"),
    (["server", "--port", "1", "--state-db", "host=h", "--state-db-timeout-ms", "50"],
     "--state-db-timeout-ms: '50' is not a whole number of milliseconds from 100 to 600000"),
    (["server", "--port", "1", "--state-db", "host=h", "--state-db-timeout-ms", "5s"],
     "'5s' is not a whole number of milliseconds"),
    (["server", "--port", "1", "--state-db-timeout-ms", "5000"],
     "--state-db-timeout-ms needs --state-db"),
    # the client id names the state file: refused before anything is created
    (["server", "--port", "1", "--client-id", ""], "--client-id: client id '' is empty"),
    (["server", "--port", "1", "--client-id", "../../escaped"],
     "--client-id: client id '../../escaped' has the character '/'"),
    (["server", "--port", "1", "--client-id", "a\tb"], "--client-id: client id 'a\\tb' has"),
    (["server", "--port", "1", "--client-id", "x" * 246],  # its .json.lock: 256 bytes
     "--client-id: client id 'xxx"),
    (["server", "--port", "1", "--client-id", "."],  # its state file would be '..json'
     "--client-id: client id '.' starts with '.', which would make the state file '..json' "
     "hidden"),
    (["demo", "--seed", "x"], "--seed: 'x' is not an integer"),
    (["run", *RUN_APPS, "--seed", "1.5"], "--seed: '1.5' is not an integer"),
    (["demo", "--devices", "0"], "--devices: 0 is out of range: must be 1 to 9"),
    (["demo", "--devices", "10"], "--devices: 10 is out of range"),
    (["demo", "--duration", "0"], "--duration: 0 is out of range"),
    (["demo", "--period-ms", "5"], "--period-ms: 5 is out of range: must be at least 10"),
    (["demo", "--port", "1883"], "--port/--broker-port needs --host or $PBLINK_HOST"),
    (["demo", "--broker", "127.0.0.1:1883", "--tls"], "without TLS"),
    (["run", *RUN_APPS, "--timeout-ms", "1"], "--timeout-ms: timeout_ms 1 is not an int from 200"),
    (["run", "--board-app", "nope.py:App", "--server-app", "m:app"], "no such file nope.py"),
    (["run", "--board-app", "examples/sensor/sensor_app.py:Sensor", "--server-app",
      "gone/server.py:app"], "no such file gone/server.py"),
    (["run", *RUN_APPS, "--root", "a/+"], "topic root 'a/+'"),
    (["broker", "--port", "70000"], "--port: port 70000 is not an int from 1 to 65535"),
    (["broker", "--max-queued", "0"], "--max-queued: 0 is out of range"),
    (["install", "/dev/null", "--host", "mqtt://h"],  # the devices' rule, link_core/schema.py
     "--host: host 'mqtt://h' is not a host name or IP address"),
    (["server", "--host", "mqtt://h"], "--host: host 'mqtt://h' is not a host name or IP"),
    (["send", "1", "hi", "--broker", "h/x:1883"], "host 'h/x' is not a host name or IP"),
    (["server", "--broker", "localhost:1883:1"],
     "argument --broker: host 'localhost:1883' is not a host name or IP"),
    (["install", "/dev/null", "--set", "port=0"], "--set port: port 0 is not an int from 1"),
    (["send", "1", "hi", "--host", "h", "--password", "pw"],
     "mqtt_password is set but mqtt_user is empty"),
    (["server", "--timeout-ms", "fast"],
     "--timeout-ms: timeout_ms 'fast' is not an int from 200 to 3600000"),
    (["install", "/dev/null", "--broker-port", "0"],
     "--broker-port: port 0 is not an int from 1 to 65535"),
    (["install", "/dev/null", "--timeout", "0"], "--timeout: 0 is out of range"),
    # the Pyboard's choices of mpy-cross's, before anything runs (not mpy-cross's help text)
    (["install", "/dev/null", "--mpy", "--march", "nope"],
     "argument --march: invalid choice: 'nope' (choose from 'armv6m', 'armv7m', 'armv7em'"),
    (["install", "/dev/null", "--mpy", "--march", "debug"],  # review 2 finding 9
     "argument --march: invalid choice: 'debug' (choose from 'armv6m', 'armv7m', 'armv7em'"),
    (["install", "/dev/null", "--march", "armv7m"], "--march goes with --mpy"),
    (["install", "/dev/null", "--report-s", "-1"],
     "--report-s: report_s -1 is not an int from 0 to 86400"),
    (["flash", "/dev/null", "--baud", "0"], "--baud: 0 is out of range"),
    (["flash", "/dev/null", "--connect-attempts", "0"], "--connect-attempts: 0 is out of range"),
    (["build-firmware", "--micropython-src", "x", "--jobs", "0"],
     "0 is out of range: must be at least 1"),
    (["bench", "--repeats", "0"], "--repeats: 0 is out of range"),
    (["bench", "--duration", "-5"], "--duration: -5 is out of range"),
    (["bench", "--repeats", "-2"], "--repeats: -2 is out of range: must be at least 1"),
    (["bench", "--only", "soak", "--duration", "-1"], "--duration: -1 is out of range"),
    (["bench", "--only", "scale", "--scale-n", "99999999"],  # a generator per 5,000
     "--scale-n: 99999999 is out of range: must be 1 to 20000"),
    (["bench", "--only", "esp", "--scale-n", "100"],
     "--scale-n is a scale option, and this run has no scale (add --only scale)"),
    (["bench", "--only", "latency", "--devices", "2"], "--devices is a soak option"),
    # files written at the end of a long run: checked before it starts
    (["bench", "--out", "/proc/x.json"], "--out: /proc/x.json: cannot write a file in /proc"),
    (["bench", "--out", "/tmp"], "--out: '/tmp' is a folder"),
    # checked before the run, as --out is: it once ended the run with "File exists", exit 1
    (["bench", "--workdir", "/etc/passwd"], "--workdir: /etc/passwd is a file, not a folder"),
    (["bench", "--workdir", "/etc/passwd/x"], "--workdir: /etc/passwd/x: cannot create it"),
    (["bench", "--tiny", "--quick"], "--tiny and --quick are two run sizes: give one"),
    (["demo", "--timeline", "/tmp"], "--timeline: '/tmp' is a folder"),
    (["demo", "--timeline", "/proc/x.html"], "--timeline: /proc/x.html: cannot write a file"),
    (["run", *RUN_APPS, "--timeline", "/proc/x.html"], "--timeline: /proc/x.html: cannot"),
    (["monitor", "--port", "99999"], "--port/--broker-port: port 99999 is not an int from 1 to"),
    (["monitor", "--listen", "[::1]:70000"], "--listen: 70000 is out of range"),
    (["monitor", "--listen", "8080"], "--listen: '8080' is not HOST:PORT"),
    (["passwd", "--amqtt", "f", "--password", "x", "a/b"], "conn_id 'a/b'"),
    (["no-such-command"], "invalid choice: 'no-such-command'"),
]


@pytest.mark.parametrize("argv, message", BAD_ARGUMENTS,
                         ids=[" ".join(a)[:60] for a, _ in BAD_ARGUMENTS])
def test_bad_arguments(argv: list[str], message: str) -> None:
    assert_error(pblink(*argv), EXIT_USAGE, message)


def test_state_db_refusals_hide_the_password() -> None:
    proc = pblink("server", "--port", "1", "--state-db", "mysql://u:secret@y/z")
    assert "secret" not in proc.stderr, proc.stderr


def test_server_help_says_where_the_state_is_kept() -> None:
    proc = pblink("server", "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "<state-dir>/<client-id>.json, or with --state-db in a PostgreSQL table" in text
    assert "not with --state-dir" in text


def test_every_command_is_covered() -> None:
    covered = {argv[0] for argv, _ in BAD_ARGUMENTS} | set(CONNECTING)
    assert set(cli.command_names()) <= covered


def test_bad_port_from_the_environment() -> None:
    env = dict(os.environ, PBLINK_PORT="99999")
    assert_error(pblink("send", "1", "hi", env=env), EXIT_USAGE,
                 "PBLINK_PORT: port 99999 is not an int from 1 to 65535")


def test_missing_micropython_from_the_environment() -> None:
    """PBLINK_MICROPYTHON naming no file: one line with the path, not a traceback."""
    env = dict(os.environ, PBLINK_MICROPYTHON="/nonexistent/micropython")
    assert_error(pblink("demo", "--duration", "5", env=env), 1, "/nonexistent/micropython",
                 "named by $PBLINK_MICROPYTHON")


# -- invalid conn_id: 2, checked before connecting (the broker here does not exist) ---


@pytest.mark.parametrize("command", ["send", "tail", "server"])
def test_invalid_conn_id_before_connecting(command: str) -> None:
    argv = {"send": ["send", "a/b", "hi"], "tail": ["tail", "a/b"],
            "server": ["server", "--ids", "1", "a/b", "--state-dir", ""]}[command]
    proc = pblink(*argv, "--broker", f"127.0.0.1:{free_port()}")
    assert_error(proc, EXIT_USAGE, "conn_id 'a/b' has the character '/'")


# -- broker unreachable: 3; credentials refused: 4 ---------------------------------


@pytest.mark.parametrize("command", list(CONNECTING))
def test_unreachable_broker(command: str) -> None:
    port = free_port()
    proc = pblink(*CONNECTING[command], "--broker", f"127.0.0.1:{port}")
    assert_error(proc, EXIT_UNREACHABLE, f"cannot reach MQTT broker 127.0.0.1:{port}",
                 "Connection refused")
    assert "result: OK" not in proc.stdout


@pytest.fixture(scope="module")
def locked_broker(tmp_path_factory: pytest.TempPathFactory) -> BrokerProcess:
    workdir = tmp_path_factory.mktemp("locked")
    passwd = workdir / "amqtt.passwd"
    write_amqtt_users(passwd, {"pblink.server": "server-pw"})
    broker = amqtt_process(workdir, extra=["--password-file", str(passwd)])
    broker.start()
    yield broker  # type: ignore[misc]
    broker.stop()


@pytest.mark.parametrize("command", list(CONNECTING))
def test_refused_credentials(command: str, locked_broker: BrokerProcess, tmp_path: Path) -> None:
    proc = pblink(*CONNECTING[command], "--broker", f"127.0.0.1:{locked_broker.port}",
                  "--user", "pblink.server", "--password", "wrong")
    assert_error(proc, EXIT_REFUSED, "refused the connection", "not authorized")
    assert "result: OK" not in proc.stdout


@pytest.mark.parametrize("command", ["send", "server"])
def test_credentials_from_the_environment(command: str, locked_broker: BrokerProcess) -> None:
    """PBLINK_USER/PBLINK_PASSWORD/PBLINK_HOST/PBLINK_PORT are every connecting
    command's defaults: with the right ones the broker lets it in (send then
    times out waiting for a device: 5; server is stopped by its own timeout)."""
    env = dict(os.environ, PBLINK_HOST="127.0.0.1", PBLINK_PORT=str(locked_broker.port),
               PBLINK_USER="pblink.server", PBLINK_PASSWORD="server-pw")
    if command == "send":
        proc = pblink("send", "1", "hi", "--timeout", "0.5", env=env)
        assert_error(proc, 5, "no acknowledgement from device 1")
    else:
        wrong = dict(env, PBLINK_PASSWORD="wrong")
        assert_error(pblink("server", "--state-dir", "", env=wrong), EXIT_REFUSED)


# -- the user's apps: named wrongly or of the wrong shape: one line, 2, before starting --

BAD_APPS = {
    "plain.py": "class Plain:\n    pass\n\n\ndef app(server, conn_ids):\n    pass\n",
    "srv.py": "async def app(server, conn_ids):\n    pass\n\n\nnot_callable = 3\n",
}


def app_specs(tmp_path: Path) -> list[tuple[list[str], str]]:
    for name, text in BAD_APPS.items():
        (tmp_path / name).write_text(text)
    plain, srv = tmp_path / "plain.py", tmp_path / "srv.py"
    board = "examples/sensor/sensor_app.py:Sensor"
    return [
        (["--board-app", f"{plain}:Plain", "--server-app", f"{srv}:app"],
         "Plain in " + str(plain) + " is not an AppBase subclass"),
        (["--board-app", f"{plain}:Nope", "--server-app", f"{srv}:app"],
         "has no class 'Nope'"),
        (["--board-app", board, "--server-app", f"{srv}:nope"], "has no callable 'nope'"),
        (["--board-app", board, "--server-app", "no_such_module_x:app"],
         "no module named 'no_such_module_x'"),
        (["--board-app", board, "--server-app", "no_such_pkg_x.sub:app"],
         "no module named 'no_such_pkg_x.sub'"),
        (["--board-app", board, "--server-app", f"{plain}:app"],
         "the server app must be an async callable (async def app(server, conn_ids))"),
    ]


def test_bad_apps_for_run(tmp_path: Path) -> None:
    """`pblink run`: each refused before a broker or a bench starts (the broker
    given does not exist: reaching it would exit 3)."""
    for argv, message in app_specs(tmp_path):
        proc = pblink("run", *argv, "--duration", "5", "--broker",
                      f"127.0.0.1:{free_port()}")
        assert_error(proc, EXIT_USAGE, message)


def test_bad_apps_for_server(tmp_path: Path) -> None:
    """`pblink server --app`: the same server-app checks, before connecting."""
    for argv, message in app_specs(tmp_path):
        if argv[0] == "--board-app" and "Sensor" not in argv[1]:
            continue
        proc = pblink("server", "--app", argv[3], "--state-dir", "", "--broker",
                      f"127.0.0.1:{free_port()}")
        assert_error(proc, EXIT_USAGE, message)
    proc = pblink("server", "--app", f"{tmp_path / 'srv.py'}:not_callable", "--state-dir", "",
                  "--broker", f"127.0.0.1:{free_port()}")
    assert_error(proc, EXIT_USAGE, "has no callable 'not_callable'")


def test_server_errors_leave_nothing_behind(tmp_path: Path, locked_broker: BrokerProcess) -> None:
    """An unreachable broker or refused credentials: one line, and no state folder."""
    state = tmp_path / "state"
    proc = pblink("server", "--state-dir", str(state), "--broker", f"127.0.0.1:{free_port()}")
    assert_error(proc, EXIT_UNREACHABLE, "cannot reach MQTT broker")
    proc = pblink("server", "--state-dir", str(state), "--broker",
                  f"127.0.0.1:{locked_broker.port}", "--user", "pblink.server",
                  "--password", "wrong")
    assert_error(proc, EXIT_REFUSED, "refused the connection")
    assert not state.exists()
    proc = pblink("server", "--state-dir", "/proc/x", "--broker",
                  f"127.0.0.1:{locked_broker.port}", "--user", "pblink.server",
                  "--password", "server-pw")
    # refused by --state-dir's type (not root: no permission in /proc) or when created (root)
    assert_error(proc, EXIT_USAGE, "/proc/x: cannot create it")


def test_server_app_that_returns(tmp_path: Path, locked_broker: BrokerProcess) -> None:
    """A server app returning at once ends `pblink server` with 1, saying so."""
    (tmp_path / "quick.py").write_text("async def app(server, conn_ids):\n    return None\n")
    proc = pblink("server", "--app", f"{tmp_path / 'quick.py'}:app", "--state-dir", "",
                  "--broker", f"127.0.0.1:{locked_broker.port}", "--user", "pblink.server",
                  "--password", "server-pw")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "server app exited" in proc.stderr.strip().splitlines()[-1], proc.stderr


def test_password_file_without_users_and_deleting_no_user(tmp_path: Path) -> None:
    """A broker password file with no valid line would refuse every client: 2
    before starting; removing a user who is not there is an error, not 'done'."""
    empty = tmp_path / "empty"
    empty.write_text("# user:plain\n\n")
    assert_error(pblink("broker", "--port", str(free_port()), "--password-file", str(empty)),
                 EXIT_USAGE, f"--password-file {empty}: no user:<hash> line")
    junk = tmp_path / "hostname"  # not a password file at all: its first line is named
    junk.write_text("myhost\n# user:plain\n")
    assert_error(pblink("broker", "--port", str(free_port()), "--password-file", str(junk)),
                 EXIT_USAGE, f"--password-file {junk} line 1: it is not user:<hash> (no ':')")
    assert_error(pblink("broker", "--port", str(free_port()), "--password-file",
                        str(tmp_path / "none")), EXIT_USAGE, "does not exist")
    passwd = tmp_path / "amqtt.passwd"
    write_amqtt_users(passwd, {"pblink.server": "server-pw"})
    assert_error(pblink("passwd", "--amqtt", str(passwd), "--delete", "1"), 1,
                 f"1: not found in {passwd}, nothing removed")


def test_broker_refuses_bad_password_lines_and_roots(tmp_path: Path) -> None:
    """The review's file: one valid user, a line without ':' and one without a
    hash: 2 at start, naming the file and the first bad line (amqtt would start,
    and dev9 could never log in); --root refused as server, run and tail refuse it."""
    passwd = tmp_path / "amqtt.passwd"
    write_amqtt_users(passwd, {"dev1": "pw-1"})
    with passwd.open("a") as out:
        out.write("garbage line\ndev9:notahash\n")
    assert_error(pblink("broker", "--port", str(free_port()), "--password-file", str(passwd)),
                 EXIT_USAGE, f"--password-file {passwd} line 2: it is not user:<hash> (no ':') "
                 "(and 1 more bad line(s): 3)")
    refusals = [pblink(*argv, "--root", "a/#") for argv in (
        ["broker", "--port", str(free_port())],
        ["broker", "--port", str(free_port()), "--acl"],
        ["server", "--port", "1"], ["tail", "1"], ["run", *RUN_APPS])]
    for proc in refusals:
        assert_error(proc, EXIT_USAGE, "topic root 'a/#' has the character '#' at position 2")
    assert len({proc.stderr.split(": error: ", 1)[1] for proc in refusals}) == 1
    assert_error(pblink("broker", "--port", str(free_port()), "--server-user", "a:b"),
                 EXIT_USAGE, "--server-user: server user name 'a:b' must be")


def test_broker_acl_and_server_users_need_a_password_file_with_them(tmp_path: Path) -> None:
    """`pblink broker`: --acl without --password-file (unproven user names),
    --server-user without --acl (ignored), a server user not in the file (it could
    not log in, and the file's pblink.server would become a confined device), a
    file with a UTF-8 BOM (amqtt reads it into the first user name): 2, one line."""
    passwd = tmp_path / "a.pw"
    write_amqtt_users(passwd, {"pblink.server": "server-pw", "dev1": "pw-1"})
    bom = tmp_path / "b.pw"
    bom.write_bytes(b"\xef\xbb\xbf" + passwd.read_bytes())
    port = str(free_port())
    assert_error(pblink("broker", "--port", port, "--acl"), EXIT_USAGE,
                 "--acl needs --password-file: it confines each user by name, and without "
                 "passwords any client can claim any name")
    assert_error(pblink("broker", "--port", port, "--server-user", "X"), EXIT_USAGE,
                 "--server-user goes with --acl (without it every client may use every topic)")
    assert_error(pblink("broker", "--port", port, "--password-file", str(passwd), "--acl",
                        "--server-user", "nobody"), EXIT_USAGE,
                 f"--server-user 'nobody' is not a user in --password-file {passwd} (add it "
                 f"with `pblink passwd --server --amqtt {passwd} nobody`)")
    assert_error(pblink("broker", "--port", port, "--password-file", str(bom)), EXIT_USAGE,
                 f"--password-file {bom} line 1: starts with a UTF-8 byte order mark: "
                 "save it without one")


def test_folders_given_as_files_name_the_option(tmp_path: Path) -> None:
    """A file where a folder is wanted: 2, naming the option, before anything runs
    (the broker given does not exist: reaching it would exit 3)."""
    afile = tmp_path / "ticker.py"
    afile.write_text("")
    broker = ["--broker", f"127.0.0.1:{free_port()}"]
    for argv in (["run", *RUN_APPS, "--duration", "5"], ["demo", "--duration", "5"]):
        assert_error(pblink(*argv, *broker, "--workdir", str(afile)), EXIT_USAGE,
                     f"argument --workdir: {afile} is a file, not a folder")
        assert_error(pblink(*argv, *broker, "--workdir", str(afile / "logs")), EXIT_USAGE,
                     f"argument --workdir: {afile}/logs: cannot create it: {afile} is a file")
    assert_error(pblink("server", *broker, "--state-dir", str(afile)), EXIT_USAGE,
                 f"argument --state-dir: {afile} is a file, not a folder")
    assert sorted(tmp_path.iterdir()) == [afile]


def test_device_credentials_refusal_says_why(tmp_path: Path) -> None:
    """With the ACL a device's credentials need its client id: the refusal says so."""
    passwd = tmp_path / "amqtt.passwd"
    write_amqtt_users(passwd, {"pblink.server": "server-pw", "1": "dev-pw"})
    broker = amqtt_process(tmp_path, extra=["--password-file", str(passwd), "--acl"])
    broker.start()
    try:
        proc = pblink("tail", "1", "--broker", f"127.0.0.1:{broker.port}", "--user", "1",
                      "--password", "dev-pw")
    finally:
        broker.stop()
    assert_error(proc, EXIT_REFUSED, "device credentials only work with the device's client "
                 "id pblink-1; use the server's credentials")
    help_text = " ".join(pblink("tail", "--help").stdout.split())
    assert "own subtree" not in help_text and "own client id (pblink-<conn_id>)" in help_text


def test_tls_to_a_plain_listener(tmp_path: Path) -> None:
    """--tls to a plain broker: the TCP connect worked, the handshake did not."""
    broker = amqtt_process(tmp_path)
    broker.start()
    try:
        proc = pblink("send", "1", "hi", "--broker", f"127.0.0.1:{broker.port}", "--tls",
                      "--connect-timeout", "2")
    finally:
        broker.stop()
    assert_error(proc, EXIT_UNREACHABLE, "TLS handshake failed")


@pytest.mark.parametrize("command", ["demo", "run"])
def test_port_with_host_from_the_environment_names_the_broker(command: str) -> None:
    # `--broker-port` on a command that starts its own broker unless told otherwise:
    # the host comes from $PBLINK_HOST, and that broker is the one used
    port = free_port()
    env = dict(os.environ, PBLINK_HOST="127.0.0.1")
    argv = [command, "--broker-port", str(port), "--connect-timeout", "1", "--duration", "5"]
    if command == "run":
        argv += ["--board-app", "examples/sensor/sensor_app.py:Sensor",
                 "--server-app", "examples/sensor/sensor_server.py:app"]
    assert_error(pblink(*argv, env=env), EXIT_UNREACHABLE,
                 f"cannot reach MQTT broker 127.0.0.1:{port}")


def test_server_client_id_refusals_create_nothing(tmp_path: Path) -> None:
    """A client id that cannot name the state file: 2, and no state folder or file
    (neither under --state-dir nor where '..' would have led)."""
    state = tmp_path / "deep" / "state"
    for client_id in ("", "a/b", "../../escaped", "x" * 300, "x" * 246, ".", ".x"):
        proc = pblink("server", "--state-dir", str(state), "--client-id", client_id,
                      "--broker", f"127.0.0.1:{free_port()}")
        assert_error(proc, EXIT_USAGE, "--client-id: client id")
    assert list(tmp_path.iterdir()) == []
