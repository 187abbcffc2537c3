"""Attack: list a drop box whose route allows only uploads, through STAT.

With ``permissions.commands: [STOR]`` LIST, NLST, RETR, SIZE, MLST and CWD were refused, but
``STAT /`` listed every file (mode, owner, size, time) on the control channel. STAT with a path
now needs LIST; plain STAT (the server's status) stays open.
"""

from __future__ import annotations

import ftplib
import io

import pytest

from tests.helpers.gateway_env import base_config, seed


def test_stat_of_a_path_needs_the_list_permission(gateway_factory, sshd, user):
    seed(user, "secret-0600.txt", "s").chmod(0o600)
    seed(user, "other-partner.csv", "o")
    doc = base_config(sshd)
    doc["routes"][0]["permissions"] = {"commands": ["STOR"]}
    ftp = gateway_factory(doc).login(user)
    ftp.storbinary("STOR drop.csv", io.BytesIO(b"1,2\n"))
    refused = ("STAT /", "STAT .", "STAT secret-0600.txt", "STAT -la /", "LIST", "NLST", "MLST drop.csv")
    for command in refused:
        with pytest.raises(ftplib.error_perm, match=r"^550 .* is not allowed for this account"):
            ftp.sendcmd(command)
    status = ftp.sendcmd("STAT")  # the server's own status: allowed
    assert status.startswith("211") and "secret" not in status
    ftp.quit()


def test_stat_of_a_path_still_lists_where_list_is_allowed(gateway_factory, sshd, user):
    seed(user, "report.csv", "r")
    doc = base_config(sshd)
    doc["routes"][0]["permissions"] = {"commands": ["LIST"]}
    ftp = gateway_factory(doc).login(user)
    assert "report.csv" in ftp.sendcmd("STAT /")
    ftp.quit()
