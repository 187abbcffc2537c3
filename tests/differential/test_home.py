"""A server without chroot reproduced: users log in at their home, absolute paths are the real ones.

Scripts written for such a server (``cd outbound``, ``get /home/u/out/x.csv``) broke either
way before: with ``root: ~`` the absolute path got 550, with ``root: /`` the login started at
"/" and ``cd outbound`` got 550. A route with ``root: /`` and ``home: ~`` behaves as vsftpd
with ``chroot_local_user=NO``.
"""

from __future__ import annotations

import ftplib

import pytest

from tests.differential.conftest import Server, compare, reply
from tests.helpers.gateway_env import base_config, seed


def script(server: Server, user) -> dict[str, object]:
    ftp = server.login(user)
    home = str(user.home)
    out: dict[str, object] = {"pwd": ftp.pwd()}
    out["cwd outbound"] = reply(lambda: ftp.cwd("outbound"))[:3]
    out["nlst"] = ftp.nlst()
    chunks: list[bytes] = []
    ftp.retrbinary(f"RETR {home}/outbound/x.csv", chunks.append)  # absolute, as on the old server
    out["retr absolute"] = b"".join(chunks)
    out["cwd absolute"] = reply(lambda: ftp.cwd(f"{home}/outbound"))[:3]
    out["pwd after"] = ftp.pwd()
    out["cdup"] = reply(lambda: ftp.sendcmd("CDUP"))[:3]
    out["pwd home"] = ftp.pwd()
    ftp.quit()
    return out


def test_root_slash_home_tilde_is_vsftpd_without_chroot(gateway_factory, sshd, vsftpd_unchrooted, user):
    doc = base_config(sshd)
    doc["routes"][0].update(root="/", home="~")
    gw = gateway_factory(doc)
    servers = [Server("vsftpd", "127.0.0.1", vsftpd_unchrooted.port), Server("gateway", gw.host, gw.port)]
    outcomes = compare(servers, user, lambda: seed(user, "outbound/x.csv", "x\n"), lambda s: script(s, user))
    assert outcomes["gateway"]["pwd"] == str(user.home) and outcomes["gateway"]["retr absolute"] == b"x\n"
    assert outcomes["gateway"] == outcomes["vsftpd"]


def test_home_inside_a_jail(gateway_factory, sshd, user):
    """root: the area the user is confined to; home: where the session starts inside it."""
    seed(user, "area/u/in.txt", "i")
    seed(user, "area/other.txt", "o")
    doc = base_config(sshd)
    doc["routes"][0].update(root="~/area", home="~/area/u")
    ftp = gateway_factory(doc).login(user)
    assert ftp.pwd() == "/u" and ftp.nlst() == ["in.txt"]
    ftp.cwd("/")
    assert ftp.nlst() == ["other.txt", "u"]
    ftp.quit()


@pytest.mark.parametrize("home", ["/etc", "~/missing"])
def test_a_home_outside_the_root_or_missing_refuses_the_login(gateway_factory, sshd, user, home):
    doc = base_config(sshd)
    doc["routes"][0].update(root="~", home=home)
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        gateway_factory(doc).login(user)
