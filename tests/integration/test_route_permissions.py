"""Routes matched by client network, and their permissions (read-only, allowed commands)."""

from __future__ import annotations

import ftplib
import io

import pytest

from tests.helpers.gateway_env import base_config, seed


def test_a_read_only_route(gateway_factory, sshd, user):
    doc = base_config(sshd)
    doc["routes"][0]["permissions"] = {"read_only": True}
    seed(user, "report.csv", "1,2\n")
    ftp = gateway_factory(doc).login(user)
    ftp.retrbinary("RETR report.csv", lambda _: None)
    for action in (
        lambda: ftp.storbinary("STOR new.txt", io.BytesIO(b"x")),
        lambda: ftp.delete("report.csv"),
        lambda: ftp.mkd("d"),
        lambda: ftp.rename("report.csv", "r.csv"),
    ):
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            action()
    assert sorted(p.name for p in user.home.iterdir()) == ["report.csv"]


def test_allowed_commands(gateway_factory, sshd, user):
    doc = base_config(sshd)
    doc["routes"][0]["permissions"] = {"commands": ["RETR", "LIST", "NLST", "SIZE", "CWD"]}
    seed(user, "a.txt", "a")
    ftp = gateway_factory(doc).login(user)
    assert ftp.nlst() == ["a.txt"]
    with pytest.raises(ftplib.error_perm, match=r"^550 DELE is not allowed for this account"):
        ftp.delete("a.txt")
    assert (user.home / "a.txt").exists()


def test_routes_by_client_network(gateway_factory, sshd, user):
    doc = base_config(sshd)
    doc["routes"].insert(0, {"name": "outside", "match": {"user": "*", "network": "127.0.0.2/32"},
                             "backend": "main", "phase": "retired", "notice": "Not from there."})  # fmt: skip
    gw = gateway_factory(doc)
    gw.login(user).quit()  # from 127.0.0.1: the catch-all route
    ftp = ftplib.FTP(timeout=20, source_address=("127.0.0.2", 0))
    ftp.connect(gw.host, gw.port)
    with pytest.raises(ftplib.error_perm, match=r"^530 Not from there\."):
        ftp.login(user.name, user.password)


def test_a_read_only_route_refuses_stou_before_creating_anything(gateway_factory, sshd, user):
    doc = base_config(sshd)
    doc["routes"][0]["permissions"] = {"read_only": True}
    ftp = gateway_factory(doc).login(user)
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        ftp.storbinary("STOU", io.BytesIO(b"x"))
    assert list(user.home.iterdir()) == []
