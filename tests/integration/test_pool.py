"""SSH connection reuse: pooled per backend user, password re-verified, MaxSessions, expiry."""

from __future__ import annotations

import ftplib
import subprocess
import time

import pytest

from gateway.backends.sftp.pool import SPARE_CHANNELS
from tests.helpers.gateway_env import PASSWORD, base_config, relay_known_hosts, seed, wait_for
from tests.helpers.relay import Relay
from tests.helpers.sshd import BASE, OpenSSHServer


def through_relay(sshd: OpenSSHServer, relay: Relay, **pool):
    """Every user reaches ``sshd`` through ``relay``, which counts the SSH connections."""
    doc = base_config(sshd)
    known = relay_known_hosts(sshd, relay)
    doc["backends"]["main"].update({"port": relay.port, "known_hosts": str(known), "pool": pool})
    doc["metrics"] = {"enabled": False}  # its /readyz probes would be counted as connections
    return doc


def failed_password_lines(sshd, user):
    return sshd.log.read_text().count(f"Failed password for {user.name}")


def test_sequential_logins_reuse_one_ssh_connection(gateway_factory, sshd, relay, user):
    seed(user, "f.txt", "pooled")
    gw = gateway_factory(through_relay(sshd, relay))
    for _ in range(5):
        ftp = gw.login(user)
        assert ftp.nlst() == ["f.txt"]
        ftp.quit()
    assert relay.accepted == 1


def test_sequential_sessions_reuse_sftp_server_processes_and_see_nothing_of_the_last(gw, user):
    # OpenSSH starts an SFTP process per channel; released channels are kept for the next
    # login. A session on a reused channel starts at its home and sees the files as they are.
    def sftp_processes() -> set[str]:
        found = subprocess.run(["pgrep", "-u", user.name, "-f", "sftp"], capture_output=True, text=True)
        return set(found.stdout.split())

    seed(user, "f.txt", "x")
    seen: set[str] = set()
    for i in range(6):
        ftp = gw.login(user)
        assert ftp.pwd() == "/"
        assert sorted(ftp.nlst()) == sorted(["f.txt", *[f"d{j}" for j in range(i)]])
        seen |= sftp_processes()
        ftp.mkd(f"d{i}")
        ftp.cwd(f"d{i}")
        ftp.quit()
    assert 1 <= len(seen) <= SPARE_CHANNELS, f"{len(seen)} SFTP processes started for 6 sessions in a row"


def test_a_wrong_password_never_reuses_and_reaches_the_backend_once(gateway_factory, sshd, relay, user):
    gw = gateway_factory(through_relay(sshd, relay))
    gw.login(user).quit()
    before = failed_password_lines(sshd, user)
    ftp = gw.connect()
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.login(user.name, "not-the-password")
    assert relay.accepted == 2  # a fresh connection: the backend checked the password
    assert wait_for(lambda: failed_password_lines(sshd, user) == before + 1)
    # The right password still reuses the pooled connection.
    gw.login(user).quit()
    assert relay.accepted == 2


def test_concurrent_sessions_share_connections_up_to_max_sessions(gateway_factory, sshd, relay, user):
    gw = gateway_factory(through_relay(sshd, relay, max_sessions=2))
    sessions = [gw.login(user) for _ in range(5)]
    for ftp in sessions:
        assert ftp.sendcmd("NOOP").startswith("200")
        assert ftp.nlst() == []
    assert relay.accepted == 3  # ceil(5 / 2)
    for ftp in sessions:
        ftp.quit()


@pytest.fixture
def sshd_max_two(_users):
    server = OpenSSHServer(BASE / "sshd-max2", max_sessions=2).start()
    yield server
    server.stop()


def test_backend_maxsessions_below_ours_opens_another_connection(gateway_factory, sshd_max_two, user):
    relay = Relay(("127.0.0.1", sshd_max_two.port))
    try:
        gw = gateway_factory(through_relay(sshd_max_two, relay, max_sessions=8))
        sessions = [gw.login(user) for _ in range(5)]
        for ftp in sessions:
            assert ftp.nlst() == []
        assert relay.accepted == 3  # the backend allows 2 channels per connection
        for ftp in sessions:
            ftp.quit()
    finally:
        relay.close()


def test_idle_connections_expire(gateway_factory, sshd, relay, user):
    gw = gateway_factory(through_relay(sshd, relay, idle_timeout=0.5))
    gw.login(user).quit()
    assert wait_for(lambda: relay.connections == 0, timeout=15)
    gw.login(user).quit()
    assert relay.accepted == 2


def test_a_dead_pooled_connection_is_replaced(gateway_factory, sshd, relay, user):
    seed(user, "f.txt", "x")
    gw = gateway_factory(through_relay(sshd, relay))
    gw.login(user).quit()
    relay.reset()  # the idle pooled connection dies
    ftp = gw.login(user)
    assert ftp.nlst() == ["f.txt"]
    assert relay.accepted == 2


def test_a_stalled_pooled_connection_fails_its_check_and_is_replaced(gateway_factory, sshd, relay, user):
    doc = through_relay(sshd, relay)
    doc["backends"]["main"]["connect_timeout"] = 1
    gw = gateway_factory(doc)
    gw.login(user).quit()
    relay.stall(existing_only=True)  # the pooled connection stops answering (half-dead path)
    ftp = gw.login(user)  # its channel check times out after 1 s; a new connection serves
    assert ftp.sendcmd("NOOP").startswith("200")
    assert relay.accepted == 2
    relay.resume()


def test_password_change_on_the_backend_takes_effect_after_reverify_after(gateway_factory, sshd, relay, user):
    gw = gateway_factory(through_relay(sshd, relay, reverify_after=1))
    gw.login(user).quit()
    subprocess.run(["chpasswd"], input=f"{user.name}:Changed-pass-2\n".encode(), check=True)
    try:
        time.sleep(1.5)
        ftp = gw.connect()
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            ftp.login(user.name, PASSWORD)  # the old password, no longer trusted from the pool
        ftp = gw.connect()
        ftp.login(user.name, "Changed-pass-2")
        assert ftp.sendcmd("NOOP").startswith("200")
        ftp.quit()
    finally:
        subprocess.run(["chpasswd"], input=f"{user.name}:{PASSWORD}\n".encode(), check=True)


def test_failed_logins_leave_nothing_in_the_pool(gw, user):
    for name in ("nobody-1", "nobody-2", user.name):
        ftp = gw.connect()
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            ftp.login(name, "wrong")
    assert gw.gateway.logins.backends["main"].pool.connections() == []


def test_pool_disabled_opens_a_connection_per_login(gateway_factory, sshd, relay, user):
    gw = gateway_factory(through_relay(sshd, relay, enabled=False))
    for _ in range(3):
        gw.login(user).quit()
    assert relay.accepted == 3
    assert wait_for(lambda: relay.connections == 0)


def test_simultaneous_first_logins_all_get_their_own_root(gateway_factory, sshd, relay, user):
    from concurrent.futures import ThreadPoolExecutor

    seed(user, "mine.txt", "x")
    gw = gateway_factory(through_relay(sshd, relay))

    def login_and_list(_):
        ftp = gw.login(user)
        try:
            return ftp.pwd(), ftp.nlst()
        finally:
            ftp.quit()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(login_and_list, range(8)))
    assert results == [("/", ["mine.txt"])] * 8


def test_logout_then_login_keeps_the_channel_limit(gateway_factory, sshd_max_two, user):
    relay = Relay(("127.0.0.1", sshd_max_two.port))
    try:
        gw = gateway_factory(through_relay(sshd_max_two, relay, max_sessions=2))
        for _ in range(10):  # a freed slot is only reused once the backend closed the channel
            first, second = gw.login(user), gw.login(user)
            first.quit()
            second.quit()
        # No channel was refused, so the pool never lowered its limit. (Logins that arrive
        # while a release is still closing its channel may open another connection.)
        pooled = gw.gateway.logins.backends["main"].pool.connections(user.name)
        assert pooled and all(c.max_channels == 2 for c in pooled)
    finally:
        relay.close()
