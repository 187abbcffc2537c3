"""The atomic-upload rules that need no server (gateway.backends.sftp.uploads): which file a
rename may replace, temporary names, and the memory of failed replacements."""

from __future__ import annotations

import stat

import pytest
from asyncssh import SFTPAttrs

from gateway.backends.sftp.uploads import FailedReplacements, may_replace, temporary_name
from gateway.core.storage import is_upload_in_progress


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


def test_a_rename_replaces_only_a_writable_file_of_the_same_owner_and_group():
    mine = SFTPAttrs(uid=1001, gid=1001, permissions=stat.S_IFREG | 0o600)
    assert may_replace(SFTPAttrs(uid=1001, gid=1001, permissions=stat.S_IFREG | 0o644), mine)
    # Another account's file in a shared directory: a rename would take it over.
    assert not may_replace(SFTPAttrs(uid=1002, gid=1001, permissions=stat.S_IFREG | 0o666), mine)
    assert not may_replace(SFTPAttrs(uid=1001, gid=1003, permissions=stat.S_IFREG | 0o644), mine)
    # Read-only for its owner: in place, the backend refuses the write as it would anyway.
    assert not may_replace(SFTPAttrs(uid=1001, gid=1001, permissions=stat.S_IFREG | 0o444), mine)
    # A server that does not tell owners: any write bit will do.
    unknown = SFTPAttrs(permissions=stat.S_IFREG | 0o644)
    assert may_replace(unknown, SFTPAttrs(permissions=stat.S_IFREG | 0o600))
    assert not may_replace(SFTPAttrs(permissions=stat.S_IFREG | 0o444), SFTPAttrs())


@pytest.mark.parametrize("name", ["a.csv", "r\udce9sum\udce9.txt", "x" * 255])
def test_the_temporary_name_is_hidden_in_the_same_directory_and_fits(name):
    temp = temporary_name(f"/in/{name}")
    directory, _, base = temp.rpartition("/")
    assert directory == "/in" and is_upload_in_progress(base)
    assert len(base.encode("utf-8", "surrogateescape")) <= 255
    assert temporary_name(f"/in/{name}") != temp  # a new name for every upload
