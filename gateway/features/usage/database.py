"""Where the usage record lives: an SQLite file (one machine) or a PostgreSQL server (several
gateway instances), behind one small connection API that holds every SQL difference of the two.

The SQL the store writes uses ``?`` placeholders and double-quoted identifiers (``"user"``
is a reserved word in PostgreSQL); ``Database.execute`` adapts the placeholders. Writers
serialise themselves with ``Database.write_transaction``: SQLite's ``BEGIN IMMEDIATE``, and
in PostgreSQL a transaction-scoped advisory lock, so the store's read-add-write of a row
is never interleaved with another writer's, whichever process or instance it runs in.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gateway.config import is_postgres

#: Seconds a writer waits for another one before its batch fails (logged, not fatal).
BUSY_TIMEOUT = 10.0
#: The advisory lock key writers of the usage record take in PostgreSQL ("ftpgw" in ASCII).
_WRITE_LOCK = 0x6674706777


class StoreError(Exception):
    """The usage database cannot be opened or read (the message says why and what to do)."""


def errors() -> tuple[type[Exception], ...]:
    """The exception types a database call may raise (psycopg's only where it is installed)."""
    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


def shown(location: str) -> str:
    """``location`` for messages: a URL without any password in it."""
    if not is_postgres(location):
        return location
    scheme, _, rest = location.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}://{credentials.split(':')[0]}{at}{host}" if at else location


class Database:
    """One connection to the usage record (used by one thread at a time)."""

    def __init__(self, conn: Any, postgres: bool, location: str) -> None:
        self.conn, self.postgres, self.location = conn, postgres, location

    def execute(self, sql: str, args: Sequence[object] = ()) -> Any:
        """Run one statement (``?`` placeholders); returns its cursor."""
        if self.postgres:
            return self.conn.execute(sql.replace("?", "%s"), args)
        return self.conn.execute(sql, args)

    @contextlib.contextmanager
    def write_transaction(self) -> Iterator[None]:
        """A transaction no other writer of this record interleaves with (committed at the end)."""
        if self.postgres:
            with self.conn.transaction():
                self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
                yield
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def replace_sql(self, table: str, key: Sequence[str], columns: Sequence[str]) -> str:
        """An insert of ``key`` + ``columns`` that replaces the row with the same key."""
        names = ", ".join(f'"{c}"' for c in (*key, *columns))
        marks = ", ".join("?" * (len(key) + len(columns)))
        if not self.postgres:
            return f"INSERT OR REPLACE INTO {table} ({names}) VALUES ({marks})"
        updates = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in columns)
        conflict = ", ".join(f'"{c}"' for c in key)
        return (
            f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT ({conflict}) DO UPDATE SET {updates}"
        )

    def lost(self) -> bool:
        """True when the server connection is gone (a PostgreSQL restart, the network)."""
        return self.postgres and bool(self.conn.closed or self.conn.broken)

    def close(self) -> None:
        """Close the connection (whatever state it is in)."""
        with contextlib.suppress(Exception):
            self.conn.close()


def open_database(
    location: str, password: str | None = None, readonly: bool = False, writer_thread: bool = False
) -> Database:
    """A connection to the record at ``location`` (a file path or a PostgreSQL URL).

    ``writer_thread``: the connection is handed to another thread (which alone uses it).
    """
    if is_postgres(location):
        return _open_postgres(location, password, readonly)
    try:
        if readonly:  # a URI: the path's # ? % must be escaped (as_uri does)
            uri = Path(location).absolute().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT)
        else:
            conn = sqlite3.connect(
                location, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=not writer_thread
            )
    except sqlite3.Error as err:
        raise StoreError(f"usage database {location}: {err}") from err
    return Database(conn, False, location)


def _open_postgres(location: str, password: str | None, readonly: bool) -> Database:
    try:
        import psycopg
    except ImportError:
        raise StoreError(
            f"usage database {shown(location)}: PostgreSQL needs the psycopg driver: "
            "pip install 'ftp-sftp-gateway[postgres]'"
        ) from None
    options = f"-c lock_timeout={int(BUSY_TIMEOUT * 1000)}"  # a writer waits at most this long
    if readonly:
        options += " -c default_transaction_read_only=on"
    try:
        conn = psycopg.connect(
            location,
            password=password,
            autocommit=True,
            connect_timeout=int(BUSY_TIMEOUT),
            options=options,
            application_name="ftp-sftp-gateway",
        )
    except psycopg.Error as err:
        raise StoreError(f"usage database {shown(location)}: {str(err).strip()}") from err
    return Database(conn, True, location)
