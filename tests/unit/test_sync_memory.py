"""gateway.features.sync on two in-memory storages: what is copied, skipped and left alone as a
conflict, with the journal; no servers needed (the same rules run against real servers in
tests/integration/test_sync*.py)."""

from __future__ import annotations

from gateway.core.memory_storage import MemoryStorage
from gateway.core.storage import Kind
from gateway.features.sync import PARTIAL_SUFFIX, Copied, Trees, apply, plan


class Journal:
    def __init__(self) -> None:
        self.entries: dict[str, Copied] = {}

    def get(self, path: str) -> Copied | None:
        return self.entries.get(path)

    def put(self, path: str, copied: Copied) -> None:
        self.entries[path] = copied

    def close(self) -> None:
        pass


class Progress:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.bytes = 0

    def step(self, relative: str, action: str) -> None:
        self.lines.append(f"{action}: {relative}")

    def advance(self, nbytes: int) -> None:
        self.bytes += nbytes


def put(storage: MemoryStorage, path: str, data: bytes, mtime: int = 1_700_000_000) -> None:
    stream = storage.open_write(path, "w")
    stream.write(data)
    stream.close()
    storage.set_mtime(path, mtime)


def trees() -> tuple[MemoryStorage, MemoryStorage, Trees]:
    legacy, sftp = MemoryStorage("/legacy"), MemoryStorage("/home/p")
    return legacy, sftp, Trees(legacy, "/legacy", sftp, "/home/p")


def run(t: Trees, journal: Journal | None = None, overwrite: bool = False, dry_run: bool = False):
    progress = Progress()
    summary = apply(t, plan(t, overwrite, journal).steps, progress, dry_run, journal, None, overwrite)
    return summary, progress


def test_copies_keep_content_time_and_mode_then_nothing_is_left():
    legacy, sftp, t = trees()
    legacy.mkdir("/legacy/reports")
    put(legacy, "/legacy/reports/a.csv", b"a" * 1000)
    legacy.chmod("/legacy/reports/a.csv", 0o640)
    journal = Journal()
    dry, _ = run(t, journal, dry_run=True)
    assert (dry.copied, dry.bytes_copied) == (1, 1000) and list(sftp.list_dir("/home/p")) == []
    summary, progress = run(t, journal)
    assert (summary.copied, summary.bytes_copied, progress.bytes) == (1, 1000, 1000)
    copied = sftp.stat("/home/p/reports/a.csv")
    assert (copied.mtime, copied.mode, sftp.read_bytes("/home/p/reports/a.csv")) == (
        1_700_000_000,
        0o640,
        b"a" * 1000,
    )
    again, _ = run(t, journal)
    assert (again.copied, again.skipped) == (0, 1)


def synced(data: bytes) -> tuple[MemoryStorage, MemoryStorage, Trees, Journal]:
    """Trees whose legacy r.csv holds ``data``, synced once (journalled)."""
    legacy, sftp, t = trees()
    put(legacy, "/legacy/r.csv", data)
    journal = Journal()
    run(t, journal)
    return legacy, sftp, t, journal


def test_a_file_changed_on_sftp_is_a_conflict_unless_overwrite():
    _, sftp, t, journal = synced(b"legacy\n")
    put(sftp, "/home/p/r.csv", b"the partner's newer version\n", mtime=1_800_000_000)
    summary, _ = run(t, journal)
    assert summary.conflicts and "changed on SFTP since sync copied it" in summary.conflicts[0]
    assert sftp.read_bytes("/home/p/r.csv") == b"the partner's newer version\n"
    forced, _ = run(t, journal, overwrite=True)
    assert forced.copied == 1 and sftp.read_bytes("/home/p/r.csv") == b"legacy\n"


def test_a_legacy_update_of_a_file_sync_wrote_is_copied():
    legacy, sftp, t, journal = synced(b"v1\n")
    put(legacy, "/legacy/r.csv", b"v2, later\n", mtime=1_700_000_100)
    summary, progress = run(t, journal)
    assert summary.copied == 1 and "update: r.csv" in progress.lines
    assert sftp.read_bytes("/home/p/r.csv") == b"v2, later\n"


def test_without_a_journal_every_difference_is_a_conflict_and_equal_files_are_skipped():
    legacy, sftp, t = trees()
    put(legacy, "/legacy/same.txt", b"same")
    put(sftp, "/home/p/same.txt", b"same")
    put(legacy, "/legacy/other.txt", b"legacy")
    put(sftp, "/home/p/other.txt", b"sftp!!")
    summary, _ = run(t)
    assert (summary.skipped, len(summary.conflicts)) == (1, 1)
    assert "differs on SFTP and sync did not write it" in summary.conflicts[0]


def test_a_partial_left_by_a_killed_run_is_continued():
    legacy, sftp, t = trees()
    put(legacy, "/legacy/big.bin", bytes(range(256)) * 400)
    put(sftp, f"/home/p/.big.bin{PARTIAL_SUFFIX}", (bytes(range(256)) * 400)[:30_000])
    summary, progress = run(t, Journal())
    assert "copy, resuming at byte 30000: big.bin" in progress.lines
    assert summary.bytes_copied == 256 * 400 - 30_000
    assert sftp.read_bytes("/home/p/big.bin") == bytes(range(256)) * 400
    assert {e.name for e in sftp.list_dir("/home/p")} == {"big.bin"}


def test_a_service_account_gives_the_copies_to_the_user():
    legacy, sftp, t = trees()
    legacy.mkdir("/legacy/d")
    put(legacy, "/legacy/d/f.txt", b"f")
    steps = plan(t).steps
    apply(t, steps, Progress(), owner=(1234, 99))
    assert (sftp.stat("/home/p/d").uid, sftp.stat("/home/p/d/f.txt").gid) == (1234, 99)
    assert sftp.stat("/home/p/d").kind is Kind.DIR
