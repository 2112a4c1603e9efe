"""A throw-away PostgreSQL server for tests and benchmarks (no system service needed).

::

    with TempPostgres() as pg:
        LinkServer(..., state_db=pg.dsn)

``initdb`` into a new temporary folder (removed at the end; not pytest's
``tmp_path``: as root the server runs as ``postgres``, which cannot enter
it), ``pg_ctl start`` on a free loopback port (Unix socket in the same
folder), ``pg_ctl stop -m immediate`` at the end. The
binaries are looked up on ``PATH`` and in Debian's ``/usr/lib/postgresql/<v>/
bin`` (the ``postgresql`` package does not put them on ``PATH``); when run as
root (CI), PostgreSQL runs as the ``postgres`` user (it refuses to run as
root) and the folder is handed to that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType


class PostgresMissingError(RuntimeError):
    """The PostgreSQL server binaries (initdb, pg_ctl) are not installed."""


def find_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or ``None``: PATH first, then Debian's."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(cand) / "initdb").exists() and (Path(cand) / "pg_ctl").exists():
            return Path(cand)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TempPostgres:
    """One PostgreSQL cluster in a new temporary folder on a free port, user ``pblink``.

    Connect with ``dsn`` (no password: trust on loopback only).

    Raises:
        PostgresMissingError: no ``initdb``/``pg_ctl`` (install Debian's
            ``postgresql`` package).
        subprocess.CalledProcessError: ``initdb`` or ``pg_ctl`` failed (its
            log is ``<folder>/pg.log``, kept until ``stop()``).
    """

    def __init__(self) -> None:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise PostgresMissingError(
                "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
                "/usr/lib/postgresql/*/bin: apt-get install postgresql")
        self.bin_dir = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="pblink-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "pg.log"
        self.port = _free_port()
        self.dsn = f"postgresql://pblink@127.0.0.1:{self.port}/postgres"
        self._user: str | None = None
        if os.geteuid() == 0:
            self._user = "postgres"
            try:
                pwd.getpwnam(self._user)
            except KeyError:
                raise PostgresMissingError(
                    "running as root, and PostgreSQL refuses root: no 'postgres' user "
                    "to run it as (apt-get install postgresql creates one)") from None

    def _run(self, *argv: str) -> None:
        subprocess.run([str(self.bin_dir / argv[0]), *argv[1:]], check=True,
                       user=self._user, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                       timeout=120, cwd=self.folder)

    def start(self) -> TempPostgres:
        if self._user is not None:
            ent = pwd.getpwnam(self._user)
            os.chown(self.folder, ent.pw_uid, ent.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "pblink", "--auth=trust",
                  "-E", "UTF8", "--no-sync")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                  "-c fsync=on -c max_connections=50", "start")
        return self

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> TempPostgres:
        try:
            return self.start()
        except BaseException:  # also an interrupt mid-start: pg_ctl may have started it
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
