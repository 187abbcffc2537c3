"""Password guessing across connections ends in a ban before the backend sees it, slow
clients cannot sit before login, and not-logged-in sessions are capped."""

from __future__ import annotations

import ftplib
import socket
import time

import pytest

from tests.conftest import base_config, wait_for


def connect_from(gw, source: str) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=20, source_address=(source, 0))
    ftp.connect(gw.host, gw.port)
    return ftp


def failed_passwords(sshd, user) -> int:
    return sshd.log.read_text(errors="replace").count(f"Failed password for {user.name}")


def test_guessing_from_one_address_is_banned_and_the_backend_sees_at_most_the_budget(
    gateway_factory, sshd, user
):
    doc = base_config(sshd, guard={"max_failures": 3, "ban_time": 60})
    gw = gateway_factory(doc)
    before = failed_passwords(sshd, user)
    for attempt in range(3):  # separate connections: per-session limits do not help
        ftp = connect_from(gw, "127.0.0.2")
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            ftp.login(user.name, f"guess-{attempt}")
        ftp.close()
    # Banned: the right password is refused, at connect already.
    with pytest.raises(ftplib.error_temp, match=r"^421 Too many failed logins"):
        connect_from(gw, "127.0.0.2").login(user.name, user.password)
    # Other addresses are unaffected.
    ok = connect_from(gw, "127.0.0.1")
    ok.login(user.name, user.password)
    ok.quit()
    assert failed_passwords(sshd, user) - before <= 3
    m = gw.gateway.metrics.registry
    assert m.get_sample_value("ftpgw_guard_bans_total") == 1


def test_a_ban_is_checked_again_at_login(gateway_factory, sshd, user):
    """A session opened before the ban cannot keep guessing after it."""
    gw = gateway_factory(base_config(sshd, guard={"max_failures": 2, "ban_time": 60}, limits={
        "failed_login_delay": 0.2, "max_login_attempts": 10}))  # fmt: skip
    early = connect_from(gw, "127.0.0.2")
    for attempt in range(2):
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            early.login(user.name, f"guess-{attempt}")
    with pytest.raises(ftplib.error_temp, match=r"^421"):
        early.login(user.name, user.password)
    assert gw.gateway.metrics.registry.get_sample_value(
        "ftpgw_logins_total", {"result": "banned", "route": "-", "tls": "no"}
    ) == 1  # fmt: skip


def test_noop_does_not_extend_the_login_grace_time(gateway_factory, sshd, user):
    gw = gateway_factory(base_config(sshd, guard={"login_grace": 2}))
    idler = connect_from(gw, "127.0.0.2")
    started = time.monotonic()
    with pytest.raises((ftplib.error_temp, EOFError, OSError)) as err:
        while time.monotonic() - started < 20:
            idler.voidcmd("NOOP")
            time.sleep(0.3)
    assert "421 Login timeout" in str(err.value) or isinstance(err.value, (EOFError, OSError))
    assert time.monotonic() - started < 20
    # A real client logs in meanwhile without trouble.
    ftp = connect_from(gw, "127.0.0.1")
    ftp.login(user.name, user.password)
    assert ftp.voidcmd("NOOP").startswith("200")
    ftp.quit()


def test_not_logged_in_sessions_are_capped(gateway_factory, sshd, user):
    gw = gateway_factory(base_config(sshd, guard={"max_unauthenticated": 3}))
    waiting = [connect_from(gw, f"127.0.0.{2 + i}") for i in range(3)]
    with socket.create_connection((gw.host, gw.port), timeout=10) as extra:
        assert extra.makefile("rb").readline().startswith(b"421 Too many sessions waiting to log in")
    waiting[0].login(user.name, user.password)  # logging in frees a place
    assert wait_for(lambda: _greeted(gw))
    for ftp in waiting:
        ftp.close()


def _greeted(gw) -> bool:
    with socket.create_connection((gw.host, gw.port), timeout=10) as sock:
        return sock.makefile("rb").readline().startswith(b"220")
