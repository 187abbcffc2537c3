"""``ftp-sftp-gateway sync``: copy a user's tree from the legacy FTP server to SFTP;
idempotent, resumable after an interruption, verified, and never losing what was written
on the SFTP side (conflicts), with modification times and modes kept."""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import pwd
import subprocess

import pytest
import yaml

from tests.helpers.gateway_env import CLI, PASSWORD, legacy_config


def write_config(sshd, legacy_ftp, user2, tmp_path, phase="shadow", journal=False):
    doc = legacy_config(sshd, legacy_ftp, phase=phase)
    doc["routes"][0]["match"]["user"] = user2.name
    if journal:
        doc["report"] = {"database": str(tmp_path / "usage.sqlite")}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def config_file(sshd, legacy_ftp, user2, tmp_path):
    return write_config(sshd, legacy_ftp, user2, tmp_path)


@pytest.fixture
def journalled(sshd, legacy_ftp, user2, tmp_path):
    """The config with report.database set: sync keeps its journal there."""
    return write_config(sshd, legacy_ftp, user2, tmp_path, journal=True)


def write_as(user2, path, data):
    """Write a file on the SFTP side as the user would (theirs, so sync may replace it)."""
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chown(path, pwd.getpwnam(user2.name).pw_uid, -1)


def run_sync(config_file, user2, *extra):
    env = {**os.environ, "GW_SYNC_PW": PASSWORD}
    cmd = [*CLI, "sync", "--config", str(config_file), "--user", user2.name, "--password-env", "GW_SYNC_PW"]
    return subprocess.run([*cmd, *extra], capture_output=True, text=True, env=env, timeout=120)


def tree(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_dry_run_then_sync_then_nothing_left(config_file, legacy_ftp, user2):
    (legacy_ftp.twin_home / "sub" / "deeper").mkdir(parents=True)
    (legacy_ftp.twin_home / "a.csv").write_bytes(os.urandom(300_000))
    (legacy_ftp.twin_home / "sub" / "b.txt").write_text("b\n")
    (legacy_ftp.twin_home / "sub" / "deeper" / "c.bin").write_bytes(os.urandom(1000))
    dry = run_sync(config_file, user2, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "3 files: 3 would copy (301002 bytes), 0 already matching" in dry.stdout
    assert tree(user2.home) == {}
    first = run_sync(config_file, user2)
    assert first.returncode == 0, first.stderr
    summary = "3 files: 3 copied (301002 bytes), 0 already matching, 0 conflicts, 0 mismatches, 0 errors"
    assert summary in first.stdout
    assert tree(user2.home) == tree(legacy_ftp.twin_home)
    again = run_sync(config_file, user2)  # idempotent
    assert "3 files: 0 copied (0 bytes), 3 already matching" in again.stdout


def test_an_interrupted_copy_resumes_from_the_partial_file(config_file, legacy_ftp, user2):
    payload = os.urandom(2_000_000)
    (legacy_ftp.twin_home / "big.bin").write_bytes(payload)
    # What an interrupted run leaves: the first part under the partial name.
    partial = user2.home / ".big.bin.ftpgw-sync"
    write_as(user2, partial, payload[:700_000])
    result = run_sync(config_file, user2)
    assert result.returncode == 0, result.stderr
    assert "copy, resuming at byte 700000" in result.stderr
    assert "1 files: 1 copied (1300000 bytes)" in result.stdout
    assert (user2.home / "big.bin").read_bytes() == payload
    assert not partial.exists()


def test_a_file_that_differs_on_sftp_is_a_conflict_unless_overwrite(config_file, legacy_ftp, user2):
    """Without a journal sync cannot tell its own copies from others' files: any difference
    is a conflict, reported, exit 1, the SFTP file untouched; --overwrite replaces it."""
    (legacy_ftp.twin_home / "same-size.txt").write_text("legacy!\n")
    (legacy_ftp.twin_home / "other.txt").write_text("o\n")
    write_as(user2, user2.home / "same-size.txt", "sftp!!!\n")  # same size, other bytes
    for extra in ((), ("--dry-run",)):
        result = run_sync(config_file, user2, *extra)
        assert result.returncode == 1, result.stderr
        assert "1 conflicts" in result.stdout and "conflict: same-size.txt: differs on SFTP" in result.stdout
        assert "report.database is not set" in result.stdout
        assert (user2.home / "same-size.txt").read_text() == "sftp!!!\n"
    assert (user2.home / "other.txt").read_text() == "o\n"  # the rest was copied
    forced = run_sync(config_file, user2, "--overwrite")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert (user2.home / "same-size.txt").read_text() == "legacy!\n"


def test_with_the_journal_sync_updates_its_own_copies_and_keeps_the_partners(journalled, legacy_ftp, user2):
    """sync wrote a.csv and b.csv; then the legacy server got a new a.csv (an update sync
    may copy) and the partner a new b.csv on SFTP (a conflict) and deleted c.csv."""
    when = 1_700_000_000  # 2023-11-14: the legacy files' times are kept
    for name in ("a.csv", "b.csv", "c.csv"):
        path = legacy_ftp.twin_home / name
        path.write_text(f"{name} v1\n")
        path.chmod(0o640)
        os.utime(path, (when, when))
    first = run_sync(journalled, user2)
    assert first.returncode == 0, first.stdout + first.stderr
    for name in ("a.csv", "b.csv", "c.csv"):
        copied = (user2.home / name).stat()
        assert (copied.st_mtime, copied.st_mode & 0o777) == (when, 0o640)
    (legacy_ftp.twin_home / "a.csv").write_text("a.csv v2 from legacy\n")
    write_as(user2, user2.home / "b.csv", "b.csv v2 from the partner\n")
    (user2.home / "c.csv").unlink()
    dry = run_sync(journalled, user2, "--dry-run")
    assert "would update: a.csv" in dry.stderr and "1 would copy" in dry.stdout
    second = run_sync(journalled, user2)
    assert second.returncode == 1, second.stdout
    assert "3 files: 1 copied (21 bytes), 0 already matching, 2 conflicts" in second.stdout
    assert "conflict: b.csv: changed on SFTP since sync copied it (SFTP 26 bytes of" in second.stdout
    assert "conflict: c.csv: deleted on SFTP since sync copied it" in second.stdout
    assert (user2.home / "a.csv").read_text() == "a.csv v2 from legacy\n"
    assert (user2.home / "b.csv").read_text() == "b.csv v2 from the partner\n"
    assert not (user2.home / "c.csv").exists()
    third = run_sync(journalled, user2)  # nothing new: the same two conflicts, no copy
    assert "3 files: 0 copied (0 bytes), 1 already matching, 2 conflicts" in third.stdout


def test_a_route_in_the_sftp_phase_is_refused_unless_forced(
    gateway_factory, sshd, legacy_ftp, user2, tmp_path
):
    """The issue's case: in the sftp phase the partner uploads a new report through the
    gateway; sync must not put the legacy version back."""
    config = write_config(sshd, legacy_ftp, user2, tmp_path, phase="sftp", journal=True)
    (legacy_ftp.twin_home / "2026-11.csv").write_text("legacy version\n")
    gw = gateway_factory(yaml.safe_load(config.read_text()))
    ftp = ftplib.FTP()
    ftp.connect(gw.host, gw.port)
    ftp.login(user2.name, PASSWORD)
    ftp.storbinary("STOR 2026-11.csv", io.BytesIO(b"the partner's new version\n"))
    ftp.quit()
    refused = run_sync(config, user2)
    assert refused.returncode == 2
    assert "route 'partners' is in phase 'sftp'" in refused.stderr and "--force" in refused.stderr
    forced = run_sync(config, user2, "--force")
    assert forced.returncode == 1 and "conflict: 2026-11.csv: differs on SFTP" in forced.stdout
    assert (user2.home / "2026-11.csv").read_text() == "the partner's new version\n"


def test_an_unset_password_variable_is_an_error(config_file, user2):
    env = {k: v for k, v in os.environ.items() if k != "GW_UNSET"}
    cmd = [*CLI, "sync", "--config", str(config_file), "--user", user2.name, "--password-env", "GW_UNSET"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert "--password-env GW_UNSET: that variable is not set" in result.stderr
