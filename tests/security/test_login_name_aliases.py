"""Attack: another spelling of a user's name (``bob:x``) that OpenSSH logs in as bob all the same.

sshd ends a login name at ":" (BSD auth styles), so before the fix ``secu2:x`` authenticated as
secu2 with secu2's password but was routed on the whole string: past secu2's read-only route to
the catch-all, past secu3's retired route, out of secu1's jail; each alias also opened its own
pooled SSH connection and got its own usage row and metric slot.
"""

from __future__ import annotations

import ftplib
import io

import pytest

from tests.helpers.gateway_env import PASSWORD, base_config, seed, wait_for
from tests.helpers.sshd import ensure_user, reset_home
from tests.integration.test_external_auth import authority
from tests.integration.test_metrics import scrape, value
from tests.integration.test_report import report, with_report


@pytest.fixture(scope="module")
def _secu():
    return {n: ensure_user(f"gwsecu{n}", PASSWORD) for n in (1, 2, 3)}


@pytest.fixture
def secu(_secu):
    """Three backend accounts, each with a file in ~/ftp (secu1's jail) and one outside it."""
    for u in _secu.values():
        reset_home(u.home, u.name)
        (u.home / "ftp").mkdir()
        seed(u, "ftp/in-jail.txt", "j")
        seed(u, "outside-jail.txt", "o")
    return _secu


def routes(doc, secu):
    doc["routes"] = [
        {"name": "readonly", "match": {"user": secu[2].name}, "backend": "main",
         "permissions": {"read_only": True}},
        {"name": "gone", "match": {"user": secu[3].name}, "backend": "main", "phase": "retired"},
        {"name": "jail", "match": {"user": secu[1].name}, "backend": "main", "root": "~/ftp"},
        {"name": "rest", "match": {"user": "*"}, "backend": "main", "root": "~"},
    ]  # fmt: skip
    return doc


def backend_logins(sshd, name: str) -> int:
    return sshd.log.read_text(errors="replace").count(f" for {name} from")


def attempt(gw, name: str, password: str = PASSWORD, source: str = "127.0.0.1") -> str:
    """What a client sees logging in as ``name`` and storing a file: the reply that stopped it."""
    ftp = ftplib.FTP(timeout=20, source_address=(source, 0))
    try:
        ftp.connect(gw.host, gw.port)
        ftp.login(name, password)
        ftp.storbinary("STOR planted.txt", io.BytesIO(b"x"))
        return "logged in and stored"
    except ftplib.Error as err:
        return str(err)
    finally:
        ftp.close()


def test_aliases_are_refused_before_the_backend_and_counted_by_the_guard(gateway_factory, sshd, secu):
    guard = {"max_failures": 4, "max_failures_per_address": 4, "ban_time": 60}  # aliases: other names
    doc = routes(base_config(sshd, guard=guard), secu)
    gw = gateway_factory(doc)
    before = {u.name: backend_logins(sshd, u.name) for u in secu.values()}
    aliases = [f"{secu[2].name}:x", f"{secu[3].name}:x", f"{secu[1].name}:"]
    for alias in aliases:
        assert attempt(gw, alias, source="127.0.0.2").startswith("530 Login incorrect")
    assert {u.name: backend_logins(sshd, u.name) for u in secu.values()} == before  # never reached sshd
    assert not (secu[2].home / "planted.txt").exists()
    m = scrape(gw)
    assert value(m, "ftpgw_logins_total", result="bad_user_name", route="-", tls="no") == 3
    # Counted like wrong passwords: one more failure and the address is banned.
    assert attempt(gw, f"{secu[1].name}:y", source="127.0.0.2").startswith("530")
    assert attempt(gw, secu[1].name, source="127.0.0.2").startswith("421 Too many failed logins")
    # The real names keep their routes.
    assert attempt(gw, secu[2].name).startswith("550")  # read-only: STOR refused
    assert attempt(gw, secu[3].name).startswith("530 FTP is no longer available")
    jailed = gw.connect()
    jailed.login(secu[1].name, PASSWORD)
    assert jailed.nlst() == ["in-jail.txt"]
    jailed.quit()


def test_aliases_take_no_usage_row_and_no_metric_slot(gateway_factory, sshd, secu, tmp_path):
    doc = with_report(routes(base_config(sshd, guard={"enabled": False}), secu), tmp_path)
    doc["report"]["per_user_metrics"] = 2
    gw = gateway_factory(doc)
    for n in range(20):
        assert attempt(gw, f"{secu[1].name}:{n}").startswith("530")
    ftp = gw.login(secu[1])
    ftp.quit()
    m = scrape(gw)
    assert value(m, "ftpgw_user_logins_total", user=secu[1].name, tls="no") == 1
    gw.stop()
    assert set(report(tmp_path, doc)) == {secu[1].name}


def test_external_auth_without_a_backend_account_refuses_aliases(gateway_factory, sshd, secu, tmp_path):
    doc = base_config(sshd, external_auth={"command": authority(tmp_path, {"allow": True})})
    doc["routes"][0]["auth"] = "external"
    gw = gateway_factory(doc)
    assert attempt(gw, f"{secu[1].name}:x").startswith("530")
    assert not (tmp_path / "seen.json").exists()  # the authority was not even asked
    assert attempt(gw, secu[1].name) == "logged in and stored"


def test_a_backend_account_holds_at_most_max_connections_per_user(gateway_factory, sshd, secu):
    # One channel per connection (a backend with MaxSessions 1, or no pooling): every session
    # needs its own SSH connection, and one account may hold two.
    pool = {"max_sessions": 1, "max_connections_per_user": 2}
    doc = base_config(sshd)
    doc["backends"]["main"].update(pool=pool, connect_timeout=2)
    gw = gateway_factory(doc)
    held = [gw.login(secu[1]) for _ in range(2)]
    with pytest.raises(ftplib.error_temp, match=r"^421 Too many sessions for this account"):
        gw.login(secu[1])
    assert value(scrape(gw), "ftpgw_logins_total", result="too_many_sessions", route="route0", tls="no") == 1
    assert value(scrape(gw), "ftpgw_backend_connections", backend="main", state="active") == 2
    other = gw.login(secu[2])  # another account is not affected
    other.quit()
    held.pop().quit()  # room again
    assert wait_for(lambda: _logs_in(gw, secu[1]))
    for ftp in held:
        ftp.quit()


def _logs_in(gw, user) -> bool:
    try:
        gw.login(user).quit()
    except (OSError, ftplib.Error):
        return False
    return True
