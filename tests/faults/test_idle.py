"""The backend connection is lost while the FTP session is idle: the session stays open.

The next command reconnects (a fresh SSH connection, the same credentials) and gets its
normal reply; while the backend is still down it gets 451 (not 421) and the session stays;
once the backend is back the same session works again. A restarted backend (same port, same
host key) serves the sessions that were open and new logins.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.faults.conftest import (
    assert_alive,
    attempt,
    command,
    fault_config,
    kill,
    login,
    pooled,
    retr,
    sftp_subsystems,
    stop_listener,
    stor,
)
from tests.helpers.gateway_env import seed, wait_for


def test_relay_reset_while_idle_the_next_commands_get_their_normal_replies(
    gateway_factory, sshd, relay, user
):
    seed(user, "a.txt", b"alpha")
    gw = gateway_factory(fault_config(sshd, relay))
    ftp = login(gw, user)
    assert attempt(ftp.nlst) == ["a.txt"]
    relay.reset()
    assert wait_for(lambda: pooled(gw) == {})  # idle: the gateway has seen its SSH connection go
    # Not idempotent, so not a retry: the gateway reconnects before running it.
    assert command(ftp, "MKD made").startswith("257")
    assert (user.home / "made").is_dir()
    assert attempt(ftp.nlst) == ["a.txt", "made"]
    assert retr(ftp, "a.txt") == b"alpha"
    assert stor(ftp, "made/b.txt", b"beta").startswith("226")
    assert (user.home / "made" / "b.txt").read_bytes() == b"beta"
    assert command(ftp, "QUIT").startswith("221")
    assert_alive(gw, user, expect=["a.txt", "made"])


def test_sftp_subsystem_killed_while_idle_the_next_commands_work(gateway_factory, sshd, user):
    """The backend ends just the session's SFTP channel (its sftp-server killed or out of
    memory); the SSH connection lives on. Even commands that are never retried work."""
    seed(user, "a.txt", b"alpha")
    seed(user, "b.txt", b"beta")
    gw = gateway_factory(fault_config(sshd))
    before = sftp_subsystems(sshd, user)
    ftp = login(gw, user)
    assert attempt(ftp.nlst) == ["a.txt", "b.txt"]
    channel = sftp_subsystems(sshd, user) - before
    assert len(channel) == 1, channel
    os.kill(channel.pop(), signal.SIGKILL)
    # Idle while the backend closes the channel. Nothing to wait on: the gateway only
    # learns of it at its next request (its connection stays "active" until then).
    time.sleep(0.5)
    never_retried = [("DELE a.txt", "250"), ("MKD made", "257"), ("RNFR b.txt", "350"), ("RNTO c.txt", "250")]
    for line, reply in never_retried:
        assert command(ftp, line).startswith(reply), line
    assert attempt(ftp.nlst) == ["c.txt", "made"]
    assert stor(ftp, "made/d.txt", b"delta").startswith("226")
    assert (user.home / "made" / "d.txt").read_bytes() == b"delta"
    assert_alive(gw, user, expect=["c.txt", "made"])


def test_backend_killed_while_idle_451_until_it_is_back_then_the_session_works(
    gateway_factory, fault_sshd, user
):
    seed(user, "a.txt", b"alpha")
    gw = gateway_factory(fault_config(fault_sshd))
    ftp = login(gw, user)
    assert attempt(ftp.nlst) == ["a.txt"]
    kill(fault_sshd)
    assert wait_for(lambda: pooled(gw) == {})  # the gateway has seen the backend go
    # Down: every backend command gets 451 quickly; the session stays open.
    for call in (lambda: ftp.sendcmd("CWD /"), lambda: ftp.sendcmd("MKD x"), ftp.nlst):
        started = time.monotonic()
        reply = attempt(call)
        assert isinstance(reply, str) and reply.startswith("451"), reply
        assert time.monotonic() - started < 10
    assert command(ftp, "NOOP").startswith("200")
    fault_sshd.start()  # back: same port, same host key
    assert attempt(ftp.nlst) == ["a.txt"]
    assert retr(ftp, "a.txt") == b"alpha"
    assert stor(ftp, "b.txt", b"beta").startswith("226")
    assert (user.home / "b.txt").read_bytes() == b"beta"
    assert not (user.home / "x").exists()
    assert_alive(gw, user, expect=["a.txt", "b.txt"])


@pytest.mark.parametrize("fault", ["refused", "blackholed"])
def test_backend_unreachable_while_idle_451_not_a_hang_then_the_session_works(
    gateway_factory, sshd, relay, user, fault
):
    """Refused: the reconnect fails at once; blackholed: it fails after connect_timeout."""
    seed(user, "a.txt", b"alpha")
    gw = gateway_factory(fault_config(sshd, relay, connect_timeout=2))
    ftp = login(gw, user)
    if fault == "refused":
        relay.down()
    else:
        relay.blackhole()  # first, so that no reconnect slips through before the reset
        relay.reset()
    assert wait_for(lambda: pooled(gw) == {})  # the gateway has seen its connection go
    started = time.monotonic()
    reply = command(ftp, "MKD x")
    seconds = time.monotonic() - started
    print(f"{fault}: {reply!r} after {seconds:.2f} s")
    assert reply.startswith("451"), reply
    assert seconds < 20  # bounded by the gateway's timeouts, not the client's (30 s)
    assert command(ftp, "NOOP").startswith("200")
    relay.resume()
    assert command(ftp, "CWD /").startswith("250")
    assert attempt(ftp.nlst) == ["a.txt"]
    assert not (user.home / "x").exists()
    assert_alive(gw, user, expect=["a.txt"])


@pytest.mark.parametrize("how", ["listener-only", "everything-killed"])
def test_backend_restarted_open_sessions_continue_and_new_logins_work(
    gateway_factory, fault_sshd, user, user2, how
):
    """listener-only: ``systemctl restart ssh`` (sessions live on); everything-killed: a crashed host."""
    seed(user, "a.txt", b"alpha")
    seed(user2, "b.txt", b"beta")
    gw = gateway_factory(fault_config(fault_sshd))
    sessions = [(login(gw, user), user, "a.txt", b"alpha"), (login(gw, user2), user2, "b.txt", b"beta")]
    for ftp, _, name, _ in sessions:
        assert attempt(ftp.nlst) == [name]
    if how == "listener-only":
        stop_listener(fault_sshd)
    else:
        kill(fault_sshd)
    fault_sshd.start()
    for ftp, owner, name, content in sessions:
        assert attempt(ftp.nlst) == [name]
        assert retr(ftp, name) == content
        assert stor(ftp, "new.txt", owner.name.encode()).startswith("226")
        assert (owner.home / "new.txt").read_bytes() == owner.name.encode()
    assert_alive(gw, user, expect=["a.txt", "new.txt"])
    assert_alive(gw, user2, expect=["b.txt", "new.txt"])
