"""Long command lines: 500, the rest of the line is not run, repeated abuse disconnects."""

from __future__ import annotations

import os


def test_the_tail_of_an_overlong_line_is_not_executed(ftp, user):
    ftp.sock.sendall(b"NOOP " + b"A" * 3000 + b" MKD smuggled\r\n")
    assert ftp.getline().startswith("500 Command too long")
    assert ftp.sendcmd("NOOP").startswith("200")  # the next reply is for this NOOP
    assert os.listdir(user.home) == []


def test_megabytes_without_a_line_end_end_the_session(gw):
    ftp = gw.connect()
    chunk = b"X" * 65536
    replies = []
    try:
        for _ in range(160):  # 10 MiB
            ftp.sock.sendall(chunk)
    except OSError:
        pass  # closed by the gateway
    ftp.sock.settimeout(10)
    while line := ftp.file.readline():
        replies.append(line)
    assert replies[0].startswith("500 Command too long")
    assert replies[-1].startswith("421 Too many overlong command lines")
    assert len(replies) == 2
