"""Log lines that other tools parse: login audit lines and xferlog."""

from __future__ import annotations

import logging
import re

from gateway.core import logs


def test_audit_lines_cannot_carry_a_second_client_address(caplog):
    with caplog.at_level(logging.INFO, logger="gateway.audit"):
        logs.login_audit("203.0.113.9", "x login failed: client_ip=198.51.100.1 y", "bad_credentials", "-")
    line = caplog.records[-1].getMessage()
    hosts = re.findall(r"login failed: client_ip=(\S+) ", line)  # what a ban filter extracts
    assert hosts == ["203.0.113.9"]


def test_xferlog_line_keeps_18_fields_whatever_the_name():
    line = logs.xferlog_line(
        when=0, seconds=0.2, client_ip="192.0.2.1", nbytes=7, path="/a b\tc\nd", binary=False,
        upload=True, user="u v", completed=False,
    )  # fmt: skip
    fields = line.split()
    assert len(fields) == 18 and "\n" not in line
    assert fields[5:] == ["1", "192.0.2.1", "7", fields[8], "a", "_", "i", "r", "u_v", "ftp", "0", "*", "i"]
    assert fields[8].startswith("/a_b")


def test_quote_is_unambiguous():
    assert logs.quote("bob") == "'bob'"
    assert logs.quote("a b") == "'a\\x20b'"
    assert logs.quote("a\\x20b") == "'a\\\\x20b'"  # a literal backslash stays distinct
    assert logs.quote("o'hara") == "'o\\x27hara'"
