"""A throwaway PostgreSQL server for the tests: its own cluster (initdb) on a free loopback
port, run as the ``postgres`` user by pg_ctl (no system service), with password
authentication over TCP for one role the gateway uses."""

from __future__ import annotations

import glob
import itertools
import shutil
import subprocess
from pathlib import Path

from tests.helpers.sshd import free_port

ROLE = "ftpgw"
PASSWORD = "Ftpgw-db-pass-1"


def binaries() -> Path | None:
    """The directory of PostgreSQL's server programs (Debian keeps them per version), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """One cluster in ``base``; ``url(name)`` names a new empty database on it."""

    def __init__(self, base: Path) -> None:
        self.base, self.port = base, free_port()
        self.data, self.sockets = base / "data", base / "sockets"
        self._bin = binaries()
        self._names = itertools.count(1)

    def _as_postgres(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True, text=True, cwd="/"
        )

    def start(self) -> PostgresServer:
        """initdb, start on 127.0.0.1 and create the gateway's role."""
        assert self._bin is not None, "PostgreSQL is not installed (tests/run.sh installs it)"
        shutil.rmtree(self.base, ignore_errors=True)
        self.sockets.mkdir(parents=True)
        shutil.chown(self.base, "postgres")
        shutil.chown(self.sockets, "postgres")
        self._as_postgres(
            str(self._bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--no-sync",
            "--auth-host=scram-sha-256", "--auth-local=trust",
        )  # fmt: skip
        self.restart()
        self.sql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
        return self

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement as the superuser (over the Unix socket); its output."""
        return self._as_postgres(
            "psql", "-h", str(self.sockets), "-p", str(self.port), "-d", database, "-X", "-q", "-t", "-A",
            "-v", "ON_ERROR_STOP=1", "-c", statement,
        ).stdout  # fmt: skip

    def url(self) -> str:
        """A new empty database owned by the gateway's role: its URL (no password in it)."""
        name = f"ftpgw_test_{next(self._names)}"
        self.sql(f"CREATE DATABASE {name} OWNER {ROLE}")
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Stop the server (fast: sessions are ended)."""
        if self.data.exists():
            subprocess.run(
                ["runuser", "-u", "postgres", "--", str(self._bin / "pg_ctl"), "-D", str(self.data),
                 "-m", "fast", "-w", "stop"],
                capture_output=True, cwd="/",
            )  # fmt: skip

    def restart(self) -> None:
        """Start the server (again, after ``stop``: same port and data)."""
        assert self._bin is not None
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            str(self._bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.base / "log"),
            "-w", "-t", "30", "start",
        )  # fmt: skip
