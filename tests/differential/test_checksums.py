"""Checksums for FTP clients that verify their transfers (FileZilla, WinSCP, lftp, mod_digest users).

HASH (draft-bryan-ftpext-hash) with OPTS HASH, and XSHA256/XSHA512/XSHA1/XMD5/XCRC with an optional
byte range, answered as ProFTPD's mod_digest answers them (ProFTPD is the reference: vsftpd has
none). OpenSSH's sftp-server computes no hashes: the gateway reads the file and hashes it.
"""

from __future__ import annotations

import ftplib
import hashlib
import os
import threading
import time
import zlib

import pytest

from tests.helpers.gateway_env import base_config, seed

DATA = os.urandom(300_000)


def test_feat_opts_and_hash(ftp, user):
    seed(user, "f.bin", DATA)
    feat = ftp.sendcmd("FEAT").splitlines()
    assert " HASH SHA-256*;SHA-512;SHA-1;MD5;CRC32" in feat
    assert {" XCRC", " XMD5", " XSHA1", " XSHA256", " XSHA512"} <= set(feat)
    assert ftp.sendcmd("OPTS HASH") == "200 SHA-256"
    lines = ftp.sendcmd("HASH f.bin").splitlines()
    assert lines == [
        "213-Computing SHA-256 digest",
        f"213 SHA-256 0-{len(DATA)} {hashlib.sha256(DATA).hexdigest()} f.bin",
    ]
    assert ftp.sendcmd("OPTS HASH md5") == "200 MD5"
    assert " HASH SHA-256;SHA-512;SHA-1;MD5*;CRC32" in ftp.sendcmd("FEAT").splitlines()
    assert ftp.sendcmd("HASH f.bin").splitlines()[-1].split()[3] == hashlib.md5(DATA).hexdigest()
    ftp.sendcmd("OPTS HASH CRC32")
    assert ftp.sendcmd("HASH f.bin").splitlines()[-1].split()[3] == f"{zlib.crc32(DATA):08x}"
    with pytest.raises(ftplib.error_perm, match=r"^501"):
        ftp.sendcmd("OPTS HASH SHA-3")


@pytest.mark.parametrize(
    ("verb", "new"),
    [
        ("XSHA256", hashlib.sha256),
        ("XSHA512", hashlib.sha512),
        ("XSHA1", hashlib.sha1),
        ("XSHA", hashlib.sha1),
        ("XMD5", hashlib.md5),
    ],
)
def test_x_commands_with_and_without_a_range(ftp, user, verb, new):
    seed(user, "a file.bin", DATA)
    assert ftp.sendcmd(f"{verb} a file.bin").splitlines()[-1] == f"250 {new(DATA).hexdigest().upper()}"
    assert (
        ftp.sendcmd(f"{verb} a file.bin 1000 2000").splitlines()[-1]
        == f"250 {new(DATA[1000:2000]).hexdigest().upper()}"
    )
    assert ftp.sendcmd("XCRC a file.bin").splitlines()[-1] == f"250 {zlib.crc32(DATA):08X}"


def test_checksum_errors(ftp, user):
    seed(user, "f.bin", DATA)
    (user.home / "d").mkdir()
    for command, code in (
        ("HASH d", "553"),
        ("XMD5 d", "550"),
        ("HASH missing", "550"),
        ("XMD5 f.bin 5 999999999", "501"),
    ):
        with pytest.raises(ftplib.error_perm, match=rf"^{code}"):
            ftp.sendcmd(command)


def test_latin1_names_have_checksums_too(ftp_latin, user):
    path = os.path.join(os.fsencode(user.home), b"r\xe9sum\xe9.bin")
    with open(path, "wb") as f:
        f.write(DATA)
    assert (
        ftp_latin.sendcmd("XSHA256 r\xe9sum\xe9.bin").splitlines()[-1]
        == f"250 {hashlib.sha256(DATA).hexdigest().upper()}"
    )


def test_checksums_are_bounded_in_size_and_number(gateway_factory, sshd, user):
    big = seed(user, "big.bin", b"")
    os.truncate(big, 1536 * 2**20)  # sparse: no disk, seconds of hashing
    seed(user, "two-mib.bin", b"x" * 2 * 2**20)
    gw = gateway_factory(base_config(sshd, limits={"checksum_max_mib": 1536, "checksums_at_once": 1}))
    first, second = gw.login(user), gw.login(user)
    with pytest.raises(ftplib.error_perm, match=r"^556"):
        gateway_factory(base_config(sshd, limits={"checksum_max_mib": 1})).login(user).sendcmd(
            "HASH two-mib.bin"
        )
    done: list[str] = []
    worker = threading.Thread(target=lambda: done.append(first.sendcmd("HASH big.bin")))
    worker.start()
    refusals = []
    while worker.is_alive() and not refusals:
        time.sleep(0.2)
        try:
            second.sendcmd("HASH two-mib.bin")
        except ftplib.error_temp as err:
            refusals.append(str(err))
    worker.join(120)
    assert refusals and refusals[0].startswith("450")  # the one place was taken
    assert done and done[0].splitlines()[-1].startswith("213 SHA-256 0-1610612736 ")
    assert second.sendcmd("HASH two-mib.bin").splitlines()[-1].startswith("213 ")  # free again
    samples = gw.gateway.metrics.registry
    assert samples.get_sample_value("ftpgw_checksums_total", {"algorithm": "SHA-256", "result": "busy"}) >= 1
