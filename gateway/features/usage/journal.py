"""sync's journal in the report database: per route, user and file, what sync last copied.

A second run of ``ftp-sftp-gateway sync`` reads it to tell its own earlier copies (still
the size and time it left) from files changed on the SFTP side since (see gateway.features.sync).
Paths are kept as the gateway reads names (UTF-8, other bytes as surrogate escapes).
"""

from __future__ import annotations

import time

from gateway.features.sync import Copied
from gateway.features.usage.database import errors
from gateway.features.usage.store import JOURNAL_VALUES, StoreError, connect, journal_put

_COLUMNS = ", ".join(JOURNAL_VALUES[:-1])  # what Copied holds (not copied_at)


def _key(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


class Journal:
    """The journal of one route and user, in the usage database at ``location`` (SQLite or PostgreSQL)."""

    def __init__(self, location: str, route: str, user: str, password: str | None = None) -> None:
        self._db = connect(location, password=password)
        self._route, self._user = route, user
        self._put = journal_put(self._db)

    def get(self, path: str) -> Copied | None:
        """The last copy to ``path``, None if sync never copied it."""
        try:
            row = self._db.execute(
                f'SELECT {_COLUMNS} FROM sync_journal WHERE route = ? AND "user" = ? AND path = ?',
                (self._route, self._user, _key(path)),
            ).fetchone()
        except errors() as err:
            raise StoreError(f"sync journal: {err}") from err
        return Copied(*row) if row is not None else None

    def put(self, path: str, copied: Copied) -> None:
        """Remember a copy to ``path`` (committed at once: an interrupted run keeps it)."""
        try:
            self._db.execute(
                self._put,
                (
                    self._route,
                    self._user,
                    _key(path),
                    copied.legacy_size,
                    copied.legacy_mtime,
                    copied.sha256,
                    copied.sftp_size,
                    copied.sftp_mtime,
                    time.time(),
                ),
            )
        except errors() as err:
            raise StoreError(f"sync journal: {err}") from err

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()
