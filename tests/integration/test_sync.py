"""``ftp-sftp-gateway sync``: copy a user's tree from the legacy FTP server to SFTP;
idempotent, resumable after an interruption, verified."""

from __future__ import annotations

import hashlib
import os
import pwd
import subprocess

import pytest
import yaml

from tests.conftest import CLI, PASSWORD, legacy_config


@pytest.fixture
def config_file(sshd, legacy_ftp, user2, tmp_path):
    doc = legacy_config(sshd, legacy_ftp, phase="shadow")
    doc["routes"][0]["match"]["user"] = user2.name
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


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
    assert "3 files: 3 copied (301002 bytes), 0 already matching, 0 mismatches, 0 errors" in first.stdout
    assert tree(user2.home) == tree(legacy_ftp.twin_home)
    again = run_sync(config_file, user2)  # idempotent
    assert "3 files: 0 copied (0 bytes), 3 already matching" in again.stdout


def test_an_interrupted_copy_resumes_from_the_partial_file(config_file, legacy_ftp, user2):
    payload = os.urandom(2_000_000)
    (legacy_ftp.twin_home / "big.bin").write_bytes(payload)
    # What an interrupted run leaves: the first part under the partial name.
    partial = user2.home / ".big.bin.ftpgw-sync"
    partial.write_bytes(payload[:700_000])
    os.chown(
        partial, user2.uid if hasattr(user2, "uid") else __import__("pwd").getpwnam(user2.name).pw_uid, -1
    )
    result = run_sync(config_file, user2)
    assert result.returncode == 0, result.stderr
    assert "resume at byte 700000" in result.stderr
    assert "1 files: 1 copied (1300000 bytes)" in result.stdout
    assert (user2.home / "big.bin").read_bytes() == payload
    assert not partial.exists()


def test_a_copy_that_differs_is_replaced(config_file, legacy_ftp, user2):
    (legacy_ftp.twin_home / "same-size.txt").write_text("legacy!\n")
    (user2.home / "same-size.txt").write_text("sftp!!!\n")  # same size, other bytes
    os.chown(user2.home / "same-size.txt", pwd.getpwnam(user2.name).pw_uid, -1)
    result = run_sync(config_file, user2)
    assert result.returncode == 0, result.stderr
    assert (user2.home / "same-size.txt").read_text() == "legacy!\n"
