"""``sync --route`` and ``sync --all``: every user of a route copied with the backends'
service accounts (a legacy FTP administrator, an SFTP key with access to every home),
several users at once, resumable after a killed run, and the copies owned by their user."""

from __future__ import annotations

import hashlib
import os
import pwd
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers.gateway_env import CLI, PASSWORD, base_config, wait_for
from tests.helpers.sshd import BASE, OpenSSHServer, ensure_user, reset_home


@pytest.fixture(scope="module")
def service_sshd():
    """An sshd that also lets root in with a key: the service account sync uses."""
    workdir = BASE / "sshd-service"
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir / "sync_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (workdir / "authorized_keys").write_text((workdir / "sync_ed25519.pub").read_text())
    server = OpenSSHServer(
        workdir,
        extra_config=(
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            f"AuthorizedKeysFile {workdir / 'authorized_keys'}",
        ),
    ).start()
    server.key = key  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.fixture
def users(_users):
    """gwtest1..3 with empty SFTP homes."""
    found = [_users["gwtest1"], _users["gwtest2"], ensure_user("gwtest3", PASSWORD)]
    for user in found:
        reset_home(user.home, user.name)
    return found


def write_config(service_sshd, legacy_ftp, tmp_path, service=True, phase="shadow"):
    doc = base_config(service_sshd)
    legacy = {"type": "ftp", "host": "127.0.0.1", "port": legacy_ftp.port}
    if service:
        (tmp_path / "admin.pass").write_text(legacy_ftp.admin_password + "\n")
        legacy["service"] = {"user": legacy_ftp.admin, "password_file": "admin.pass", "root": "/{user}"}
        doc["backends"]["main"]["service"] = {
            "user": "root",
            "key_file": str(service_sshd.key),
            "root": str(BASE / "home" / "{user}"),
        }
    doc["backends"]["old-ftp"] = legacy
    route = {"name": "batch", "match": {"user": "gwtest*"}, "backend": "main", "legacy": "old-ftp"}
    doc["routes"].insert(0, {**route, "phase": phase})
    doc["report"] = {"database": str(tmp_path / "usage.sqlite")}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def legacy_tree(legacy_ftp, user, files):
    home = legacy_ftp.twin_home.parent / user
    home.mkdir(exist_ok=True)
    for rel, data in files.items():
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_bytes(data)
        os.utime(home / rel, (1_700_000_000, 1_700_000_000))
    return home


def tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def sync(config, *args, timeout=120):
    return subprocess.run(
        [*CLI, "sync", "--config", str(config), *args], capture_output=True, text=True, timeout=timeout
    )


def test_sync_route_copies_every_user_with_service_accounts(service_sshd, legacy_ftp, users, tmp_path):
    homes = {
        u.name: legacy_tree(legacy_ftp, u.name, {"a.csv": os.urandom(5000), "sub/b.bin": b"b\n"})
        for u in users
    }
    legacy_tree(legacy_ftp, "partner-a", {"not-this-route.txt": b"x"})  # another route's user
    config = write_config(service_sshd, legacy_ftp, tmp_path)
    dry = sync(config, "--route", "batch", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "all 3 users: 6 files: 6 would copy (15006 bytes)" in dry.stdout
    assert not any(u.home.joinpath("a.csv").exists() for u in users)

    result = sync(config, "--route", "batch", "--jobs", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    for user in users:
        assert f"{user.name}: 2 files: 2 copied (5002 bytes)" in result.stdout
        assert f"[{user.name}] copy: sub/b.bin" in result.stderr
        assert tree(user.home) == tree(homes[user.name])
        uid = pwd.getpwnam(user.name).pw_uid
        for copied in (user.home / "a.csv", user.home / "sub", user.home / "sub" / "b.bin"):
            assert copied.stat().st_uid == uid, copied  # the user's, not root's
        assert int((user.home / "a.csv").stat().st_mtime) == 1_700_000_000
    assert "all 3 users: 6 files: 6 copied (15006 bytes)" in result.stdout
    assert "sync: 14.7kB of 14.7kB" in result.stderr  # bytes, rate and ETA (plain lines)
    assert not (users[0].home.parent / "partner-a").exists()

    again = sync(config, "--all")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "all 3 users: 6 files: 0 copied (0 bytes), 6 already matching" in again.stdout


def test_a_killed_sync_all_resumes(service_sshd, legacy_ftp, users, tmp_path):
    big = {u.name: os.urandom(64 * 2**20 + 1) for u in users}
    for user in users:
        legacy_tree(legacy_ftp, user.name, {"big.bin": big[user.name]})
    config = write_config(service_sshd, legacy_ftp, tmp_path)
    partial = users[1].home / ".big.bin.ftpgw-sync"
    with open(tmp_path / "sync.err", "w") as err:
        proc = subprocess.Popen([*CLI, "sync", "--config", str(config), "--all", "--jobs", "1"], stderr=err)
        # Killed while gwtest2's file is on its way (gwtest1's is done, gwtest3's not begun).
        assert wait_for(lambda: partial.exists() and partial.stat().st_size > 2**20, timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert (users[0].home / "big.bin").read_bytes() == big["gwtest1"]
    assert not (users[2].home / "big.bin").exists()
    offset = partial.stat().st_size

    again = sync(config, "--all", "--jobs", "1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "gwtest1: 1 files: 0 copied (0 bytes), 1 already matching" in again.stdout
    assert f"gwtest3: 1 files: 1 copied ({len(big['gwtest3'])} bytes)" in again.stdout
    # What reached the partial before the kill is not sent again.
    assert f"[gwtest2] copy, resuming at byte {offset}: big.bin" in again.stderr
    assert f"gwtest2: 1 files: 1 copied ({len(big['gwtest2']) - offset} bytes)" in again.stdout
    for user in users:
        assert (user.home / "big.bin").read_bytes() == big[user.name]
        assert not (user.home / ".big.bin.ftpgw-sync").exists()


def test_without_service_accounts_the_missing_key_is_named(service_sshd, legacy_ftp, users, tmp_path):
    config = write_config(service_sshd, legacy_ftp, tmp_path, service=False)
    result = sync(config, "--route", "batch")
    assert result.returncode == 2
    assert "backends.old-ftp.service is not set" in result.stderr
    several = sync(config, "--user", "gwtest1", "--user", "gwtest2", "--password-env", "HOME")
    assert several.returncode == 2 and "--password-env is for one --user" in several.stderr


def test_sync_all_leaves_routes_already_on_sftp_alone(service_sshd, legacy_ftp, users, tmp_path):
    legacy_tree(legacy_ftp, "gwtest1", {"old.csv": b"old\n"})
    config = write_config(service_sshd, legacy_ftp, tmp_path, phase="sftp")
    skipped = sync(config, "--all")
    assert (
        skipped.returncode == 2
        and "no route with a legacy FTP backend in phase legacy,shadow" in skipped.stderr
    )
    refused = sync(config, "--route", "batch")
    assert refused.returncode == 2 and "route 'batch' is in phase 'sftp'" in refused.stderr
    assert not (users[0].home / "old.csv").exists()
