"""Phase legacy is transparent: the legacy server's own listings and SITE commands, unchanged.

Before, listings were parsed and rendered again (a ``-rw-r----- root`` file came out as
``-rw-r--r-- 0``), SITE commands the legacy server accepts (``SITE RECFM=FB``) got 500, and
the audit line named the SFTP backend although the legacy server served the session. Here
vsftpd is the legacy server, reached directly and through the gateway in phase legacy.
"""

from __future__ import annotations

import ftplib
import logging
import os
import shutil

import pytest

from tests.differential.conftest import Server, compare, reply
from tests.helpers.gateway_env import base_config, seed

COMMANDS = [
    "LIST",
    "LIST -la",
    "LIST sub",
    "LIST -a sub",
    "NLST",
    "NLST sub",
    "NLST *.csv",
    "NLST -a",
    "NLST -l",
]
SITE = ["SITE RECFM=FB", "SITE HELP", "SITE UMASK"]


def seed_tree(user) -> None:
    seed(user, "sub/x.csv", "x")
    seed(user, "a.csv", "a")
    seed(user, ".keep", "k")
    secret = user.home / "root-only.txt"
    secret.write_text("r")
    shutil.chown(secret, "root", "root")
    os.chmod(secret, 0o640)


def listings(server: Server, user) -> dict[str, object]:
    ftp = server.login(user)
    out: dict[str, object] = {}
    for command in COMMANDS:
        lines: list[str] = []
        got = reply(lambda command=command, lines=lines: ftp.retrlines(command, lines.append))
        out[command] = got[:3], lines
    ftp.cwd("sub")
    lines = []
    ftp.retrlines("NLST", lines.append)
    out["NLST in sub"] = lines
    for command in SITE:
        out[command] = reply(lambda command=command: ftp.sendcmd(command))
    ftp.quit()
    return out


@pytest.fixture
def through_gateway(gateway_factory, sshd, vsftpd, user):
    doc = base_config(sshd)
    doc["backends"]["old-ftp"] = {"type": "ftp", "host": "127.0.0.1", "port": vsftpd.port}
    doc["routes"].insert(
        0, {"match": {"user": user.name}, "backend": "main", "legacy": "old-ftp", "phase": "legacy"}
    )
    return gateway_factory(doc)


def test_listings_and_site_commands_are_the_legacy_servers_own(through_gateway, vsftpd, user, caplog):
    caplog.set_level(logging.INFO, logger="gateway.audit")
    gw = through_gateway
    servers = [Server("vsftpd", "127.0.0.1", vsftpd.port), Server("legacy", gw.host, gw.port)]
    outcomes = compare(servers, user, lambda: seed_tree(user), lambda server: listings(server, user))
    legacy = outcomes["legacy"]
    root_only = next(line for line in legacy["LIST"][1] if line.endswith("root-only.txt"))
    assert root_only.startswith("-rw-r-----") and " 0        0 " in root_only  # as vsftpd shows it
    assert legacy["SITE RECFM=FB"].startswith("500")  # vsftpd's own answer, not the gateway's
    assert legacy == outcomes["vsftpd"]
    audit = [
        r.getMessage() for r in caplog.records if r.name == "gateway.audit" and "login ok" in r.getMessage()
    ]
    assert audit and all("backend=old-ftp" in line for line in audit)


def test_a_read_only_legacy_route_refuses_site_commands_it_does_not_know(gateway_factory, sshd, vsftpd, user):
    doc = base_config(sshd)
    doc["backends"]["old-ftp"] = {"type": "ftp", "host": "127.0.0.1", "port": vsftpd.port}
    route = {"match": {"user": user.name}, "backend": "main", "legacy": "old-ftp", "phase": "legacy"}
    doc["routes"].insert(0, {**route, "permissions": {"read_only": True}})
    ftp = gateway_factory(doc).login(user)
    with pytest.raises(ftplib.error_perm, match=r"^550 SITE RECFM=FB is not allowed"):
        ftp.sendcmd("SITE RECFM=FB")
    ftp.quit()
