"""Path traversal: no FTP path leaves the route root (.., absolute paths, backslashes)."""

from __future__ import annotations

import ftplib
import os

import pytest

from tests.helpers.gateway_env import seed


def test_cwd_cannot_leave_the_root(ftp, user):
    ftp.cwd("../../..")
    assert ftp.pwd() == "/"
    seed(user, "inside.txt", "x")
    assert ftp.nlst("../../") == ["../../inside.txt"]  # named as the client named the directory


@pytest.mark.parametrize(
    "path",
    ["../../../../etc/passwd", "/etc/passwd", "/../../etc/passwd", "..\\..\\etc\\passwd", "//etc/passwd"],
)
def test_retr_outside_the_root_finds_nothing(ftp, path):
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        ftp.retrbinary(f"RETR {path}", lambda _: None)


def test_writes_aimed_outside_the_root_land_inside_it(ftp, user):
    seed(user, "f.txt", "x")
    ftp.sendcmd("RNFR f.txt")
    ftp.sendcmd("RNTO ../../escaped.txt")
    ftp.mkd("//etc-copy")
    assert sorted(os.listdir(user.home)) == ["escaped.txt", "etc-copy"]
    assert not (user.home.parent / "escaped.txt").exists()
