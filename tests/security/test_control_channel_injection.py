"""CR/LF/NUL injection: from client arguments, and from hostile file names on the backend."""

from __future__ import annotations

import os
import re

import pytest

from tests.helpers.gateway_env import seed

REPLY_LINE = re.compile(r"^(\d{3}[ -]| )")


@pytest.mark.parametrize("cmd", ["MKD a\nb", "DELE x\r421 fake", "CWD a\0b", "MKD inj\n421 injected"])
def test_cr_lf_nul_in_arguments_are_refused_and_touch_nothing(ftp, user, cmd):
    ftp.sock.sendall(cmd.encode() + b"\r\n")
    assert ftp.getline()[:3] == "501"
    assert ftp.sendcmd("NOOP").startswith("200")
    assert os.listdir(user.home) == []


def test_backend_names_with_control_characters_never_reach_the_control_channel(ftp, user):
    seed(user, "ok.txt", "x")
    seed(user, "evil\r\n226 fake reply", "x")
    seed(user, "a\nb", "x")
    assert ftp.nlst() == ["ok.txt"]
    assert [name for name, _ in ftp.mlsd()] == ["ok.txt"]
    lines: list[str] = []
    ftp.retrlines("LIST", lines.append)
    assert len(lines) == 1 and lines[0].endswith(" ok.txt")
    for reply in (ftp.sendcmd("STAT /"), ftp.sendcmd("MLST ok.txt")):
        assert all(REPLY_LINE.match(line) for line in reply.splitlines()), reply
        assert "226 fake" not in reply
