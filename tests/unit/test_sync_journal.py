"""sync's journal in the report database (gateway.features.usage.journal)."""

from __future__ import annotations

import sqlite3

from gateway.features.sync import Copied
from gateway.features.usage import store
from gateway.features.usage.journal import Journal

COPY = Copied(
    legacy_size=10, legacy_mtime=1_700_000_000, sha256="ab" * 32, sftp_size=10, sftp_mtime=1_700_000_000
)


def test_a_copy_is_remembered_per_route_and_user_across_runs(tmp_path):
    database = str(tmp_path / "usage.sqlite")
    first = Journal(database, "partners", "alice")
    first.put("reports/r\udce9sum\udce9.csv", COPY)  # a Latin-1 name as the gateway reads it
    first.close()
    again = Journal(database, "partners", "alice")
    assert again.get("reports/r\udce9sum\udce9.csv") == COPY
    assert again.get("reports/other.csv") is None
    assert Journal(database, "partners", "bob").get("reports/r\udce9sum\udce9.csv") is None
    assert Journal(database, "other-route", "alice").get("reports/r\udce9sum\udce9.csv") is None
    again.put("reports/r\udce9sum\udce9.csv", Copied(11, None, "cd" * 32, 11, None))
    assert again.get("reports/r\udce9sum\udce9.csv") == Copied(11, None, "cd" * 32, 11, None)


def test_a_usage_database_of_the_previous_schema_gains_the_journal(tmp_path):
    database = str(tmp_path / "usage.sqlite")
    store.connect(database).conn.executescript(
        "DROP TABLE sync_journal; PRAGMA user_version = 1;"
    )  # as v1 left it
    journal = Journal(database, "partners", "alice")
    journal.put("a.csv", COPY)
    assert journal.get("a.csv") == COPY
    journal.close()
    conn = sqlite3.connect(database)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION == 2
    conn.close()
