"""A real PostgreSQL 15 for the tests: a throwaway cluster on loopback, two databases.

`pg` (session-wide) is a server with `max_prepared_transactions` > 0 and the
databases `db1` and `db2`; `pg_server` (per test) is one of its own, for
tests that kill or stop it. Both run as the `postgres` user from Debian's
packages (the test harness is root), in a temporary folder, on a free port,
and are stopped by their pid at the end. Tests skip with the reason when no
PostgreSQL server is installed.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from peers import alive, free_port, remove_orphans

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PREFIX = "pmnc-pg-"  # of the temporary folders, in tempfile's directory
DATABASES = ("db1", "db2")


class PgServer:
    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            pytest.skip(f"no PostgreSQL server in {PG_BIN} (Debian package postgresql-15)")
        try:
            self.user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("no postgres user to run PostgreSQL as")
        remove_orphans(PREFIX, "data/postmaster.pid", signal.SIGQUIT)
        self.folder = Path(tempfile.mkdtemp(prefix=PREFIX))
        (self.folder / "owner.pid").write_text(str(os.getpid()))
        os.chown(self.folder, self.user.pw_uid, self.user.pw_gid)
        self.data = self.folder / "data"
        self.port = free_port()
        self._as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                           "-E", "UTF8", "--locale=C.UTF-8", "-N"])
        self.start()
        for database in DATABASES:
            self.admin(f"CREATE DATABASE {database}")

    def _as_postgres(self, argv: list[str]) -> None:
        done = subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True,
                              cwd=self.folder, timeout=60)
        if done.returncode:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} -c max_prepared_transactions=20 "
                   f"-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "server.log"),
                           "-w", "-t", "30", "start", "-o", options])

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def kill(self) -> None:
        """SIGKILL to the postmaster (its backends then die too): a crash."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
        # the next start must not find the old postmaster's files in the way
        deadline = time.monotonic() + 10
        while self._backends_alive() and time.monotonic() < deadline:
            time.sleep(0.02)

    def _backends_alive(self) -> bool:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if str(self.data) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                        return True
                except OSError:
                    pass
        return False

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def dsn(self, database: str = "db1") -> str:
        return f"host=127.0.0.1 port={self.port} dbname={database} user=postgres"

    def config(self, database: str = "db1", **overrides: Any) -> dict[str, Any]:
        """A config_resource_<name>.py dict for this server."""
        return dict({"protocol": "postgresql", "server_address": ("127.0.0.1", self.port), "database": database,
                     "username": "postgres", "password": None, "connect_timeout": 3.0}, **overrides)

    def admin(self, sql: str, database: str = "postgres") -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn(database), autocommit=True) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def query(self, sql: str, database: str = "db1", params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn(database), autocommit=True) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def close(self) -> None:
        try:
            if self.pid() is not None and alive(self.pid() or 0):
                self.stop("immediate")
        except Exception:
            self.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    server = PgServer()
    yield server
    server.close()


@pytest.fixture
def pg_server() -> Iterator[PgServer]:
    server = PgServer()
    yield server
    server.close()
