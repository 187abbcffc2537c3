"""Checksums and ProFTPD's SITE commands, against ProFTPD itself (vsftpd has neither).

The same ftplib script runs against ProFTPD 1.3.8 from Debian (mod_digest, mod_site_misc)
and through the gateway; the checksum replies must be the same text, and SITE CHMOD and
SITE UTIME must give the same reply codes and leave the same modes and times on disk.
ProFTPD's symbolic modes stop short of chmod(1)'s (no ``X``, no ``u=rw,g=r`` lists, and
``g=u`` clears the other classes); the gateway follows chmod(1) there (test_site.py).
"""

from __future__ import annotations

import calendar
import hashlib
import os
import shutil

import pytest

from tests.differential.conftest import Server, compare, reply
from tests.helpers.gateway_env import seed

DATA = os.urandom(100_000)
CHECKSUMS = [
    *(f"{verb} f.bin" for verb in ("XSHA256", "XSHA512", "XSHA1", "XSHA", "XMD5", "XCRC")),
    "XSHA256 f.bin 1000 2000",
    "XCRC f.bin 0 10",
    "OPTS HASH MD5",
    "HASH f.bin",
    "OPTS HASH SHA-512",
    "HASH /f.bin",
    "OPTS HASH CRC32",
    "HASH f.bin",
    "OPTS HASH SHA-256",
    "OPTS HASH",
    "HASH f.bin",
    "OPTS HASH SHA-3",
    "HASH missing",
    "XSHA1 missing",
    "XMD5 d",
    "HASH d",
    "XMD5 f.bin 5 999999999",
]


def outcome(text: str) -> str:
    """A success reply as it is, an error by its code (the texts are each server's own)."""
    return text if text[:1] in "12" else text[:3]


@pytest.fixture
def both(proftpd, gw) -> list[Server]:
    return [Server("proftpd", "127.0.0.1", proftpd.port), Server("gateway", gw.host, gw.port)]


def test_checksum_replies_are_proftpds(both, user):
    def script(server: Server) -> list[tuple[str, str]]:
        ftp = server.login(user)
        out = [(command, outcome(reply(lambda c=command: ftp.sendcmd(c)))) for command in CHECKSUMS]
        ftp.quit()
        return out

    def setup() -> None:
        seed(user, "f.bin", DATA)
        (user.home / "d").mkdir()

    outcomes = compare(both, user, setup, script)
    assert outcomes["gateway"][1] == (
        "XSHA512 f.bin",
        f"250-Computing SHA512 digest\n250 {hashlib.sha512(DATA).hexdigest().upper()}",
    )
    assert outcomes["gateway"] == outcomes["proftpd"]


def test_site_chmod_and_utime_as_on_proftpd(both, user):
    when = calendar.timegm((2021, 1, 2, 3, 4, 5))
    commands = [
        "SITE CHMOD u+x f.sh",
        "SITE CHMOD go-r g.sh",
        "SITE CHMOD u+w d",
        "SITE CHMOD 751 h.sh",
        "SITE CHMOD u+x missing",
        "SITE UTIME 20210102030405 f.sh",
        "SITE UTIME g.sh 20210102030405 20210102030405 20210102030405 UTC",
        "MDTM f.sh",
        "MDTM g.sh",
    ]

    def script(server: Server) -> dict[str, object]:
        ftp = server.login(user)
        out: dict[str, object] = {c: reply(lambda c=c: ftp.sendcmd(c))[:3] for c in commands}
        out["MDTM f.sh"] = reply(lambda: ftp.sendcmd("MDTM f.sh"))
        ftp.quit()
        stats = {n: (user.home / n).stat() for n in ("f.sh", "g.sh", "h.sh", "d")}
        out["modes"] = {n: oct(st.st_mode & 0o7777) for n, st in stats.items()}
        out["times"] = {n: st.st_mtime == when for n, st in stats.items() if n != "d"}
        return out

    def setup() -> None:
        for name in ("f.sh", "g.sh", "h.sh"):
            seed(user, name, "x").chmod(0o644)
        (user.home / "d").mkdir(mode=0o550)
        shutil.chown(user.home / "d", user.name, user.name)

    outcomes = compare(both, user, setup, script)
    assert outcomes["gateway"]["modes"] == {"f.sh": "0o744", "g.sh": "0o600", "h.sh": "0o751", "d": "0o750"}
    assert outcomes["gateway"] == outcomes["proftpd"]
