"""The usage record's contract: the same tests over an SQLite file and a PostgreSQL database
(a real server, tests/helpers/postgres.py): rows add up, reads filter, pruning, the growth
caps, the headcount, the writer, and concurrent writers that never lose or double a count."""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter

from gateway.features.sync import Copied
from gateway.features.usage import store
from gateway.features.usage.journal import Journal
from gateway.features.usage.session import Record, Totals
from gateway.features.usage.store import UsageStore
from tests.unit.test_usage import DAY, T0, key, record


def write(location: str, *records: Record) -> None:
    conn = store.connect(location)
    try:
        store.write(conn, records)
    finally:
        conn.close()


def test_records_with_one_key_add_up_to_one_row(record_db):
    db = record_db
    one = Totals(logins=1, downloads=2, bytes_down=10, commands=Counter({"RETR": 2}))
    two = Totals(logins=1, uploads=1, bytes_up=5, commands=Counter({"RETR": 1, "STOR": 1}))
    write(db, record(T0 + 100, T0 + 200, one))
    write(db, record(T0 + 50, T0 + 150, two))
    (row,) = store.read(db)
    assert row.key == key()
    assert row.key.tls is True
    assert (row.first_seen, row.last_seen) == (T0 + 50, T0 + 200)
    assert row.totals == Totals(
        logins=2, downloads=2, bytes_down=10, uploads=1, bytes_up=5, commands=Counter({"RETR": 3, "STOR": 1})
    )


def test_different_keys_are_different_rows_and_read_filters(record_db):
    db = record_db
    write(
        db,
        record(T0, T0 + 10),
        record(T0, T0 + 20, client_ip="192.0.2.2"),
        record(T0, T0 + 30, tls=False),
        record(T0 - DAY, T0 - DAY, day="2023-11-13"),
        record(T0, T0 + 5, user="bob"),
    )
    rows = store.read(db)
    assert [(r.key.user, r.last_seen) for r in rows] == [
        ("alice", T0 - DAY),
        ("alice", T0 + 10),
        ("alice", T0 + 20),
        ("alice", T0 + 30),
        ("bob", T0 + 5),
    ]
    assert [r.last_seen for r in store.read(db, since=T0 + 10)] == [T0 + 10, T0 + 20, T0 + 30]
    assert [r.key.user for r in store.read(db, since=T0 + 5)] == ["alice"] * 3 + ["bob"]
    assert [r.last_seen for r in store.read(db, since=T0 + 10, user="alice")] == [
        T0 + 10,
        T0 + 20,
        T0 + 30,
    ]
    assert [r.key.user for r in store.read(db, user="bob")] == ["bob"]
    assert store.read(db, user="carol") == []


def test_prune_deletes_only_rows_last_seen_before_the_cutoff(record_db):
    db = record_db
    now = T0 + 30 * DAY
    cutoff = now - 7 * DAY
    write(
        db,
        record(T0, cutoff - 1, user="old"),
        record(T0, cutoff - 1000, user="older"),
        record(T0, cutoff, user="edge"),  # exactly at the cutoff: kept
        record(T0, now, user="new"),
    )
    conn = store.connect(db)
    try:
        assert store.prune(conn, 7, now) == 2
        assert store.prune(conn, 7, now) == 0
    finally:
        conn.close()
    assert [r.key.user for r in store.read(db)] == ["edge", "new"]


def retired(user: str, **changes) -> Record:
    fields = {"phase": "retired", "backend": "-", "outcome": "retired", "route": "old", "tls": False}
    return record(T0, T0 + 1, Totals(logins=1), user=user, **{**fields, **changes})


def test_retired_rows_per_day_are_capped(record_db, monkeypatch):
    monkeypatch.setattr(store, "MAX_REFUSED_ROWS_PER_DAY", 2)
    db = record_db
    write(db, retired("a", client_ip="192.0.2.1"), retired("b", client_ip="192.0.2.2"))
    write(db, retired("c", client_ip="192.0.2.3"), retired("a", client_ip="192.0.2.1"))
    write(
        db, retired("d", client_ip="192.0.2.4", phase="sftp", outcome="bad_credentials")
    )  # failed: capped too
    write(db, retired("e", client_ip="192.0.2.5", day="2023-11-15"))  # another day: its own count
    write(db, record(T0, T0 + 1, user="f"))  # logged-in users are never folded
    rows = {(r.key.day, r.key.user, r.key.client_ip, r.key.outcome): r.totals.logins for r in store.read(db)}
    assert rows == {
        ("2023-11-14", "a", "192.0.2.1", "retired"): 2,
        ("2023-11-14", "b", "192.0.2.2", "retired"): 1,
        ("2023-11-14", "*", "*", "retired"): 1,
        ("2023-11-14", "*", "*", "bad_credentials"): 1,
        ("2023-11-15", "e", "192.0.2.5", "retired"): 1,
        ("2023-11-14", "f", "192.0.2.1", "ok"): 1,
    }


def test_retired_rows_cap_holds_whatever_the_client_says(record_db, monkeypatch):
    monkeypatch.setattr(store, "MAX_REFUSED_ROWS_PER_DAY", 2)
    db = record_db
    write(db, *(retired(f"u{n}", client=f"tool{n}") for n in range(10)))
    assert len(store.read(db)) == 3


def test_a_users_rows_a_day_are_capped_whatever_clnt_says(record_db, monkeypatch):
    monkeypatch.setattr(store, "MAX_ROWS_PER_USER_DAY", 3)
    db = record_db
    write(db, *(record(T0, T0 + n, user="alice", client=f"tool{n}") for n in range(10)))
    write(db, record(T0, T0, user="bob", client="curl"))
    rows = store.read(db)
    alice = [r for r in rows if r.key.user == "alice"]
    assert len(alice) == 4 and sum(r.totals.logins for r in alice) == 10  # nothing lost
    assert [r.key.client for r in alice].count("*") == 1
    assert [r.key.client for r in rows if r.key.user == "bob"] == ["curl"]


def test_headcount(record_db):
    db = record_db
    now = T0
    write(
        db,
        record(now - 3 * DAY, now - 3 * DAY, user="alice", phase="legacy", tls=False),
        record(now - 30 * 3600, now - 30 * 3600, user="alice", phase="sftp", tls=True),  # her latest
        record(now - 2 * 3600, now - 2 * 3600, user="bob", phase="shadow", tls=False),
        record(now - 3600, now - 3600, user="carol", phase="retired", outcome="retired", tls=False),
        record(now - 8 * DAY, now - 8 * DAY, user="dave", phase="legacy", tls=False),  # too old
        record(now - 10 * 3600, now - 10 * 3600, user="erin", phase="legacy", tls=False),
        record(now - 10 * 3600, now - 10 * 3600, user="erin", phase="legacy", tls=False, client_ip="x"),
        record(now - 30 * 3600, now - 30 * 3600, user="frank", phase="legacy", tls=False),
    )
    phases, plain = store.headcount(db, now)
    assert phases == {"sftp": 1, "shadow": 1, "retired": 1, "legacy": 2}
    assert plain == 2  # bob and erin; carol was refused, alice and frank more than a day ago


def test_usage_store_writes_what_it_was_given(record_db):
    db = record_db
    now = time.time()  # the writer prunes by the real clock
    usage = UsageStore(db, 90)
    usage.add([record(now - 10, now - 5), record(now - 4, now - 1), record(now - 3, now - 2, user="bob")])
    usage.close()
    assert usage.dropped == 0
    rows = store.read(db)
    assert [(r.key.user, r.totals.logins, r.first_seen, r.last_seen) for r in rows] == [
        ("alice", 2, now - 10, now - 1),
        ("bob", 1, now - 3, now - 2),
    ]


def test_active_users_are_the_most_recent_logins_first(record_db):
    write(
        record_db,
        record(T0, T0 + 30, user="carol"),
        record(T0, T0 + 10, user="alice"),
        record(T0, T0 + 20, user="bob"),
        record(T0, T0 + 40, user="mallory", outcome="bad_credentials"),
    )
    assert store.active_users(record_db, T0, 2) == ["carol", "bob"]
    assert store.active_users(record_db, T0 + 15, 10) == ["carol", "bob"]


def test_the_sync_journal_keeps_the_last_copy_of_each_file(record_db):
    journal = Journal(record_db, "partners", "alice")
    name = "out/r\udce9sum\udce9.csv"  # a Latin-1 name as the gateway reads it
    assert journal.get(name) is None
    journal.put(name, Copied(10, 1000, "ab" * 32, 10, 1001))
    journal.put(name, Copied(12, 2000, "cd" * 32, 12, 2001))
    journal.close()
    again = Journal(record_db, "partners", "alice")
    assert again.get(name) == Copied(12, 2000, "cd" * 32, 12, 2001)
    assert Journal(record_db, "partners", "bob").get(name) is None
    again.close()


def _writer(location: str, worker: int, sessions: int) -> None:
    """One gateway process: ``sessions`` sessions of two users, through its own UsageStore."""
    usage = UsageStore(location, 90)
    now = time.time()
    for n in range(sessions):
        usage.add(
            [
                record(
                    now, now, Totals(logins=1, uploads=n % 3), user=f"u{n % 2}", client_ip=f"10.0.0.{worker}"
                )
            ]
        )
    usage.close(timeout=120)
    assert usage.dropped == 0


def test_writers_in_four_processes_neither_lose_nor_double_a_count(record_db):
    sessions = 5000
    context = multiprocessing.get_context("spawn")  # fresh processes, as gateway instances are
    writers = [context.Process(target=_writer, args=(record_db, w, sessions)) for w in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(300)
        assert w.exitcode == 0
    rows = store.read(record_db)
    assert sum(r.totals.logins for r in rows) == 4 * sessions
    assert sum(r.totals.uploads for r in rows) == 4 * sum(n % 3 for n in range(sessions))
    assert len(rows) == 8  # two users from four addresses
