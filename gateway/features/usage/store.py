"""The usage store: daily totals of what each user's sessions did, in one SQLite file.

One row per (day, user, route, phase, backend, client address, TLS, client software,
outcome); a session's record is added to its row, so the file grows with the number of
distinct ways users connect per day, not with the number of sessions, and rows older than
``retention_days`` are deleted (at start and hourly).

Concurrency: sessions hand records to ``UsageStore.add`` (a queue, never blocking a session);
one writer thread per process commits them in batches. Several worker processes share the
file: WAL journal, ``BEGIN IMMEDIATE`` and a busy timeout serialise their writes, and each
row update is a read-add-write inside that transaction, so no count is lost.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import astuple, dataclass
from pathlib import Path

from gateway.features.usage.session import Key, Record, Totals

log = logging.getLogger("gateway.usage")

#: 2: the sync journal (gateway.features.usage.journal) joined the usage table.
SCHEMA_VERSION = 2
_KEY_COLUMNS = ("day", "user", "route", "phase", "backend", "client_ip", "tls", "client", "outcome")
_SCHEMA = f"""
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
_BUSY_TIMEOUT_MS = 10_000
_PRUNE_EVERY = 3600.0
_STOP = object()


class StoreError(Exception):
    """The usage database cannot be opened or read (the message says why and what to do)."""


def connect(path: str, readonly: bool = False, writer_thread: bool = False) -> sqlite3.Connection:
    """A connection to the usage database (created with its schema unless ``readonly``).

    ``writer_thread``: the connection is handed to another thread (which alone uses it).
    """
    try:
        if readonly:  # a URI: the path's # ? % must be escaped (as_uri does)
            uri = Path(path).absolute().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=_BUSY_TIMEOUT_MS / 1000)
        else:
            conn = sqlite3.connect(
                path,
                timeout=_BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=not writer_thread,
            )
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:  # checked before the schema script would stamp it down
            conn.close()
            raise StoreError(f"usage database {path} is from a newer ftp-sftp-gateway (schema {version})")
        if not readonly:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
    except sqlite3.Error as err:
        raise StoreError(f"usage database {path}: {err}") from err
    return conn


@dataclass(frozen=True)
class Row:
    """One stored row: a key's totals for one day."""

    key: Key
    first_seen: float
    last_seen: float
    totals: Totals


def read(path: str, since: float | None = None, user: str | None = None) -> list[Row]:
    """The rows last seen at or after ``since`` (all if None), of ``user`` only if given."""
    conn = connect(path, readonly=True)
    try:
        columns = ", ".join(_KEY_COLUMNS)
        sql = f"SELECT {columns}, first_seen, last_seen, totals FROM usage WHERE last_seen >= ?"
        args: list[object] = [since if since is not None else float("-inf")]
        if user is not None:
            sql += " AND user = ?"
            args.append(user)
        rows = conn.execute(sql + " ORDER BY user, last_seen", args).fetchall()
    except sqlite3.Error as err:
        raise StoreError(f"usage database {path}: {err}") from err
    finally:
        conn.close()
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


def headcount(path: str, now: float) -> tuple[dict[str, int], int]:
    """(users seen in 7 days by the phase of their latest row, users on plain FTP in 24 h)."""
    conn = connect(path, readonly=True)
    try:
        # SQLite: with max(), the bare column `phase` comes from the row holding the maximum.
        phases = conn.execute(
            "SELECT phase, count(*) FROM (SELECT user, phase, max(last_seen) FROM usage "
            "WHERE last_seen >= ? GROUP BY user) GROUP BY phase",
            (now - 7 * 86400,),
        ).fetchall()
        plain = conn.execute(
            "SELECT count(DISTINCT user) FROM usage WHERE last_seen >= ? AND tls = 0 AND outcome = 'ok'",
            (now - 86400,),
        ).fetchone()[0]
    except sqlite3.Error as err:
        raise StoreError(f"usage database {path}: {err}") from err
    finally:
        conn.close()
    return dict(phases), int(plain)


def active_users(path: str, since: float, limit: int) -> list[str]:
    """Up to ``limit`` users who logged in since ``since``, the most recent first."""
    conn = connect(path, readonly=True)
    try:
        rows = conn.execute(
            "SELECT user FROM usage WHERE outcome = 'ok' AND last_seen >= ? "
            "GROUP BY user ORDER BY max(last_seen) DESC LIMIT ?",
            (since, limit),
        ).fetchall()
    except sqlite3.Error as err:
        raise StoreError(f"usage database {path}: {err}") from err
    finally:
        conn.close()
    return [user for (user,) in rows]


def write(conn: sqlite3.Connection, records: Iterable[Record]) -> None:
    """Add ``records`` to their rows in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for record in records:
            _add(conn, record)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


_WHERE_KEY = " AND ".join(f"{c} = ?" for c in _KEY_COLUMNS)
_SELECT_ROW = f"SELECT first_seen, last_seen, totals FROM usage WHERE {_WHERE_KEY}"
_UPSERT = (
    f"INSERT OR REPLACE INTO usage ({', '.join(_KEY_COLUMNS)}, first_seen, last_seen, totals) "
    f"VALUES ({', '.join('?' * (len(_KEY_COLUMNS) + 3))})"
)


def _count(conn: sqlite3.Connection, where: str, args: tuple[object, ...]) -> int:
    return int(conn.execute(f"SELECT count(*) FROM usage WHERE {where}", args).fetchone()[0])


def _shared_key(conn: sqlite3.Connection, key: Key) -> Key:
    """For a key with no row yet: itself, or the shared row once its day is full (the caps)."""
    if key.outcome != "ok" and _count(conn, "day = ? AND outcome != 'ok'", (key.day,)) >= (
        MAX_REFUSED_ROWS_PER_DAY
    ):
        return dataclasses.replace(key, user="*", client_ip="*", client="*")
    if _count(conn, "day = ? AND user = ?", (key.day, key.user)) >= MAX_ROWS_PER_USER_DAY:
        return dataclasses.replace(key, client_ip="*", client="*")
    return key


def _add(conn: sqlite3.Connection, record: Record) -> None:
    key = record.key
    found = conn.execute(_SELECT_ROW, astuple(key)).fetchone()
    if found is None and (shared := _shared_key(conn, key)) != key:
        key, found = shared, conn.execute(_SELECT_ROW, astuple(shared)).fetchone()
    totals = _totals(found[2]) if found else Totals()
    totals.add(record.totals)
    first = min(found[0], record.first_seen) if found else record.first_seen
    last = max(found[1], record.last_seen) if found else record.last_seen
    conn.execute(_UPSERT, (*astuple(key), first, last, json.dumps(totals.to_json(), sort_keys=True)))


def prune(conn: sqlite3.Connection, retention_days: int, now: float | None = None) -> int:
    """Delete the rows last seen more than ``retention_days`` ago; returns how many."""
    cutoff = (time.time() if now is None else now) - retention_days * 86400
    return conn.execute("DELETE FROM usage WHERE last_seen < ?", (cutoff,)).rowcount


class UsageStore:
    """The gateway's writer: sessions ``add`` records, one thread commits them."""

    def __init__(self, path: str, retention_days: int) -> None:
        self.path, self.retention_days = path, retention_days
        self._queue: queue.Queue[object] = queue.Queue(QUEUE_LIMIT)
        # Opened here, so that a bad file fails the start with a clear message; then used
        # by the writer thread only.
        self._conn = connect(path, writer_thread=True)
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
                self.dropped += 1
                if self.dropped in (1, 1000) or self.dropped % 100_000 == 0:
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
                item = self._queue.get(timeout=_PRUNE_EVERY)
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
        conn = self._conn
        pruned_at = 0.0
        try:
            for batch in self._batches():
                if time.monotonic() - pruned_at >= _PRUNE_EVERY or pruned_at == 0.0:
                    pruned_at = time.monotonic()
                    self._commit(conn, lambda: prune(conn, self.retention_days))
                if batch:
                    self._commit(conn, functools.partial(write, conn, batch), len(batch))
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, action: Callable[[], object], count: int = 0) -> None:
        # A full disk or a locked file must not kill the writer: log and go on with the next
        # batch (the batch is lost, which the log says; sessions are never held up).
        for attempt in range(3):
            try:
                action()
                return
            except sqlite3.OperationalError as err:
                if "locked" in str(err) and attempt < 2:
                    continue
                log.error("usage store %s: %s (%d records not written)", self.path, err, count)
                return
            except Exception:  # a bug or a damaged file must not end the writer for good
                log.exception("usage store %s: %d records not written", self.path, count)
                return
