"""guard.shared: two gateway instances on one PostgreSQL record share failed logins and bans
(a client spread over both gets guard.max_failures attempts in all), an unban at one lifts
the ban at both, and with the database gone each guard goes on alone."""

from __future__ import annotations

import ftplib

import pytest

from gateway import config
from tests.helpers.gateway_env import base_config, wait_for
from tests.helpers.postgres import PASSWORD as POSTGRES_PASSWORD
from tests.integration.test_metrics import http_get


def shared(sshd, postgres, tmp_path, max_failures=3):
    doc = base_config(sshd)
    secret = tmp_path / "db-password"
    secret.write_text(POSTGRES_PASSWORD)
    doc["report"] = {"database": postgres.url(), "password_file": str(secret)}
    doc["guard"] = {"shared": True, "max_failures": max_failures}
    doc["limits"]["failed_login_delay"] = 0.1
    return doc


def fail_login(gw, user) -> str:
    ftp = gw.connect()
    try:
        ftp.login(user.name, "wrong-password")
    except ftplib.Error as err:
        return str(err)
    finally:
        ftp.close()
    raise AssertionError("a wrong password was accepted")


def refused(gw, user) -> bool:
    """True when the right password is refused: the pair is banned at this instance."""
    try:
        gw.login(user).quit()
    except ftplib.Error:
        return True
    return False


def banned_everywhere(gateways, user) -> bool:
    return all(any(ban[1] == user.name for ban in gw.gateway.guard.bans()) for gw in gateways)


def test_failures_spread_over_two_instances_ban_the_client_at_both(
    gateway_factory, sshd, postgres, user, tmp_path
):
    doc = shared(sshd, postgres, tmp_path)
    one, two = gateway_factory(doc), gateway_factory(doc)
    for gw in (one, two, one):  # three failures in all, never three at one instance
        assert fail_login(gw, user).startswith("530")
    assert wait_for(lambda: banned_everywhere((one, two), user), 10), "the ban did not reach both instances"
    assert refused(one, user) and refused(two, user)
    assert one.gateway.access.unban("127.0.0.1") >= 1  # as `ftp-sftp-gateway unban` does
    assert wait_for(lambda: not any(two.gateway.guard.bans()), 10), (
        "the unban did not reach the other instance"
    )
    assert not refused(two, user) and not refused(one, user)


def test_a_new_instance_knows_the_bans_the_others_made(gateway_factory, sshd, postgres, user, tmp_path):
    doc = shared(sshd, postgres, tmp_path)
    one = gateway_factory(doc)
    for _ in range(3):
        fail_login(one, user)
    assert refused(one, user)
    late = gateway_factory(doc)  # started after the ban: replays it
    assert wait_for(lambda: banned_everywhere((late,), user), 10)
    assert refused(late, user)


def test_without_the_database_each_guard_goes_on_alone(gateway_factory, sshd, postgres, user, tmp_path):
    doc = shared(sshd, postgres, tmp_path, max_failures=2)
    one = gateway_factory(doc)
    postgres.stop()
    try:
        assert not refused(one, user)  # logins go on
        fail_login(one, user)
        fail_login(one, user)
        assert refused(one, user)  # its own guard still bans
        registry = one.gateway.metrics.registry
        assert wait_for(lambda: (registry.get_sample_value("ftpgw_guard_shared_errors_total") or 0) > 0)
        assert wait_for(lambda: http_get(one, "/readyz") == (200, "ready\n"))  # the backends are fine
    finally:
        postgres.restart()
    two = gateway_factory(doc)  # the failures made during the outage reach the others once it is back
    assert wait_for(lambda: banned_everywhere((two,), user), 15)


def test_shared_without_postgresql_is_a_config_error(sshd, tmp_path):
    doc = base_config(sshd)
    doc["guard"] = {"shared": True}
    with pytest.raises(config.ConfigError) as err:
        config.parse(doc, tmp_path)
    assert any(p.startswith("guard.shared: needs a PostgreSQL report.database") for p in err.value.problems)
