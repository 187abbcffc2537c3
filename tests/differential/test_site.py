"""SITE and time commands of the servers the gateway replaces.

vsftpd's ``SITE UMASK`` (later uploads and MKDs leave those bits out) and ``MDTM time path``
(sets the time) behave as on vsftpd; symbolic ``SITE CHMOD`` (``u+x``) and ``SITE UTIME``
behave as on ProFTPD, their reference (vsftpd sets mode 0 for ``SITE CHMOD u+x``). Each is
allowed or refused by a route's ``permissions`` like any other command.
"""

from __future__ import annotations

import calendar
import ftplib
import io
import os

import pytest

from tests.differential.conftest import Server, compare, reply
from tests.helpers.gateway_env import base_config, seed

WHEN = calendar.timegm((2020, 1, 2, 3, 4, 5))


def test_site_umask_and_mdtm_set_as_on_vsftpd(servers, user):
    def script(server: Server) -> dict[str, object]:
        ftp = server.login(user)
        out: dict[str, object] = {"umask": reply(lambda: ftp.sendcmd("SITE UMASK 027"))[:3]}
        ftp.storbinary("STOR new.txt", io.BytesIO(b"x"))
        ftp.storbinary("STOR old.txt", io.BytesIO(b"y"))  # exists: its mode stays
        ftp.mkd("d")
        out["bad umask"] = reply(lambda: ftp.sendcmd("SITE UMASK 9"))[:1]
        out["mdtm set"] = reply(lambda: ftp.sendcmd("MDTM 20200102030405 old.txt"))[:3]
        out["mdtm missing"] = reply(lambda: ftp.sendcmd("MDTM 20200102030405 missing"))[:3]
        out["mdtm read"] = reply(lambda: ftp.sendcmd("MDTM old.txt"))
        ftp.quit()
        home = user.home
        out["modes"] = [oct(os.stat(home / n).st_mode & 0o777) for n in ("new.txt", "old.txt", "d")]
        out["mtime"] = os.stat(home / "old.txt").st_mtime
        return out

    def setup() -> None:
        seed(user, "old.txt", "o").chmod(0o600)

    outcomes = compare(servers, user, setup, script)
    assert outcomes["gateway"]["modes"] == ["0o640", "0o600", "0o750"]
    assert outcomes["gateway"]["mtime"] == WHEN
    outcomes["vsftpd"]["bad umask"] = "5"  # vsftpd takes "9" as 0 (200); the gateway says 501
    assert outcomes["gateway"] == outcomes["vsftpd"]


@pytest.mark.parametrize(
    ("mode", "before", "after"),
    [("u+x", 0o640, 0o740), ("go-r", 0o644, 0o600), ("a=rX", 0o750, 0o555), ("u=rw,g=r,o=", 0o777, 0o640),
     ("751", 0o600, 0o751), ("g=u", 0o640, 0o660)],
)  # fmt: skip
def test_symbolic_site_chmod_as_proftpd(ftp, user, mode, before, after):
    seed(user, "f.sh", "x").chmod(before)
    assert ftp.sendcmd(f"SITE CHMOD {mode} f.sh").startswith("200")
    assert os.stat(user.home / "f.sh").st_mode & 0o7777 == after
    with pytest.raises(ftplib.error_perm, match=r"^501"):
        ftp.sendcmd("SITE CHMOD u+q f.sh")


@pytest.mark.parametrize(
    "command",
    ["SITE UTIME 202001020304 f.txt", "SITE UTIME 20200102030400 f.txt",
     "SITE UTIME f.txt 20200102030400 20200102030400 20200102030400 UTC"],
)  # fmt: skip
def test_site_utime_in_proftpds_forms(ftp, user, command):
    seed(user, "f.txt", "x")
    assert ftp.sendcmd(command).startswith("200")
    assert os.stat(user.home / "f.txt").st_mtime == calendar.timegm((2020, 1, 2, 3, 4, 0))


def test_setting_times_and_modes_follows_route_permissions(gateway_factory, sshd, user):
    seed(user, "f.txt", "x")
    doc = base_config(sshd)
    doc["routes"][0]["permissions"] = {"commands": ["RETR", "MDTM"]}  # read the time, not set it
    ftp = gateway_factory(doc).login(user)
    assert ftp.sendcmd("MDTM f.txt").startswith("213")
    for command in ("MDTM 20200102030405 f.txt", "SITE UTIME 202001020304 f.txt", "SITE CHMOD u+x f.txt"):
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            ftp.sendcmd(command)
    doc["routes"][0]["permissions"] = {"read_only": True}
    ftp = gateway_factory(doc).login(user)
    for command in ("MDTM 20200102030405 f.txt", "SITE UTIME 202001020304 f.txt", "SITE CHMOD 777 f.txt"):
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            ftp.sendcmd(command)
    assert os.stat(user.home / "f.txt").st_mtime != WHEN
