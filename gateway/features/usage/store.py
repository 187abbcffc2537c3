"""The usage store: daily totals of what each user's sessions did, in an SQLite file or a
PostgreSQL database (``gateway.features.usage.database``: the SQL differences of the two).

One row per (day, user, route, phase, backend, client address, TLS, client software,
outcome); a session's record is added to its row, so the file grows with the number of
distinct ways users connect per day, not with the number of sessions, and rows older than
``retention_days`` are deleted (at start and hourly).

Concurrency: sessions hand records to ``UsageStore.add`` (a queue, never blocking a session);
one writer thread per process commits them in batches. Several worker processes (and, with
PostgreSQL, several instances) share the record: each batch is one transaction that no other
writer interleaves with (SQLite: WAL journal, ``BEGIN IMMEDIATE`` and a busy timeout;
PostgreSQL: an advisory lock), and each row update is a read-add-write inside it, so no
count is lost or doubled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import astuple, dataclass

from gateway.features.usage.database import Database, StoreError, errors, open_database, shown
from gateway.features.usage.session import Key, Record, Totals

__all__ = [
    "Row",
    "StoreError",
    "UsageStore",
    "active_users",
    "connect",
    "copy",
    "headcount",
    "prune",
    "read",
    "write",
]

log = logging.getLogger("gateway.usage")

#: 2: the sync journal (gateway.features.usage.journal) joined the usage table.
SCHEMA_VERSION = 2
_KEY_COLUMNS = ("day", "user", "route", "phase", "backend", "client_ip", "tls", "client", "outcome")
_SQLITE_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS usage (
    day TEXT NOT NULL, user TEXT NOT NULL, route TEXT NOT NULL, phase TEXT NOT NULL,
    backend TEXT NOT NULL, client_ip TEXT NOT NULL, tls INTEGER NOT NULL, client TEXT NOT NULL,
    outcome TEXT NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, totals TEXT NOT NULL,
    PRIMARY KEY ({", ".join(_KEY_COLUMNS)})
);
CREATE INDEX IF NOT EXISTS usage_last_seen ON usage (last_seen);
CREATE INDEX IF NOT EXISTS usage_user ON usage (user, last_seen);
CREATE TABLE IF NOT EXISTS sync_journal (
    route TEXT NOT NULL, user TEXT NOT NULL, path TEXT NOT NULL,
    legacy_size INTEGER NOT NULL, legacy_mtime INTEGER, sha256 TEXT NOT NULL,
    sftp_size INTEGER NOT NULL, sftp_mtime INTEGER, copied_at REAL NOT NULL,
    PRIMARY KEY (route, user, path)
);
PRAGMA user_version = {SCHEMA_VERSION};
"""
_POSTGRES_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS usage (
    day TEXT NOT NULL, "user" TEXT NOT NULL, route TEXT NOT NULL, phase TEXT NOT NULL,
    backend TEXT NOT NULL, client_ip TEXT NOT NULL, tls INTEGER NOT NULL, client TEXT NOT NULL,
    outcome TEXT NOT NULL, first_seen DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION NOT NULL,
    totals TEXT NOT NULL,
    PRIMARY KEY (day, "user", route, phase, backend, client_ip, tls, client, outcome))""",
    "CREATE INDEX IF NOT EXISTS usage_last_seen ON usage (last_seen)",
    'CREATE INDEX IF NOT EXISTS usage_user ON usage ("user", last_seen)',
    """CREATE TABLE IF NOT EXISTS sync_journal (
    route TEXT NOT NULL, "user" TEXT NOT NULL, path BYTEA NOT NULL,
    legacy_size BIGINT NOT NULL, legacy_mtime BIGINT, sha256 TEXT NOT NULL,
    sftp_size BIGINT NOT NULL, sftp_mtime BIGINT, copied_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (route, "user", path))""",
    "CREATE TABLE IF NOT EXISTS ftpgw_schema (version INTEGER NOT NULL)",
]
#: Refused logins (a retired route's, before any password check, and failed ones) carry user
#: names and CLNT texts that are the client's to choose: past this many rows a day they
#: share one row.
MAX_REFUSED_ROWS_PER_DAY = 1000
#: A user's rows a day (one per address, client software, route ...): past this, further
#: addresses and clients of that user share one row (CLNT is the client's to choose).
MAX_ROWS_PER_USER_DAY = 50
#: Records waiting for the writer (at most ~12 KB each); past this a record is dropped and
#: logged, never a session held up.
QUEUE_LIMIT = 10_000
_PRUNE_EVERY = 3600.0
#: Seconds between reconnection attempts while the database is unreachable.
_RETRY_EVERY = 5.0
_STOP = object()


def connect(
    location: str, readonly: bool = False, writer_thread: bool = False, password: str | None = None
) -> Database:
    """A connection to the usage database at ``location``, a file path or a PostgreSQL URL
    (created with its schema unless ``readonly``).

    ``writer_thread``: the connection is handed to another thread (which alone uses it).
    """
    db = open_database(location, password, readonly, writer_thread)
    try:
        version = _schema_version(db)
        if version > SCHEMA_VERSION:  # checked before the schema script would stamp it down
            raise StoreError(
                f"usage database {shown(location)} is from a newer ftp-sftp-gateway (schema {version})"
            )
        if not readonly:
            _create_schema(db)
    except errors() as err:
        db.close()
        raise StoreError(f"usage database {shown(location)}: {str(err).strip()}") from err
    except StoreError:
        db.close()
        raise
    return db


def _schema_version(db: Database) -> int:
    if not db.postgres:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    if db.execute("SELECT to_regclass('ftpgw_schema')").fetchone()[0] is None:
        return 0
    row = db.execute("SELECT max(version) FROM ftpgw_schema").fetchone()
    return int(row[0] or 0)


def _create_schema(db: Database) -> None:
    if not db.postgres:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.conn.executescript(_SQLITE_SCHEMA)
        return
    with db.write_transaction():  # instances starting together create it once
        for statement in _POSTGRES_SCHEMA:
            db.execute(statement)
        if db.execute("SELECT count(*) FROM ftpgw_schema").fetchone()[0] == 0:
            db.execute("INSERT INTO ftpgw_schema (version) VALUES (?)", (SCHEMA_VERSION,))
        else:
            db.execute(
                "UPDATE ftpgw_schema SET version = ? WHERE version < ?", (SCHEMA_VERSION, SCHEMA_VERSION)
            )


@dataclass(frozen=True)
class Row:
    """One stored row: a key's totals for one day."""

    key: Key
    first_seen: float
    last_seen: float
    totals: Totals


@contextlib.contextmanager
def _reading(location: str, password: str | None) -> Iterator[Database]:
    """A read-only connection; any database error becomes a StoreError naming the record."""
    db = connect(location, readonly=True, password=password)
    try:
        yield db
    except errors() as err:
        raise StoreError(f"usage database {shown(location)}: {str(err).strip()}") from err
    finally:
        db.close()


_COLUMNS = ", ".join(f'"{c}"' for c in _KEY_COLUMNS)


def read(
    location: str, since: float | None = None, user: str | None = None, password: str | None = None
) -> list[Row]:
    """The rows last seen at or after ``since`` (all if None), of ``user`` only if given."""
    with _reading(location, password) as db:
        return _rows(db, since, user)


def _rows(db: Database, since: float | None = None, user: str | None = None) -> list[Row]:
    sql = f"SELECT {_COLUMNS}, first_seen, last_seen, totals FROM usage WHERE last_seen >= ?"
    args: list[object] = [since if since is not None else float("-inf")]
    if user is not None:
        sql += ' AND "user" = ?'
        args.append(user)
    rows = db.execute(sql + ' ORDER BY "user", last_seen', args).fetchall()
    out = []
    for r in rows:
        key = Key(**dict(zip(_KEY_COLUMNS, r[: len(_KEY_COLUMNS)], strict=True)))
        key = dataclasses.replace(key, tls=bool(key.tls))
        out.append(Row(key, r[9], r[10], _totals(r[11])))
    return out


def _totals(stored: str) -> Totals:
    """A row's totals; a damaged value counts as nothing (logged) rather than stopping everything."""
    try:
        return Totals.from_json(json.loads(stored))
    except (ValueError, TypeError, AttributeError) as err:
        log.error("usage database: a row's totals are unreadable (%s); counted as empty", err)
        return Totals()


#: Each user's phase in their latest row of the last 7 days, counted by phase.
_LATEST_PHASES = {
    # SQLite: with max(), the bare column `phase` comes from the row holding the maximum.
    False: 'SELECT phase, count(*) FROM (SELECT "user", phase, max(last_seen) FROM usage '
    'WHERE last_seen >= ? GROUP BY "user") GROUP BY phase',
    True: 'SELECT phase, count(*) FROM (SELECT DISTINCT ON ("user") "user", phase FROM usage '
    'WHERE last_seen >= ? ORDER BY "user", last_seen DESC) AS latest GROUP BY phase',
}


def headcount(location: str, now: float, password: str | None = None) -> tuple[dict[str, int], int]:
    """(users seen in 7 days by the phase of their latest row, users on plain FTP in 24 h)."""
    with _reading(location, password) as db:
        phases = db.execute(_LATEST_PHASES[db.postgres], (now - 7 * 86400,)).fetchall()
        plain = db.execute(
            "SELECT count(DISTINCT \"user\") FROM usage WHERE last_seen >= ? AND tls = 0 AND outcome = 'ok'",
            (now - 86400,),
        ).fetchone()[0]
    return dict(phases), int(plain)


def active_users(location: str, since: float, limit: int, password: str | None = None) -> list[str]:
    """Up to ``limit`` users who logged in since ``since``, the most recent first."""
    with _reading(location, password) as db:
        rows = db.execute(
            "SELECT \"user\" FROM usage WHERE outcome = 'ok' AND last_seen >= ? "
            'GROUP BY "user" ORDER BY max(last_seen) DESC LIMIT ?',
            (since, limit),
        ).fetchall()
    return [user for (user,) in rows]


def write(db: Database, records: Iterable[Record]) -> None:
    """Add ``records`` to their rows in one transaction."""
    with db.write_transaction():
        for record in records:
            _add(db, record)


_WHERE_KEY = " AND ".join(f'"{c}" = ?' for c in _KEY_COLUMNS)
_SELECT_ROW = f"SELECT first_seen, last_seen, totals FROM usage WHERE {_WHERE_KEY}"


def _count(db: Database, where: str, args: tuple[object, ...]) -> int:
    return int(db.execute(f"SELECT count(*) FROM usage WHERE {where}", args).fetchone()[0])


def _shared_key(db: Database, key: Key) -> Key:
    """For a key with no row yet: itself, or the shared row once its day is full (the caps)."""
    if key.outcome != "ok" and _count(db, "day = ? AND outcome != 'ok'", (key.day,)) >= (
        MAX_REFUSED_ROWS_PER_DAY
    ):
        return dataclasses.replace(key, user="*", client_ip="*", client="*")
    if _count(db, 'day = ? AND "user" = ?', (key.day, key.user)) >= MAX_ROWS_PER_USER_DAY:
        return dataclasses.replace(key, client_ip="*", client="*")
    return key


def _add(db: Database, record: Record) -> None:
    key = record.key
    found = db.execute(_SELECT_ROW, _key_values(key)).fetchone()
    if found is None and (shared := _shared_key(db, key)) != key:
        key, found = shared, db.execute(_SELECT_ROW, _key_values(shared)).fetchone()
    totals = _totals(found[2]) if found else Totals()
    totals.add(record.totals)
    first = min(found[0], record.first_seen) if found else record.first_seen
    last = max(found[1], record.last_seen) if found else record.last_seen
    upsert = db.replace_sql("usage", _KEY_COLUMNS, ("first_seen", "last_seen", "totals"))
    db.execute(upsert, (*_key_values(key), first, last, json.dumps(totals.to_json(), sort_keys=True)))


def _key_values(key: Key) -> tuple[object, ...]:
    """The key's column values (TLS as 0/1 in both databases)."""
    return tuple(int(v) if isinstance(v, bool) else v for v in astuple(key))


#: sync's journal (gateway.features.usage.journal): its key, and what it keeps per file.
JOURNAL_KEY = ("route", "user", "path")
JOURNAL_VALUES = ("legacy_size", "legacy_mtime", "sha256", "sftp_size", "sftp_mtime", "copied_at")


def journal_put(db: Database) -> str:
    """The statement that writes (or replaces) one journal entry: the key, then the values."""
    return db.replace_sql("sync_journal", JOURNAL_KEY, JOURNAL_VALUES)


def copy(source: str, target: str, password: str | None = None, merge: bool = False) -> tuple[int, int]:
    """Add the usage rows and sync journal of the record at ``source`` to the one at
    ``target`` in one transaction: (rows, journal entries) copied.

    Usage rows add to what is there, so copying the same sessions twice would count them
    twice: unless ``merge``, a target that already holds usage of the days ``source``
    covers is refused (say ``merge`` for another instance's record of the same days).
    """
    with _reading(source, None) as src:
        rows = _rows(src)
        names = ", ".join(f'"{c}"' for c in (*JOURNAL_KEY, *JOURNAL_VALUES))
        journal = src.execute(f"SELECT {names} FROM sync_journal").fetchall()
    db = connect(target, password=password)
    try:
        with db.write_transaction():
            days = sorted({row.key.day for row in rows})
            if days and not merge:
                held = db.execute(
                    "SELECT count(*) FROM usage WHERE day >= ? AND day <= ?", (days[0], days[-1])
                ).fetchone()[0]
                if held:
                    raise StoreError(
                        f"usage database {shown(target)} already holds usage of {days[0]} to {days[-1]}: "
                        "copying would add to it (count those sessions twice if they are the same); "
                        "add --merge if they are another instance's"
                    )
            for row in rows:
                _add(db, Record(row.key, row.first_seen, row.last_seen, row.totals))
            put = journal_put(db)
            for entry in journal:
                db.execute(put, tuple(entry))
    except errors() as err:
        raise StoreError(f"usage database {shown(target)}: {str(err).strip()}") from err
    finally:
        db.close()
    return len(rows), len(journal)


def prune(db: Database, retention_days: int, now: float | None = None) -> int:
    """Delete the rows last seen more than ``retention_days`` ago; returns how many."""
    cutoff = (time.time() if now is None else now) - retention_days * 86400
    return int(db.execute("DELETE FROM usage WHERE last_seen < ?", (cutoff,)).rowcount)


class UsageStore:
    """The gateway's writer: sessions ``add`` records, one thread commits them.

    A PostgreSQL server that goes away (restart, network) stops nothing: the writer keeps
    what it could not write (up to ``QUEUE_LIMIT`` records, the oldest dropped and logged
    beyond), reconnects every ``_RETRY_EVERY`` seconds and writes it once the server is back.
    """

    def __init__(self, location: str, retention_days: int, password: str | None = None) -> None:
        self.location, self.retention_days, self._password = location, retention_days, password
        self.path = shown(location)  # for messages: never a password
        self._queue: queue.Queue[object] = queue.Queue(QUEUE_LIMIT)
        # Opened here, so that a bad file or URL fails the start with a clear message; then
        # used by the writer thread only.
        self._db: Database | None = connect(location, writer_thread=True, password=password)
        self._held: list[Record] = []  # what the database could not take while unreachable
        self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
        self.dropped = 0
        self._thread.start()

    def add(self, records: Iterable[Record]) -> None:
        """Queue ``records`` for the writer (never blocks; drops and logs when far behind)."""
        if not self._thread.is_alive():
            log.error("usage store %s: writer stopped; records of a late session not written", self.path)
            return
        for record in records:
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                self._drop(1)

    def _drop(self, count: int) -> None:
        before, self.dropped = self.dropped, self.dropped + count
        if before == 0 or before < 1000 <= self.dropped or before // 100_000 < self.dropped // 100_000:
            log.error("usage store %s: %d records dropped (writer behind)", self.path, self.dropped)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer (at most ``timeout`` seconds)."""
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.error("usage store %s: writer stuck; %d records not written", self.path, self._queue.qsize())
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error(
                "usage store %s: writer still busy after %.0f s; the rest is not written", self.path, timeout
            )

    def _batches(self) -> Iterator[list[Record]]:
        while True:
            try:
                item = self._queue.get(timeout=_RETRY_EVERY if self._held else _PRUNE_EVERY)
            except queue.Empty:
                yield []
                continue
            batch: list[Record] = []
            while item is not _STOP:
                assert isinstance(item, Record)
                batch.append(item)
                if len(batch) >= 500:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            yield batch
            if item is _STOP:
                return

    def _run(self) -> None:
        pruned_at = 0.0
        try:
            for batch in self._batches():
                self._held.extend(batch)
                if not self._connected():
                    if len(self._held) > QUEUE_LIMIT:
                        self._drop(len(self._held) - QUEUE_LIMIT)
                        del self._held[: len(self._held) - QUEUE_LIMIT]
                    continue
                if time.monotonic() - pruned_at >= _PRUNE_EVERY or pruned_at == 0.0:
                    pruned_at = time.monotonic()
                    if not self._commit(lambda db: prune(db, self.retention_days)):
                        continue  # unreachable: what is held waits for the next attempt
                held, self._held = self._held, []
                if held and not self._commit(functools.partial(_write_to, held), len(held)):
                    self._held = held  # unreachable: kept for the next attempt
        finally:
            if self._db is not None:
                self._db.close()

    def _connected(self) -> bool:
        """True with a usable connection (reconnecting after a loss; the first failure logged)."""
        if self._db is not None:
            return True
        try:
            self._db = connect(self.location, writer_thread=True, password=self._password)
        except StoreError:
            return False
        log.warning("usage store %s: reachable again; writing %d held records", self.path, len(self._held))
        return True

    def _commit(self, action: Callable[[Database], object], count: int = 0) -> bool:
        """Run ``action``; False only when the database became unreachable (retry later).

        A full disk or a locked file must not kill the writer: log and go on with the next
        batch (the batch is lost, which the log says; sessions are never held up).
        """
        db = self._db
        assert db is not None
        for attempt in range(3):
            try:
                action(db)
                return True
            except errors() as err:
                if db.lost():
                    log.warning(
                        "usage store %s: database unreachable (%s); %d records held until it returns",
                        self.path,
                        str(err).strip(),
                        count,
                    )
                    db.close()
                    self._db = None
                    return False
                if "locked" in str(err) and attempt < 2:
                    continue
                log.error("usage store %s: %s (%d records not written)", self.path, err, count)
                return True
            except Exception:  # a bug or a damaged file must not end the writer for good
                log.exception("usage store %s: %d records not written", self.path, count)
                return True
        return True


def _write_to(records: list[Record], db: Database) -> None:
    write(db, records)
