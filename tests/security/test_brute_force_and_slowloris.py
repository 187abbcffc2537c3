"""Password guessing across connections ends in a ban before the backend sees it, slow
clients cannot sit before login, and not-logged-in sessions are capped."""

from __future__ import annotations

import contextlib
import ftplib
import socket
import subprocess
import time

import pytest

from tests.helpers.gateway_env import base_config, seed


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
    # Banned: the right password is refused (this user from this address; guard.max_failures).
    with pytest.raises(ftplib.error_temp, match=r"^421 Too many failed logins"):
        connect_from(gw, "127.0.0.2").login(user.name, user.password)
    # Other addresses are unaffected.
    ok = connect_from(gw, "127.0.0.1")
    ok.login(user.name, user.password)
    ok.quit()
    assert failed_passwords(sshd, user) - before <= 3
    m = gw.gateway.metrics.registry
    assert m.get_sample_value("ftpgw_guard_bans_total") == 1


def test_one_partners_wrong_password_does_not_lock_out_another_behind_the_same_address(
    gateway_factory, sshd, user, user2
):
    gw = gateway_factory(base_config(sshd, guard={"max_failures": 2, "max_failures_per_address": 4}))
    for attempt in range(2):
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            connect_from(gw, "127.0.0.3").login(user.name, f"stale-password-{attempt}")
    with pytest.raises(ftplib.error_temp, match=r"^421 Too many failed logins"):
        connect_from(gw, "127.0.0.3").login(user.name, user.password)
    neighbour = connect_from(gw, "127.0.0.3")
    neighbour.login(user2.name, user2.password)  # the other partner's job goes on
    neighbour.quit()
    for attempt in range(2):  # guessing across names: the address's own ceiling (4)
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            connect_from(gw, "127.0.0.3").login(user2.name, f"guess-{attempt}")
    with pytest.raises(ftplib.error_temp, match=r"^421 Too many failed logins"):
        connect_from(gw, "127.0.0.3")  # the address is banned: refused at connect


def test_an_allowed_network_is_never_banned(gateway_factory, sshd, user):
    gw = gateway_factory(base_config(sshd, guard={"max_failures": 2, "allow": ["127.0.0.4/32"]}))
    for attempt in range(4):
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            connect_from(gw, "127.0.0.4").login(user.name, f"wrong-{attempt}")
    ok = connect_from(gw, "127.0.0.4")
    ok.login(user.name, user.password)
    ok.quit()


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
    """Sessions count as waiting to log in once they have waited guard.count_waiting_after."""
    gw = gateway_factory(base_config(sshd, guard={"max_unauthenticated": 3, "count_waiting_after": 1}))
    waiting = [connect_from(gw, f"127.0.0.{2 + i}") for i in range(3)]
    time.sleep(1.5)  # they now count
    with socket.create_connection((gw.host, gw.port), timeout=10) as extra:
        lines = extra.makefile("rb")
        assert lines.readline().startswith(b"220")  # greeted, then cut once it counts
        assert lines.readline().startswith(b"421 Too many sessions waiting to log in")
    waiting[0].login(user.name, user.password)  # logging in frees a place
    late = connect_from(gw, "127.0.0.9")
    time.sleep(1.5)
    assert late.voidcmd("NOOP").startswith("200")  # counted and admitted
    for ftp in [*waiting, late]:
        ftp.close()


def test_a_batch_host_logs_in_16_sessions_at_once_while_silent_ones_are_cut(
    gateway_factory, sshd, user, tmp_path
):
    """Defaults: 16 parallel lftp downloads from one address all pass (sessions that log in
    at once never count as waiting); 20 silent connections from another are cut to
    max_unauthenticated_per_ip (8) once they have waited count_waiting_after (5 s)."""
    seed(user, "f.bin", b"x" * 100_000)
    gw = gateway_factory(base_config(sshd))
    silent = []
    connected = time.monotonic()
    for _ in range(20):
        sock = socket.create_connection((gw.host, gw.port), timeout=30, source_address=("127.0.0.5", 0))
        silent.append((sock, sock.makefile("rb")))
    login = f"open -u {user.name},{user.password} -p {gw.port} {gw.host}"
    jobs = [
        subprocess.Popen(
            ["lftp", "-c", f"set net:max-retries 1; {login}; get f.bin -o {n}.bin"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(16)
    ]
    results = [(job.wait(60), job.stderr.read()) for job in jobs]
    assert results == [(0, b"")] * 16
    assert all((tmp_path / f"{n}.bin").stat().st_size == 100_000 for n in range(16))
    time.sleep(max(0.0, connected + 7 - time.monotonic()))  # past count_waiting_after (5 s)
    cut = 0
    for sock, lines in silent:
        sock.settimeout(1)
        assert lines.readline().startswith(b"220")
        with contextlib.suppress(TimeoutError):  # still waiting: one of the 8 admitted
            cut += lines.readline().startswith(b"421 Too many sessions waiting to log in")
    assert cut == 20 - 8
    for sock, _ in silent:
        sock.close()
