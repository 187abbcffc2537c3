"""Logins: password passthrough to the real sshd, routing by user, root templates, banners."""

from __future__ import annotations

import ftplib
import time

import pytest

from tests.helpers.gateway_env import base_config, seed, wait_for


def test_good_login_lands_in_the_backend_home(ftp, user):
    seed(user, "mine.txt", "x")
    assert ftp.pwd() == "/"
    assert ftp.nlst() == ["mine.txt"]


def test_wrong_password_is_530_after_a_delay_and_session_survives(gw, user):
    ftp = gw.connect()
    started = time.monotonic()
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.login(user.name, "wrong-password")
    assert time.monotonic() - started >= 0.2  # failed_login_delay in the test config
    ftp.login(user.name, user.password)
    assert ftp.pwd() == "/"


def test_too_many_failures_close_the_session(gw, user):
    ftp = gw.connect()
    for attempt in range(3):
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            ftp.login(user.name, f"wrong-{attempt}")
    with pytest.raises((EOFError, OSError, ftplib.Error)):
        ftp.sendcmd("NOOP")


def test_unknown_user_and_unrouted_user_get_the_same_530(gateway_factory, sshd, user):
    doc = base_config(sshd)
    doc["routes"][0]["match"]["user"] = "gwtest*"
    gw = gateway_factory(doc)
    replies = []
    for name in ("no-such-unix-user", "outsider", "../etc"):
        ftp = gw.connect()
        with pytest.raises(ftplib.error_perm) as exc:
            ftp.login(name, "whatever")
        replies.append(str(exc.value))
    assert all(r.startswith("530 ") for r in replies)
    assert len(set(replies)) == 1  # no user enumeration through reply texts
    from tests.integration.test_metrics import scrape, value

    # ...but the operator sees why (metrics and audit lines).
    metrics = scrape(gw)
    assert value(metrics, "ftpgw_logins_total", result="no_route", route="-", tls="no") == 2
    assert value(metrics, "ftpgw_logins_total", result="bad_user_name", route="-", tls="no") == 1


def test_pass_before_user_and_double_login(gw, user):
    ftp = gw.connect()
    with pytest.raises(ftplib.error_perm, match=r"^503"):
        ftp.sendcmd("PASS x")
    ftp.login(user.name, user.password)
    with pytest.raises(ftplib.error_perm, match=r"^503"):
        ftp.sendcmd("PASS x")


def test_root_template_and_banner(gateway_factory, sshd, user, user2):
    (user.home / "ftp").mkdir()
    seed(user, "ftp/inside.txt", "x")
    seed(user, "outside.txt", "x")
    doc = base_config(sshd)
    doc["routes"] = [
        {
            "name": "jailed",
            "match": {"user": user.name},
            "backend": "main",
            "root": str(user.home.parent) + "/{user}/ftp",
            "banner": "Welcome; FTP retires on 2027-03-31.",
        },
        {"match": {"user": "*"}, "backend": "main", "root": "~"},
    ]
    gw = gateway_factory(doc)
    ftp = gw.connect()
    reply = ftp.login(user.name, user.password)
    assert reply == "230 Welcome; FTP retires on 2027-03-31."
    assert ftp.nlst() == ["inside.txt"]
    assert ftp.nlst("..") == ["../inside.txt"]
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        ftp.sendcmd("SIZE ../outside.txt")
    other = gw.login(user2)
    assert other.sendcmd("NOOP").startswith("200")


def test_missing_root_refuses_the_login(gateway_factory, sshd, user):
    doc = base_config(sshd)
    doc["routes"][0]["root"] = "/srv/ftpgw-test/does-not-exist/{user}"
    ftp = gateway_factory(doc).connect()
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.login(user.name, user.password)


def test_password_never_appears_in_logs(gw, user, caplog):
    caplog.set_level("DEBUG")
    ftp = gw.connect()
    with pytest.raises(ftplib.error_perm):
        ftp.login(user.name, "Secret-Wrong-Pw-123")
    ftp.login(user.name, user.password)
    ftp.quit()
    text = caplog.text
    assert "Secret-Wrong-Pw-123" not in text
    assert user.password not in text


def test_connection_limits(gateway_factory, sshd, user):
    doc = base_config(sshd)
    doc["limits"].update({"max_connections": 3, "max_connections_per_ip": 2})
    gw = gateway_factory(doc)
    first, second = gw.connect(), gw.connect()
    with pytest.raises(ftplib.error_temp, match=r"^421"):
        gw.connect()
    second.close()
    assert wait_for(lambda: gw.gateway.sessions_open() == 1)  # its slot is free again
    third = gw.login(user)
    assert third.sendcmd("NOOP").startswith("200")
    first.close()


def test_client_gone_before_the_session_starts_is_quietly_ignored(gw, caplog):
    import socket

    from pyftpdlib.ioloop import IOLoop

    handler_cls = gw.gateway.server.handler
    caplog.set_level("DEBUG")
    handler_cls(socket.socket(), gw.gateway.server, ioloop=IOLoop())  # never connected
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_session_log_lines_carry_session_id_user_and_route(gw, user, caplog):
    import re

    caplog.set_level("INFO")
    seed(user, "f.txt", "x")
    ftp = gw.login(user)
    ftp.retrlines("RETR f.txt", lambda line: None)
    ftp.quit()
    transfer = [
        r.getMessage() for r in caplog.records if "RETR" in r.getMessage() and "completed=1" in r.getMessage()
    ]
    assert transfer, caplog.text
    assert re.search(rf"sess=[0-9a-f]{{8}} \[{user.name}\] route=route0 RETR ", transfer[0])


def test_a_backend_named_by_dns_name(gateway_factory, sshd, user, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(f"[localhost]:{sshd.port} " + sshd.known_hosts.read_text().split(" ", 1)[1])
    doc = base_config(sshd)
    doc["backends"]["main"].update(host="localhost", known_hosts=str(known))
    from gateway.config import parse
    from gateway.edges.app import backend_problems

    assert backend_problems(parse(doc)) == []
    ftp = gateway_factory(doc).login(user)
    assert ftp.pwd() == "/"
    ftp.quit()
