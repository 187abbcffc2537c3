"""Backend trouble at login: a down or impostor backend gives 421 without details and no
password is sent to an impostor; without the pool a backend connection lives exactly as long
as its FTP session. Faults during a session (killed, stalled, reset, disk full) are in
tests/faults/."""

from __future__ import annotations

import ftplib
import os
import subprocess
import time

import pytest

from tests.helpers.gateway_env import base_config, relayed_config, wait_for
from tests.helpers.sshd import free_port


def test_backend_down_at_login_is_421_without_details(gateway_factory, sshd, user):
    doc = base_config(sshd)
    doc["backends"]["main"]["port"] = free_port()  # nothing listens there
    doc["backends"]["main"]["connect_timeout"] = 3
    ftp = gateway_factory(doc).connect()
    ftp.sendcmd(f"USER {user.name}")
    with pytest.raises(ftplib.error_temp) as exc:
        ftp.sendcmd(f"PASS {user.password}")
    text = str(exc.value)
    assert text.startswith("421 ")
    for leak in ("refused", "Errno", "127.0.0.1", str(doc["backends"]["main"]["port"])):
        assert leak not in text


def test_host_key_mismatch_is_421_and_no_password_is_sent(gateway_factory, sshd, user, tmp_path, caplog):
    impostor_key = tmp_path / "impostor"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {impostor_key}")
    known = tmp_path / "known_hosts"
    pub = (tmp_path / "impostor.pub").read_text().split()
    known.write_text(f"[127.0.0.1]:{sshd.port} {pub[0]} {pub[1]}\n")
    doc = base_config(sshd)
    doc["backends"]["main"]["known_hosts"] = str(known)
    log_before = sshd.log.read_text()
    ftp = gateway_factory(doc).connect()
    ftp.sendcmd(f"USER {user.name}")
    with pytest.raises(ftplib.error_temp, match=r"^421"):
        ftp.sendcmd(f"PASS {user.password}")
    time.sleep(0.3)
    new_log = sshd.log.read_text()[len(log_before) :]
    assert "password for" not in new_log  # neither "Accepted" nor "Failed password for"
    # The log names the key the backend showed, for the operator to compare out of band.
    real = host_key_fingerprint(sshd)
    assert any(real in r.getMessage() and "does not trust" in r.getMessage() for r in caplog.records)


def host_key_fingerprint(sshd) -> str:
    """The SHA256 fingerprint of the test sshd's host key, as ssh-keygen prints it."""
    pub = str(sshd.workdir / "host_ed25519.pub")
    return subprocess.run(
        ["ssh-keygen", "-lf", pub], capture_output=True, text=True, check=True
    ).stdout.split()[1]


def test_without_pool_the_backend_connection_closes_with_the_ftp_session(gateway_factory, sshd, relay, user2):
    gw = gateway_factory(relayed_config(sshd, relay, pool={"enabled": False}))
    ftp = gw.login(user2)
    assert wait_for(lambda: relay.connections == 2)
    ftp.quit()
    assert wait_for(lambda: relay.connections == 0)
    # A client that vanishes without QUIT frees its backend connection too.
    ftp = gw.login(user2)
    assert wait_for(lambda: relay.connections == 2)
    ftp.close()  # no QUIT: the TCP connection just goes away
    assert wait_for(lambda: relay.connections == 0)
    # A failed login leaves no backend connection behind.
    bad = gw.connect()
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        bad.login(user2.name, "wrong")
    assert wait_for(lambda: relay.connections == 0)


def test_pinned_fingerprint_instead_of_known_hosts(gateway_factory, sshd, user, tmp_path):
    real = host_key_fingerprint(sshd)
    doc = base_config(sshd)
    del doc["backends"]["main"]["known_hosts"]
    doc["backends"]["main"]["host_key_fingerprints"] = [real]
    ftp = gateway_factory(doc).login(user)
    assert ftp.sendcmd("NOOP").startswith("200")
    ftp.quit()
    # A wrong pin is a mismatch like any other: 421 and no password sent.
    other = "SHA256:" + "A" * 43
    doc["backends"]["main"]["host_key_fingerprints"] = [other]
    ftp = gateway_factory(doc).connect()
    ftp.sendcmd(f"USER {user.name}")
    with pytest.raises(ftplib.error_temp, match=r"^421"):
        ftp.sendcmd(f"PASS {user.password}")
