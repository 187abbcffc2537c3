"""A different SSH server appears on the backend's address (MITM, a rebuilt host): 421, and
not one credential reaches it."""

from __future__ import annotations

import ftplib

import pytest

from tests.helpers.gateway_env import base_config
from tests.helpers.sshd import OpenSSHServer


def test_an_impostor_on_the_same_port_gets_no_password(gateway_factory, user, tmp_path):
    real = OpenSSHServer(tmp_path / "real").start()
    doc = base_config(real)
    # Without reuse every login is a new SSH handshake (a pooled connection to the real
    # server would stay valid: its sshd child outlives the listener).
    doc["backends"]["main"]["pool"] = {"enabled": False}
    gw = gateway_factory(doc)
    ftp = gw.login(user)  # the real server: fine
    ftp.quit()
    real.stop()
    # Same address and port, another host key.
    impostor = OpenSSHServer(tmp_path / "impostor", port=real.port).start()
    try:
        ftp = gw.connect()
        ftp.sendcmd(f"USER {user.name}")
        with pytest.raises(ftplib.error_temp, match=r"^421"):
            ftp.sendcmd(f"PASS {user.password}")
        log = impostor.log.read_text()
        assert "Failed password" not in log and "Accepted password" not in log
        registry = gw.gateway.metrics.registry
        labels = {"backend": "main", "result": "host_key_mismatch"}
        assert registry.get_sample_value("ftpgw_backend_connects_total", labels) == 1
    finally:
        impostor.stop()
