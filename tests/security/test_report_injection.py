"""Attack: a client writes into the operators' report (CLNT text, command names, volume).

The usage report prints what clients sent: a CLNT text with an escape sequence would rewrite
the operator's terminal, one starting with "=" would run as a formula when the CSV is opened
in a spreadsheet (CSV injection), and made-up command names could grow the record without bound.
"""

from __future__ import annotations

import ftplib

import pytest

from tests.helpers.gateway_env import base_config
from tests.integration.test_report import report, with_report


def test_client_text_is_escaped_capped_and_defused(gateway_factory, sshd, user, tmp_path):
    doc = with_report(base_config(sshd), tmp_path)
    doc["limits"]["user_names"] = ".+"  # an operator admitting any name (the default refuses "=")
    # A retired route catching made-up names: refused before any password check, recorded.
    doc["routes"].insert(0, {"name": "gone", "match": {"user": "=*"}, "backend": "main", "phase": "retired"})
    gw = gateway_factory(doc)
    ftp = gw.connect()
    ftp.sendcmd('CLNT \x1b[2J=HYPERLINK("http://evil.example/")' + "x" * 500)
    ftp.login(user.name, user.password)
    for number in range(200):  # made-up verbs: each is answered 500 and counted
        ftp.sock.sendall(f"XV{number}\r\n".encode())
        assert ftp.getline().startswith("500")
    ftp.quit()
    formula = gw.connect()
    formula.sendcmd("USER =1+2*cmd|' calc'!A0")
    with pytest.raises(ftplib.error_perm, match=r"^530"):  # the route is retired
        formula.sendcmd("PASS x")
    formula.close()
    gw.stop()

    users = report(tmp_path, doc)
    u = users[user.name]
    assert list(u["clients"]) == ["J"]  # the first word of the CLNT text; the rest never shows
    assert len(u["commands"]) <= 65 and u["commands"]["OTHER"] > 0  # capped, the rest folded
    assert sum(u["commands"].values()) == 200 + 4  # CLNT, USER, PASS, QUIT: nothing lost
    assert users["=1+2*cmd|' calc'!A0"]["verdict"] == "retired"
    assert "\x1b" not in report(tmp_path, doc, fmt="table")
    rows = {row["verdict"]: row for row in report(tmp_path, doc, fmt="csv")}
    assert not any("\x1b" in cell for row in rows.values() for cell in row.values())
    assert rows["retired"]["user"] == "'=1+2*cmd|' calc'!A0"  # a spreadsheet shows it as text
