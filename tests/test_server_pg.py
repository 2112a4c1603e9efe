"""The PostgreSQL state store (issue 13 part 3): leases, commits, failover after kill -9.

Each test module run starts its own PostgreSQL (virtual_bench/postgres.py:
``initdb`` into a temporary folder, a free port); with CI=true a missing
PostgreSQL or psycopg fails instead of skipping.

- two stores on one database: a conn_id is leased to one at a time, the other
  gets it (with the entry the first committed) once the first's session ends;
- an entry this library could not have written is refused, naming the conn_id;
- an unreachable database is one line naming it, password hidden;
- two ``pblink server`` processes share six device doubles' conn_ids; the one
  serving them is killed with SIGKILL mid-stream; the other takes every
  conn_id over; every qos line of every device is read, in order, none lost,
  and the only lines read twice are the last ones the killed process's
  application read after its last commit (PROTOCOL.md 4.5: at most 2 per
  device here, with wait=True writers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from conftest import ROOT, TEST_TIMEOUT, BrokerProcess, free_port

from server_apps import Connection, LinkServer
from server_apps.state import ConnState, StateFileError
from virtual_bench.device_double import DeviceDouble
from virtual_bench.postgres import PostgresMissingError, TempPostgres

IN_CI = os.environ.get("CI") == "true"
T = 300  # timeout_ms of the failover scenario


@pytest.fixture(scope="module")
def pg() -> Iterator[TempPostgres]:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        if IN_CI:
            raise
        pytest.skip("psycopg not installed (pip install 'pblink-mqtt[postgres]')")
    try:
        server = TempPostgres()
    except PostgresMissingError:
        if IN_CI:
            raise
        pytest.skip("PostgreSQL server binaries not installed")
    with server:
        yield server


async def test_a_conn_id_is_leased_to_one_store_at_a_time(pg: TempPostgres) -> None:
    from server_apps.store_pg import PgStore

    a = PgStore(pg.dsn, root="lease", owner="a", poll_ms=20)
    b = PgStore(pg.dsn, root="lease", owner="b", poll_ms=20)
    await a.open()
    await b.open()
    try:
        assert await a.claim("x") == ConnState()
        await a.write({"x": ConnState(unread=["one", "two"])})
        waiting = asyncio.create_task(b.claim("x"))
        other = await asyncio.wait_for(b.claim("y"), TEST_TIMEOUT)  # free: b gets it
        assert other == ConnState()
        await asyncio.sleep(0.2)  # ten polls of b
        assert not waiting.done()  # a holds x
        await a.close()  # the session ends: PostgreSQL drops a's leases
        got = await asyncio.wait_for(waiting, TEST_TIMEOUT)
        assert got.unread == ["one", "two"]
    finally:
        await a.close()
        await b.close()


async def test_a_claim_continues_a_clean_stops_sender_session_and_drops_it_from_the_row(
    pg: TempPostgres,
) -> None:
    import psycopg

    from link_core import endpoint
    from server_apps.store_pg import TABLE, PgStore

    tx = endpoint.Sender("0badcafe", 16, 1500)
    tx.send("unacknowledged", 0)
    a = PgStore(pg.dsn, root="tx", owner="a", poll_ms=20)
    b = PgStore(pg.dsn, root="tx", owner="b", poll_ms=20)
    await a.open()
    await b.open()
    try:
        await a.claim("s")
        await a.write({"s": ConnState(tx=tx.snapshot(), unread=["u"])})  # a clean stop
        await a.close()
        got = await asyncio.wait_for(b.claim("s"), TEST_TIMEOUT)
        assert got.tx == tx.snapshot() and got.unread == ["u"]  # b continues the session
        async with await psycopg.AsyncConnection.connect(pg.dsn) as c:
            cur = await c.execute(f"SELECT entry, owner FROM {TABLE} WHERE root = 'tx'")
            assert await cur.fetchall() == [({"unread": ["u"]}, "b")]  # a crash of b: new one
    finally:
        await a.close()
        await b.close()


async def test_two_callers_of_one_claim_and_one_giving_up(pg: TempPostgres) -> None:
    from server_apps.store_pg import PgStore

    a = PgStore(pg.dsn, root="two", owner="a", poll_ms=20)
    b = PgStore(pg.dsn, root="two", owner="b", poll_ms=20)
    await a.open()
    await b.open()
    try:
        await a.claim("k")
        first = asyncio.create_task(b.claim("k"))
        second = asyncio.create_task(b.claim("k"))
        await asyncio.sleep(0.1)
        first.cancel()  # one caller gives up: the other still waits for the lease
        await a.close()
        assert await asyncio.wait_for(second, TEST_TIMEOUT) == ConnState()
        assert first.cancelled()
        c = PgStore(pg.dsn, root="two", owner="c", poll_ms=20)
        await c.open()
        try:  # b kept the lease: c waits
            waiting = asyncio.create_task(c.claim("k"))
            await asyncio.sleep(0.2)
            assert not waiting.done()
            waiting.cancel()
        finally:
            await c.close()
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("entry", [{"unread": ["a\nb"]}, {"rx": 5}, None, [], "x"],
                         ids=["newline", "rx-5", "null", "list", "string"])
async def test_a_damaged_entry_is_refused_naming_the_conn_id(
    pg: TempPostgres, entry: object
) -> None:
    """JSON null too: a row whose entry is not an object is damage, not "no entry"."""
    import psycopg

    from server_apps.store_pg import TABLE, PgStore

    s = PgStore(pg.dsn, root="bad", owner="a", poll_ms=20)
    await s.open()
    try:
        async with await psycopg.AsyncConnection.connect(pg.dsn, autocommit=True) as c:
            await c.execute(f"INSERT INTO {TABLE} (root, conn_id, entry, owner) VALUES "
                            "('bad', 'z', %s::jsonb, 'x') ON CONFLICT (root, conn_id) DO "
                            "UPDATE SET entry = EXCLUDED.entry", (json.dumps(entry),))
        with pytest.raises(StateFileError) as info:
            await asyncio.wait_for(s.claim("z"), TEST_TIMEOUT)
        text = str(info.value)
        assert "state database postgresql://pblink@" in text and "conn_id 'z'" in text, text
        assert f"DELETE FROM {TABLE} WHERE root = 'bad' AND conn_id = 'z'" in text, text
        assert "\n" not in text
    finally:
        await s.close()


@pytest.mark.parametrize("dsn", [
    "postgresql://u:p@h:5432/db", "postgres://h/db", "postgresql:///db?host=/run/pg",
    "host=h dbname=db", "host = h  port=5432 password='a b\\'c'", " dbname=x ",
])
def test_postgresql_urls_and_key_value_strings_are_accepted(dsn: str) -> None:
    from server_apps.store_pg import check_dsn

    assert check_dsn(dsn) == dsn


@pytest.mark.parametrize("dsn", ["", "   ", "mysql://x@y/z", "notaurl", "host", "=x",
                                 "host=h dbname", "http://h/db", "host='unterminated",
                                 # name no database: libpq would take its defaults
                                 "postgresql://", "postgres://", "password=SECRET",
                                 "sslmode=require"])
def test_other_state_db_values_are_refused_before_connecting(dsn: str) -> None:
    from server_apps import LinkServer

    with pytest.raises(ValueError, match="not a postgresql:// URL") as info:
        LinkServer(state_db=dsn)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("dsn", "says"), [
    ("postgresql://u:secret@h/db?conect_timeout=5",
     'invalid URI query parameter: "conect_timeout"'),
    ("host=h dbname=db sslmod=require password=secret", 'invalid connection option "sslmod"'),
    ("postgresql://u:secret@h/db?connect_timeout=x", "bad value for connect_timeout: 'x'"),
    ("host=h connect_timeout=soon password=secret", "bad value for connect_timeout: 'soon'"),
])
def test_a_state_db_with_an_option_libpq_rejects_is_refused_before_connecting(
        dsn: str, says: str) -> None:
    """A typo in an option name or a connect_timeout psycopg cannot read was a
    connection failure (exit 1) after the broker probe; libpq's parser finds it first."""
    from server_apps.store_pg import check_dsn

    with pytest.raises(ValueError) as info:
        check_dsn(dsn)
    text = str(info.value)
    assert says in text and "secret" not in text and "\n" not in text, text


def test_a_refused_state_db_hides_its_password() -> None:
    from server_apps.store_pg import check_dsn

    with pytest.raises(ValueError) as info:
        check_dsn("mysql://u:secret@h/db")
    assert "secret" not in str(info.value) and "u:***@h" in str(info.value)


@pytest.mark.parametrize("dsn", ["mysql://u:se@cret@h/db", "password='se cret' dbname",
                                 "password=secret"])
def test_a_password_is_hidden_whole(dsn: str) -> None:
    """A password with an '@' or a quoted space is hidden whole, not up to that character."""
    from server_apps.store_pg import check_dsn

    with pytest.raises(ValueError) as info:
        check_dsn(dsn)
    assert "cret" not in str(info.value) and "***" in str(info.value), str(info.value)


async def test_a_key_value_connection_string_connects(pg: TempPostgres) -> None:
    from server_apps.store_pg import PgStore

    s = PgStore(f"host=127.0.0.1 port={pg.port} user=pblink dbname=postgres", root="kv",
                owner="a", poll_ms=20)
    await s.open()
    try:
        assert await asyncio.wait_for(s.claim("k"), TEST_TIMEOUT) == ConnState()
    finally:
        await s.close()


async def test_a_table_of_another_shape_is_named_as_such(pg: TempPostgres) -> None:
    import psycopg

    from server_apps.store_pg import TABLE, PgStore, StateDbError

    async with await psycopg.AsyncConnection.connect(pg.dsn, autocommit=True) as c:
        await c.execute("CREATE DATABASE othershape")
    dsn = pg.dsn.rsplit("/", 1)[0] + "/othershape"
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
        await c.execute(f"CREATE TABLE {TABLE} (root text, conn_id text, entry json)")
    s = PgStore(dsn, root="r", owner="a")
    with pytest.raises(StateDbError) as info:
        await s.open()
    text = str(info.value)
    assert f"table {TABLE} is not pblink's shape" in text, text
    assert "entry json (not jsonb)" in text and "owner missing (not text)" in text, text
    assert "lost the session" not in text and "restart" not in text


async def test_an_unreachable_database_is_one_line_without_the_password() -> None:
    pytest.importorskip("psycopg")
    from server_apps.store_pg import PgStore, StateDbError

    s = PgStore(f"postgresql://u:secret@127.0.0.1:{free_port()}/db?connect_timeout=2",
                root="r", owner="a")
    with pytest.raises(StateDbError) as info:
        await s.open()
    text = str(info.value)
    assert "secret" not in text and "u:***@127.0.0.1" in text and "\n" not in text


def test_pblink_server_with_an_unreachable_database_is_one_line(
    amqtt_broker: BrokerProcess, tmp_path: Path
) -> None:
    pytest.importorskip("psycopg")
    url = f"postgresql://u:secret@127.0.0.1:{free_port()}/x?connect_timeout=2"
    done = subprocess.run(
        [sys.executable, "-m", "server_apps.s_app", "--host", amqtt_broker.host, "--port",
         str(amqtt_broker.port), "--state-db", url], cwd=tmp_path, capture_output=True,
        text=True, timeout=TEST_TIMEOUT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    out = (done.stdout + done.stderr).strip()
    assert done.returncode == 1, out
    errors = [x for x in out.splitlines() if x.startswith("pblink server: error: state database")]
    assert len(errors) == 1 and "Traceback" not in out and "secret" not in out, out
    assert not (tmp_path / ".pblink-state").exists()  # no state folder with a database


def test_a_file_and_a_database_at_once_are_refused() -> None:
    from server_apps import LinkServer

    with pytest.raises(ValueError, match="not both"):
        LinkServer(state_path="x.json", state_db="postgresql://localhost/x")


async def test_a_clean_handover_between_two_servers_continues_both_directions(
    any_broker: BrokerProcess, pg: TempPostgres
) -> None:
    """Server a stops cleanly mid-stream; server b (another client id, same database)
    continues a's sender session and receive state: every line exactly once, in order."""
    from test_server_link import collect, device_for, lines, nl, produce, server_for, until

    n = 40
    async with asyncio.timeout(3 * TEST_TIMEOUT), device_for(any_broker, "h1") as dev:
        up: list[str] = []
        down: list[str] = []
        dev_tasks = [
            asyncio.create_task(produce(dev.write, lines("up", n))),
            asyncio.create_task(collect(dev.readline, n, down)),
        ]
        async with server_for(any_broker, client_id="srv-a", state_db=pg.dsn,
                              lease_poll_ms=20) as a:
            conn = await a.connection("h1")
            reading = asyncio.create_task(collect(conn.readline, 15, up))
            await produce(conn.write, lines("down", 20))  # some of these stay unacked
            await reading
            first_session = conn.session
        await until(lambda: not dev.server_ok, "the device to see the server gone")
        async with server_for(any_broker, client_id="srv-b", state_db=pg.dsn,
                              lease_poll_ms=20) as b:
            conn = await b.connection("h1")
            assert conn.session == first_session  # the sender session continues
            await asyncio.gather(
                produce(conn.write, lines("down", n - 20, start=20)),
                collect(conn.readline, n, up),
                *dev_tasks,
            )
            assert up == nl(lines("up", n))
            assert down == nl(lines("down", n))
            await conn.drain()


async def terminate_sessions(pg: TempPostgres, owner: str) -> int:
    """End the database sessions of the server ``owner`` (as a database restart would)."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(pg.dsn, autocommit=True) as c:
        cur = await c.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                              "WHERE application_name = %s", (f"pblink {owner}",))
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def test_a_server_that_lost_its_database_session_closes_itself(
    amqtt_broker: BrokerProcess, pg: TempPostgres
) -> None:
    from test_server_link import server_for

    from server_apps import LinkClosedError, StateLostError

    async with asyncio.timeout(3 * TEST_TIMEOUT), server_for(
        amqtt_broker, client_id="srv-lost", root="lost", state_db=pg.dsn, lease_poll_ms=20
    ) as server:
        conn = await server.connection("l1")
        reading = asyncio.create_task(conn.readline())
        assert server.error is None
        assert await terminate_sessions(pg, "srv-lost") == 1
        error = await server.wait_error()  # noticed with no traffic at all (liveness query)
        assert server.error is error and isinstance(error, LinkClosedError)
        text = str(error)
        assert "lost the session with state database postgresql://pblink@" in text, text
        assert "state file" not in text
        with pytest.raises(StateLostError):
            await reading
        with pytest.raises(StateLostError):
            await conn.write("x")
        with pytest.raises(StateLostError):
            await server.connection("l2")
        lines = [x async for x in conn]  # ends, as after close()
        assert lines == []


async def test_a_standby_does_not_warn_about_the_conn_ids_it_waits_for(
    amqtt_broker: BrokerProcess, pg: TempPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    from test_server_link import device_for, server_for, until

    caplog.set_level("INFO", logger="pblink.server")
    ids = ["s1", "s2", "s3"]
    async with asyncio.timeout(3 * TEST_TIMEOUT), server_for(
        amqtt_broker, client_id="srv-owner", root="standby", state_db=pg.dsn, lease_poll_ms=20
    ) as owner, server_for(
        amqtt_broker, client_id="srv-standby", root="standby", state_db=pg.dsn,
        lease_poll_ms=20, identity_probe_s=0,
    ) as standby:
        for cid in ids:
            await owner.connection(cid)
        waits = [asyncio.create_task(standby.connection(cid)) for cid in ids]
        try:
            async with device_for(amqtt_broker, "s1", root="standby"), \
                    device_for(amqtt_broker, "s2", root="standby"), \
                    device_for(amqtt_broker, "other", root="standby"):
                await until(lambda: "device other is online under" in caplog.text,
                            "the warning about a conn_id nobody asked for")
                await until(lambda: "waiting for the lease of 3 conn_id(s)" in caplog.text,
                            "the standby's one line about the leases it waits for")
            assert "device s1 is online under" not in caplog.text, caplog.text
            assert "device s2 is online under" not in caplog.text, caplog.text
            assert caplog.text.count("waiting for the lease of") == 1
            assert not any(w.done() for w in waits)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)


def pblink_server(broker: BrokerProcess, cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "server_apps.s_app", "--host", broker.host, "--port",
         str(broker.port), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def error_lines(out: str) -> list[str]:
    return [x for x in out.splitlines() if x.startswith("pblink server: error:")
            or " ERROR " in x or " WARNING " in x or "Traceback" in x]


@pytest.mark.parametrize("entry", [{"rx": 5}, None])
def test_pblink_server_with_a_damaged_row_is_one_line_not_blaming_the_app(
    amqtt_broker: BrokerProcess, pg: TempPostgres, tmp_path: Path, entry: object
) -> None:
    import psycopg

    from server_apps.store_pg import TABLE

    with psycopg.connect(pg.dsn, autocommit=True) as c:
        c.execute(f"INSERT INTO {TABLE} (root, conn_id, entry, owner) VALUES "
                  "('dmg', 'd1', %s::jsonb, 'x') ON CONFLICT (root, conn_id) DO UPDATE "
                  "SET entry = EXCLUDED.entry", (json.dumps(entry),))
    proc = pblink_server(amqtt_broker, tmp_path, "--root", "dmg", "--ids", "d1", "--client-id",
                         "srv-dmg", "--state-db", pg.dsn)
    out, _ = proc.communicate(timeout=TEST_TIMEOUT)
    assert proc.returncode == 1, out
    errors = error_lines(out)
    assert len(errors) == 1, out
    assert errors[0].startswith("pblink server: error: state database postgresql://pblink@")
    assert "conn_id 'd1'" in errors[0] and "DELETE FROM" in errors[0], out
    assert "server application" not in out


def test_pblink_server_that_lost_its_database_session_exits_with_one_line(
    amqtt_broker: BrokerProcess, pg: TempPostgres, tmp_path: Path
) -> None:
    proc = pblink_server(amqtt_broker, tmp_path, "--root", "gone", "--ids", "g1", "--client-id",
                         "srv-gone", "--state-db", pg.dsn)
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # until it serves
            seen.append(line)
            if "g1: serving" in line:
                break
        assert any("g1: serving" in x for x in seen), "".join(seen)
        assert asyncio.run(terminate_sessions(pg, "srv-gone")) == 1
        out, _ = proc.communicate(timeout=TEST_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(seen) + out
    assert proc.returncode == 1, out
    errors = error_lines(out)
    assert len(errors) == 1, out
    assert errors[0].startswith("pblink server: error: link server srv-gone closed: lost the "
                                "session with state database postgresql://pblink@"), out
    assert "state file" not in out and "server application" not in out, out


# -- failover of two `pblink server` processes ----------------------------------------------

class Proc:
    """A `pblink server` process whose output lines are collected (with arrival times)."""

    def __init__(self, broker: BrokerProcess, cwd: Path, name: str, ids: list[str],
                 dsn: str) -> None:
        argv = [sys.executable, "-m", "server_apps.s_app", "--host", broker.host,
                "--port", str(broker.port), "--timeout-ms", str(T), "--ids", *ids,
                "--client-id", f"pblink.server-{name}", "--state-db", dsn]
        env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip()))

    def wait_for(self, text: str) -> float:
        deadline = time.monotonic() + TEST_TIMEOUT
        while time.monotonic() < deadline:
            for t, line in list(self.lines):
                if text in line:
                    return t
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no {text!r} in:\n" + "\n".join(x for _, x in self.lines))

    def received(self) -> dict[str, list[int]]:
        """Per conn_id, the tx_count of every demo line the app read, in order."""
        out: dict[str, list[int]] = {}
        for _, line in self.lines:
            m = re.search(r" (\S+) <- (\[.*\])$", line)
            if m:
                out.setdefault(m.group(1), []).append(json.loads(m.group(2))[1])
        return out

    def finish(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=TEST_TIMEOUT)
        self._reader.join(timeout=TEST_TIMEOUT)


def test_kill_9_of_one_server_process_the_other_takes_over_exactly_once(
    any_broker: BrokerProcess, pg: TempPostgres, tmp_path: Path
) -> None:
    ids = [f"f{i}" for i in range(6)]
    lines, kill_after = 24, 8
    dsn = pg.dsn
    a = Proc(any_broker, tmp_path, "a", ids, dsn)
    b: Proc | None = None
    try:
        a.wait_for("demo server on")
        b = Proc(any_broker, tmp_path, "b", ids, dsn)
        b.wait_for("some wait for their lease")  # a holds every conn_id
        killed = threading.Event()
        t_kill: list[float] = []

        async def devices() -> None:
            async with asyncio.timeout(4 * TEST_TIMEOUT):
                devs = [DeviceDouble(c, any_broker.host, any_broker.port, timeout_ms=T,
                                     reconnect_min=0.1, reconnect_max=0.5) for c in ids]
                for d in devs:
                    await d.start()
                try:
                    async def write(d: DeviceDouble) -> None:
                        for k in range(1, lines + 1):
                            await d.write(json.dumps([d.conn_id, k, 0]))
                            if k == kill_after and not killed.is_set():
                                killed.set()
                                t_kill.append(time.monotonic())
                                a.proc.send_signal(signal.SIGKILL)  # mid-stream
                        await d.drain()

                    await asyncio.gather(*(write(d) for d in devs))
                finally:
                    await asyncio.gather(*(d.close() for d in devs))

        asyncio.run(devices())
        a.finish(signal.SIGKILL)
        assert a.proc.returncode == -signal.SIGKILL
        taken = max(b.wait_for(f"{cid}: lease taken") for cid in ids)
        served = max(b.wait_for(f"{cid}: serving") for cid in ids)
        # figures for docs/SERVER.md (printed with -s, never asserted)
        print(f"\ntakeover after kill -9: every lease {taken - t_kill[0]:.3f} s, "
              f"every conn_id served {served - t_kill[0]:.3f} s")
        # every device's lines are acknowledged (drain) and were read by a, then b
        deadline = time.monotonic() + TEST_TIMEOUT
        while time.monotonic() < deadline:
            got_b = b.received()
            if all(got_b.get(c, [0])[-1] == lines for c in ids):
                break
            time.sleep(0.05)
        b.finish(signal.SIGTERM)
        assert b.proc.returncode == 0, "\n".join(x for _, x in b.lines[-30:])
        got_a, got_b = a.received(), b.received()
        for cid in ids:
            seq_a, seq_b = got_a.get(cid, []), got_b.get(cid, [])
            # b starts where a's last commit left off: a's read tail may come again
            overlap = len(seq_a) - seq_b[0] + 1 if seq_a and seq_b else 0
            assert 0 <= overlap <= 2, (cid, seq_a, seq_b)
            assert seq_b[:overlap] == seq_a[len(seq_a) - overlap:], (cid, seq_a, seq_b)
            assert seq_a + seq_b[overlap:] == list(range(1, lines + 1)), (cid, seq_a, seq_b)
        assert any(got_b.get(c) for c in ids)  # b served after the kill
    finally:
        for p in (a, b):
            if p is not None and p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()


def test_identity_hint_names_no_state_file_with_postgresql() -> None:
    """With --state-db there is no state file: the hint for a client id in use
    does not send the user looking for one (a new user's report)."""
    from server_apps.link_server import FILE_HINT, IDENTITY_HINT, LinkServer

    pg = LinkServer(state_db="postgresql://pblink@127.0.0.1:1/none")
    assert pg._identity_hint() == IDENTITY_HINT
    assert "state file" not in pg._identity_hint()
    assert LinkServer()._identity_hint() == IDENTITY_HINT + FILE_HINT


# -- a hung (not dead) database session; the user's options; start-up race; lost message --

async def backend_pids(pg: TempPostgres, owner: str) -> list[int]:
    """The PostgreSQL backends of the server ``owner`` (its application_name)."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(pg.dsn, autocommit=True) as c:
        cur = await c.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                              (f"pblink {owner}",))
        return [int(row[0]) for row in await cur.fetchall()]


class Frozen:
    """SIGSTOP the backends of ``owner`` (a hung, not dead, session); SIGCONT them on exit."""

    def __init__(self, pids: list[int]) -> None:
        assert pids
        self.pids = pids

    def __enter__(self) -> Frozen:
        for pid in self.pids:
            os.kill(pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc: object) -> None:
        self.thaw()

    def thaw(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):  # it ended once thawed
                os.kill(pid, signal.SIGCONT)


async def test_a_commit_on_a_frozen_backend_fails_within_the_bound(
    pg: TempPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """F1: every operation of the store is bounded on the client side: a commit to a
    backend that hangs (SIGSTOP) fails after timeout_ms, the session counts as lost
    (on_lost, once), and one ERROR line names the database and the bound."""
    from server_apps.store_pg import PgStore, StateDbError

    lost: list[StateDbError] = []
    store = PgStore(pg.dsn, root="frozen", owner="st-frozen", poll_ms=20, timeout_ms=300,
                    on_lost=lost.append)
    await store.open()
    try:
        await store.claim("z1")
        with Frozen(await backend_pids(pg, "st-frozen")):
            t0 = time.monotonic()
            with pytest.raises(StateDbError) as err:
                await asyncio.wait_for(store.write({"z1": ConnState(unread=["a"])}), 10)
            took = time.monotonic() - t0
            await store.close()  # does not wait for the frozen backend either
            assert time.monotonic() - t0 < 5.0  # not wait_for's 10 s
        assert 0.25 < took < 5.0, took  # the bound, not wait_for's 10 s
        assert len(lost) == 1 and str(lost[0]) == str(err.value)
        text = str(err.value)
        assert "no answer within 0.3 s while committing 1 row(s)" in text, text
        assert "held 1 lease(s)" in text, text
        errors = [r for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1, caplog.text
        assert "state database postgresql://pblink@" in errors[0].getMessage()
        assert "0.3 s" in errors[0].getMessage()
        with pytest.raises(StateDbError):
            await store.claim("z2")
    finally:
        await store.close()


async def test_a_frozen_owner_session_closes_the_server_and_the_standby_takes_over_later(
    amqtt_broker: BrokerProcess, pg: TempPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """F1: the owner's backend hangs (SIGSTOP) while a device writes qos lines: the owner
    closes itself within its bound (nothing it did not commit is acknowledged); once the
    database ends the frozen session (SIGCONT: the backend sees the closed socket) the
    standby takes the conn_id over, and every line is read, in order, none lost."""
    from test_server_link import device_for, server_for, until

    from server_apps import StateLostError

    caplog.set_level("INFO", logger="pblink")
    n = 30
    root = "hung"
    async with asyncio.timeout(4 * TEST_TIMEOUT), server_for(
        amqtt_broker, client_id="srv-hung", root=root, state_db=pg.dsn, lease_poll_ms=20,
        state_db_timeout_ms=400,
    ) as owner, server_for(
        amqtt_broker, client_id="srv-hung-b", root=root, state_db=pg.dsn, lease_poll_ms=20,
        identity_probe_s=0,
    ) as standby, device_for(amqtt_broker, "h1", root=root) as dev:
        conn = await owner.connection("h1")
        waiting = asyncio.create_task(standby.connection("h1"))
        got_a: list[int] = []
        got_b: list[int] = []

        async def read(c: Connection, into: list[int]) -> None:
            with contextlib.suppress(StateLostError):
                while not into or into[-1] < n:
                    into.append(json.loads(await c.readline())[1])

        reading = asyncio.create_task(read(conn, got_a))
        frozen: Frozen | None = None
        seen: list[tuple[float, StateLostError | None, bool]] = []

        async def thaw_when_closed(f: Frozen, t0: float) -> None:
            error = await owner.wait_error()
            seen.append((time.monotonic() - t0, error, waiting.done()))
            f.thaw()  # the database ends the frozen session only now

        watcher: asyncio.Task[None] | None = None
        try:
            for k in range(1, n + 1):
                if k == 10:
                    await until(lambda: len(got_a) >= 9, "the owner to read 9 lines")
                    frozen = Frozen(await backend_pids(pg, "srv-hung")).__enter__()
                    watcher = asyncio.create_task(thaw_when_closed(frozen, time.monotonic()))
                await dev.write(json.dumps(["h1", k, 0]))
            conn_b = await waiting
            await read(conn_b, got_b)
            await dev.drain()
        finally:
            if frozen is not None:
                frozen.thaw()
            reading.cancel()
            waiting.cancel()
            if watcher is not None:
                watcher.cancel()
        took, error, taken_over = seen[0]
        print(f"\nfrozen backend: the owner closed itself {took:.2f} s after SIGSTOP "
              "(state_db_timeout_ms 400)")  # figures for docs/SERVER.md (with -s)
        assert took < 8.0, took  # 1 s liveness at most + the 0.4 s bound, loaded machine
        assert "no answer within 0.4 s" in str(error), error
        assert "held 1 lease(s)" in str(error), error
        assert not taken_over  # the frozen backend held the lease until it ended
        overlap = len(got_a) - got_b[0] + 1 if got_a and got_b else 0
        assert 0 <= overlap <= 2, (got_a, got_b)
        assert got_a + got_b[overlap:] == list(range(1, n + 1)), (got_a, got_b)
        lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(lines) == 1, caplog.text
        assert lines[0].startswith("state database postgresql://pblink@"), lines
        assert "no answer within 0.4 s" in lines[0], lines


def test_pblink_server_with_a_frozen_database_session_exits_with_its_line(
    amqtt_broker: BrokerProcess, pg: TempPostgres, tmp_path: Path
) -> None:
    """F1 through the CLI: --state-db-timeout-ms bounds it; exit 1 with the documented line."""
    proc = pblink_server(amqtt_broker, tmp_path, "--root", "hungcli", "--ids", "k1",
                         "--client-id", "srv-hungcli", "--state-db", pg.dsn,
                         "--state-db-timeout-ms", "300")
    frozen: Frozen | None = None
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "k1: serving" in line:
                break
        frozen = Frozen(asyncio.run(backend_pids(pg, "srv-hungcli"))).__enter__()
        t0 = time.monotonic()
        out, _ = proc.communicate(timeout=TEST_TIMEOUT)
        took = time.monotonic() - t0
    finally:
        if frozen is not None:
            frozen.thaw()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(seen) + out
    assert proc.returncode == 1, out
    assert took < 10.0, took  # not TEST_TIMEOUT: the bound worked
    errors = error_lines(out)
    assert len(errors) == 2, out  # the moment it overran (ERROR), then the exit line
    assert " ERROR " in errors[0] and "no answer within 0.3 s" in errors[0], out
    assert errors[1].startswith("pblink server: error: link server srv-hungcli closed: lost "
                                "the session with state database postgresql://pblink@"), out
    assert "no answer within 0.3 s" in errors[1] and "held 1 lease(s)" in errors[1], out


@pytest.mark.parametrize("form", ["url", "key=value"])
async def test_the_users_own_options_are_kept_beside_the_stores(
    pg: TempPostgres, form: str
) -> None:
    """F2: options=-csearch_path=other in the DSN puts the table in schema other (the
    store's keepalive options are added, not put in their place)."""
    import psycopg

    from server_apps.store_pg import TABLE, PgStore

    with psycopg.connect(pg.dsn, autocommit=True) as c:
        c.execute("CREATE SCHEMA IF NOT EXISTS other")
        c.execute(f"DROP TABLE IF EXISTS other.{TABLE}")
    if form == "url":
        dsn = pg.dsn + "?options=-csearch_path%3Dother&application_name=mine"
    else:
        dsn = (f"host=127.0.0.1 port={pg.port} user=pblink dbname=postgres "
               "options='-c search_path=other' application_name=mine")
    store = PgStore(dsn, root="opts", owner="st-opts")
    await store.open()
    try:
        await store.claim("o1")
        await store.write({"o1": ConnState(unread=["x"])})
        cur = await store._conn.execute("SHOW search_path")
        assert (await cur.fetchone())[0] == "other"
        cur = await store._conn.execute("SHOW tcp_keepalives_idle")
        assert (await cur.fetchone())[0] == "5"
        cur = await store._conn.execute("SHOW application_name")
        assert (await cur.fetchone())[0] == "mine"  # the user's, not replaced either
    finally:
        await store.close()
    with psycopg.connect(pg.dsn, autocommit=True) as c:
        row = c.execute(f"SELECT count(*) FROM other.{TABLE} WHERE root = 'opts'").fetchone()
        assert row is not None and row[0] == 1


async def test_leases_belong_to_the_table_the_session_finds(pg: TempPostgres) -> None:
    """Two stores on one database, one whose search_path finds another schema's
    table: their leases are apart (each holds its own state), while two stores on
    the same table still exclude each other (a reviewer saw the other schema's
    process wait for, then take over, leases over state it could not see)."""
    import psycopg

    from server_apps.store_pg import TABLE, PgStore

    with psycopg.connect(pg.dsn, autocommit=True) as c:
        c.execute("CREATE SCHEMA IF NOT EXISTS apart")
        c.execute(f"DROP TABLE IF EXISTS apart.{TABLE}")
    mine = PgStore(pg.dsn, root="tbl", owner="st-mine", poll_ms=20)
    other = PgStore(pg.dsn + "?options=-csearch_path%3Dapart", root="tbl", owner="st-apart",
                    poll_ms=20)
    same = PgStore(pg.dsn, root="tbl", owner="st-same", poll_ms=20)
    for s in (mine, other, same):
        await s.open()
    try:
        await asyncio.wait_for(mine.claim("t1"), 5)
        await asyncio.wait_for(other.claim("t1"), 5)  # another table: another lease
        waiting = asyncio.ensure_future(same.claim("t1"))
        await asyncio.sleep(0.3)  # many lease polls of 20 ms
        assert not waiting.done()  # the same table: mine holds it
        await mine.close()
        await asyncio.wait_for(waiting, 5)
    finally:
        for s in (mine, other, same):
            await s.close()


def test_connect_kwargs_merge_with_the_dsn() -> None:
    from server_apps.store_pg import _KEEPALIVE, connect_kwargs

    assert connect_kwargs("postgresql://h/db", "o") == {
        "options": _KEEPALIVE, "application_name": "pblink o"}
    got = connect_kwargs("postgresql://h/db?options=-c%20tcp_keepalives_idle%3D60", "o")
    assert got["options"] == _KEEPALIVE + " -c tcp_keepalives_idle=60"  # the user's wins
    assert connect_kwargs("host=h options='-c a=b' application_name=x", "o") == {
        "options": _KEEPALIVE + " -c a=b"}


@pytest.mark.parametrize("value", [0, 99, 600_001, True, 1.5, "5000"])
def test_a_state_db_timeout_out_of_range_is_refused(value: object) -> None:
    from server_apps import LinkServer

    with pytest.raises(ValueError, match="from 100 to 600000"):
        LinkServer(state_db="postgresql://localhost/x", state_db_timeout_ms=value)  # type: ignore[arg-type]


def test_the_clis_default_state_db_timeout_is_the_librarys() -> None:
    from pblink.cmd_server import DB_TIMEOUT_MS
    from server_apps.store_pg import DEFAULT_TIMEOUT_MS

    assert DB_TIMEOUT_MS == DEFAULT_TIMEOUT_MS


async def test_a_standby_started_while_its_devices_are_online_does_not_warn(
    amqtt_broker: BrokerProcess, pg: TempPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """F5: serve() tells the server its ids, so a device whose retained `online` is heard
    before the application asked for it is not reported as not served. Deterministic: the
    application asks only after the server has heard every device."""
    from test_server_link import device_for, server_for, until

    from server_apps.s_app import serve

    caplog.set_level("INFO", logger="pblink.server")
    root = "race"
    ids = ["r1", "r2"]
    asked = asyncio.Event()

    async def application(server: LinkServer, conn_ids: Sequence[str]) -> None:
        await until(lambda: all(c in server._unclaimed for c in conn_ids),
                    "the server to hear every device's status")
        waits = [asyncio.create_task(server.connection(c)) for c in conn_ids]
        await until(lambda: server._store is not None and
                    server._store.waiting_count() == len(conn_ids), "the claims")  # type: ignore[union-attr]
        asked.set()
        try:
            await asyncio.Event().wait()
        finally:
            for w in waits:
                w.cancel()

    async with asyncio.timeout(3 * TEST_TIMEOUT), server_for(
        amqtt_broker, client_id="srv-race-a", root=root, state_db=pg.dsn, lease_poll_ms=20
    ) as owner:
        for cid in ids:
            await owner.connection(cid)
        async with device_for(amqtt_broker, "r1", root=root), \
                device_for(amqtt_broker, "r2", root=root), \
                device_for(amqtt_broker, "r9", root=root):
            stop = asyncio.Event()
            run = asyncio.create_task(serve(
                amqtt_broker.host, amqtt_broker.port, ids=ids, root=root,
                client_id="srv-race-b", state_db=pg.dsn, timeout_ms=T, stop=stop,
                application=application))
            try:
                await asyncio.wait_for(asyncio.shield(asked.wait()), TEST_TIMEOUT)
                await until(lambda: "pblink server --ids ... r9" in caplog.text,
                            "the standby's warning about a conn_id nobody serves")
            finally:
                stop.set()
                await run
    assert "device r1 is online under" not in caplog.text, caplog.text
    assert "device r2 is online under" not in caplog.text, caplog.text


async def test_a_conn_id_whose_connection_is_being_set_up_is_not_reported_unserved(
    amqtt_broker: BrokerProcess, pg: TempPostgres, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """F5: between the lease taken and the Connection made, a device heard is not
    reported as not served (connection() runs for it). The claim is held open by the
    test, so no timing luck is involved."""
    from test_server_link import device_for, server_for, until

    from server_apps.store_pg import PgStore

    caplog.set_level("INFO", logger="pblink.server")
    root = "setup"
    release = asyncio.Event()
    real_claim = PgStore.claim

    async def slow_claim(self: PgStore, conn_id: str) -> ConnState:
        state = await real_claim(self, conn_id)
        await release.wait()  # the lease is held, the Connection not made yet
        return state

    monkeypatch.setattr(PgStore, "claim", slow_claim)
    async with asyncio.timeout(3 * TEST_TIMEOUT), server_for(
        amqtt_broker, client_id="srv-setup", root=root, state_db=pg.dsn, lease_poll_ms=20
    ) as server:
        making = asyncio.create_task(server.connection("u1"))
        await until(lambda: server._store is not None and
                    "u1" in server._store._held, "the lease")  # type: ignore[union-attr]
        async with device_for(amqtt_broker, "u1", root=root):
            await until(lambda: "u1" in server._unclaimed, "the server to hear the device")
            release.set()
            conn = await making
            await until(lambda: conn.online, "the device served")
    assert "device u1 is online under" not in caplog.text, caplog.text


async def test_the_lost_line_of_a_process_holding_no_lease_says_so(
    amqtt_broker: BrokerProcess, pg: TempPostgres
) -> None:
    """F6: a standby (no lease) that loses its session does not claim to have lost leases;
    both lines say that a supervisor restarts every process when the database goes."""
    from test_server_link import server_for

    async with asyncio.timeout(3 * TEST_TIMEOUT), server_for(
        amqtt_broker, client_id="srv-own6", root="six", state_db=pg.dsn, lease_poll_ms=20
    ) as owner, server_for(
        amqtt_broker, client_id="srv-stb6", root="six", state_db=pg.dsn, lease_poll_ms=20,
        identity_probe_s=0,
    ) as standby:
        await owner.connection("q1")
        waiting = asyncio.create_task(standby.connection("q1"))
        await terminate_sessions(pg, "srv-stb6")  # first: it cannot take q1 over then
        await terminate_sessions(pg, "srv-own6")
        owner_error, standby_error = await owner.wait_error(), await standby.wait_error()
        with contextlib.suppress(Exception):
            await waiting
    assert "held 1 lease(s)" in str(owner_error), owner_error
    assert "held no lease" in str(standby_error), standby_error
    for error in (owner_error, standby_error):
        assert "leases are gone" not in str(error)
        assert "a supervisor restarts them" in str(error), error


def test_a_database_restart_stops_the_owner_and_the_standby_each_with_a_true_line(
    amqtt_broker: BrokerProcess, pg: TempPostgres, tmp_path: Path
) -> None:
    """F6: `pg_ctl stop -m fast` (a database restart) stops every server process, rc 1:
    the owner's line counts its leases, the standby's says it held none (neither says
    the other processes take over: none is left). On a database of its own."""
    ids = ["w1", "w2"]
    with TempPostgres() as own:
        a = Proc(amqtt_broker, tmp_path, "own-a", ids, own.dsn)
        b: Proc | None = None
        try:
            a.wait_for("demo server on")
            b = Proc(amqtt_broker, tmp_path, "own-b", ids, own.dsn)
            b.wait_for("some wait for their lease")
            own._run("pg_ctl", "-D", str(own.data), "-m", "fast", "-w", "stop")
            for p in (a, b):  # each exits by itself
                p.proc.wait(timeout=TEST_TIMEOUT)
                p._reader.join(timeout=TEST_TIMEOUT)
            for p in (a, b):
                assert p.proc.returncode == 1, "\n".join(x for _, x in p.lines[-20:])
            line_a = [x for _, x in a.lines if x.startswith("pblink server: error:")]
            line_b = [x for _, x in b.lines if x.startswith("pblink server: error:")]
            assert len(line_a) == 1 and len(line_b) == 1, (a.lines, b.lines)
            assert "this process held 2 lease(s)" in line_a[0], line_a
            # (the standby could take a lease in the milliseconds between the ends of the
            # two sessions: then its line counts it; test_the_lost_line_of_a_process_holding
            # _no_lease_says_so checks the no-lease line deterministically)
            assert re.search(r"this process held (no lease; restart it|[12] lease\(s\))",
                             line_b[0]), line_b
            for line in (line_a[0], line_b[0]):
                assert "leases are gone" not in line and "take its conn_ids over" not in line
                assert "every server process of it stops: a supervisor restarts them" in line
        finally:
            for p in (a, b):
                if p is not None and p.proc.poll() is None:
                    p.proc.kill()
                    p.proc.wait()


async def test_a_commit_slower_than_half_the_bound_is_warned_about(
    pg: TempPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """F1: the early warning: a commit held up 2.5 s by a frozen backend (bound 4 s)
    succeeds, with one WARNING naming the database, the time and the bound. (The
    margins are wide so that a loaded machine cannot push the commit past the bound.)"""
    from server_apps.store_pg import PgStore

    caplog.set_level(logging.WARNING, logger="pblink.server.store_pg")
    store = PgStore(pg.dsn, root="slow", owner="st-slow", poll_ms=20, timeout_ms=4000)
    await store.open()
    try:
        await store.claim("s1")
        frozen = Frozen(await backend_pids(pg, "st-slow"))
        with frozen:
            asyncio.get_running_loop().call_later(2.5, frozen.thaw)
            await store.write({"s1": ConnState(unread=["a"])})
        assert store._lost is None
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1, caplog.text
        assert warnings[0].startswith("state database postgresql://pblink@"), warnings
        took = r"is slow: committing 1 row\(s\) took (2\.[5-9]|3\.\d) s"
        assert re.search(took, warnings[0]), warnings
        assert "half the 4 s bound" in warnings[0], warnings
    finally:
        await store.close()
