"""Phase ``shadow``: the legacy FTP server serves, every write is replayed on SFTP and the
copies are compared; SFTP trouble never reaches the client."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from tests.helpers.gateway_env import legacy_config, seed


@pytest.fixture
def shadowed(gateway_factory, sshd, legacy_ftp, user2):
    doc = legacy_config(sshd, legacy_ftp, phase="shadow")
    doc["routes"][0]["match"]["user"] = user2.name  # the same account on both servers
    doc["routes"][0]["root"] = "~"
    gw = gateway_factory(doc)
    ftp = gw.login(user2)
    yield gw, ftp
    ftp.close()


def mismatches(gw, op: str) -> float:
    labels = {"route": "partners", "op": op}
    return gw.gateway.metrics.registry.get_sample_value("ftpgw_shadow_mismatches_total", labels) or 0


def test_writes_land_on_both_and_reads_come_from_legacy(shadowed, legacy_ftp, user2):
    gw, ftp = shadowed
    payload = os.urandom(700_000)
    (legacy_ftp.twin_home / "only-legacy.txt").write_text("legacy\n")
    assert ftp.nlst() == ["only-legacy.txt"]  # reads: the legacy server
    ftp.storbinary("STOR data.bin", io.BytesIO(payload))
    digest = hashlib.sha256(payload).hexdigest()
    assert hashlib.sha256((legacy_ftp.twin_home / "data.bin").read_bytes()).hexdigest() == digest
    assert hashlib.sha256((user2.home / "data.bin").read_bytes()).hexdigest() == digest
    ftp.mkd("in")
    ftp.rename("data.bin", "in/data.bin")
    assert (user2.home / "in" / "data.bin").exists() and (legacy_ftp.twin_home / "in" / "data.bin").exists()
    ftp.storbinary("APPE in/data.bin", io.BytesIO(b"more"))
    assert (user2.home / "in" / "data.bin").stat().st_size == len(payload) + 4
    ftp.delete("in/data.bin")
    ftp.rmd("in")
    assert not (user2.home / "in").exists() and not (legacy_ftp.twin_home / "in").exists()
    assert sum(mismatches(gw, op) for op in ("upload", "compare", "mkdir", "rename", "delete", "rmdir")) == 0


def test_an_sftp_failure_is_reported_and_the_client_still_gets_226(shadowed, legacy_ftp, user2, caplog):
    gw, ftp = shadowed
    (user2.home / "blocked.bin").mkdir()  # the SFTP copy cannot be written there
    assert ftp.storbinary("STOR blocked.bin", io.BytesIO(b"x" * 1000)).startswith("226")
    assert (legacy_ftp.twin_home / "blocked.bin").read_bytes() == b"x" * 1000
    assert mismatches(gw, "upload") == 1
    assert any(r.name == "gateway.shadow" and "blocked.bin" in r.getMessage() for r in caplog.records)


def test_a_copy_that_differs_is_reported(shadowed, legacy_ftp, user2):
    gw, ftp = shadowed
    # Someone else's file of another size already sits on the SFTP side under the name
    # and the SFTP server appends (APPE) to it: the copies differ.
    seed(user2, "log.txt", "sftp side had this already\n")
    ftp.storbinary("APPE log.txt", io.BytesIO(b"new line\n"))
    assert (legacy_ftp.twin_home / "log.txt").read_bytes() == b"new line\n"
    assert mismatches(gw, "compare") == 1


def test_directories_that_predate_the_shadow_phase_are_created_on_sftp(shadowed, legacy_ftp, user2):
    gw, ftp = shadowed
    (legacy_ftp.twin_home / "old" / "deep").mkdir(parents=True)  # from before shadowing
    ftp.storbinary("STOR old/deep/new.txt", io.BytesIO(b"new\n"))
    assert (user2.home / "old" / "deep" / "new.txt").read_bytes() == b"new\n"
    assert mismatches(gw, "upload") == 0


def test_curl_uploads_in_shadow_phase_land_on_both(shadowed, legacy_ftp, user2, tmp_path):
    import subprocess

    gw, _ = shadowed
    upload = tmp_path / "from-curl.bin"
    upload.write_bytes(os.urandom(200_000))
    subprocess.run(
        ["curl", "-sS", "-u", f"{user2.name}:{user2.password}", "-T", str(upload), f"{gw.url}/"],
        check=True,
        timeout=30,
    )
    assert (legacy_ftp.twin_home / "from-curl.bin").read_bytes() == upload.read_bytes()
    assert (user2.home / "from-curl.bin").read_bytes() == upload.read_bytes()
    assert mismatches(gw, "compare") == mismatches(gw, "upload") == 0
