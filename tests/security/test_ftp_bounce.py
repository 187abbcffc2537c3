"""FTP bounce (RFC 2577): PORT/EPRT may only point at the client itself, at ports >= 1024."""

from __future__ import annotations

import ftplib
import socket

import pytest


@pytest.mark.parametrize(
    "cmd",
    ["PORT 127,0,0,2,{hi},{lo}", "EPRT |1|127.0.0.2|{port}|", "PORT 127,0,0,1,0,80", "EPRT |1|127.0.0.1|21|"],
)
def test_port_and_eprt_to_a_third_party_or_privileged_port_are_refused(ftp, cmd):
    with socket.create_server(("127.0.0.2", 0)) as third_party:
        third_party.settimeout(0.5)
        port = third_party.getsockname()[1]
        with pytest.raises(ftplib.error_perm, match=r"^501"):
            ftp.sendcmd(cmd.format(hi=port // 256, lo=port % 256, port=port))
        with pytest.raises(TimeoutError):
            third_party.accept()  # the gateway never connected to the third party
    assert ftp.sendcmd("NOOP").startswith("200")


def test_active_mode_can_be_disabled(gateway_factory, sshd, user):
    from tests.helpers.gateway_env import base_config

    doc = base_config(sshd)
    doc["listen"]["active_mode"] = False
    ftp = gateway_factory(doc).login(user)
    with pytest.raises(ftplib.error_perm, match=r"^500"):
        ftp.sendcmd("PORT 127,0,0,1,160,1")
    feat = ftp.sendcmd("FEAT")
    assert "EPRT" not in feat and "EPSV" in feat
