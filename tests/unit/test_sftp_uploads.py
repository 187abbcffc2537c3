"""The memory of failed atomic replacements (gateway.backends.sftp.uploads.FailedReplacements)."""

from __future__ import annotations

from gateway.backends.sftp.uploads import FailedReplacements


def test_remembered_per_user_and_path_until_forgotten_or_expired():
    now = [0.0]
    failed = FailedReplacements(ttl=60, clock=lambda: now[0])
    failed.remember("alice", "/in/a.csv", (10, 1700000000))
    assert failed.left_in_place("alice", "/in/a.csv") == (10, 1700000000)
    assert failed.left_in_place("bob", "/in/a.csv") is None  # another backend account
    assert failed.left_in_place("alice", "/in/b.csv") is None
    failed.forget("alice", "/in/a.csv")
    assert failed.left_in_place("alice", "/in/a.csv") is None
    failed.remember("alice", "/in/a.csv", (10, 1700000000))
    now[0] = 61
    assert failed.left_in_place("alice", "/in/a.csv") is None


def test_bounded_oldest_out_first():
    failed = FailedReplacements(limit=3)
    for n in range(5):
        failed.remember("alice", f"/f{n}", (n, None))
    failed.remember("alice", "/f2", (2, None))  # remembered again: now the newest
    failed.remember("alice", "/f5", (5, None))
    kept = {n for n in range(6) if failed.left_in_place("alice", f"/f{n}") == (n, None)}
    assert kept == {2, 4, 5}
