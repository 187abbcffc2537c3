"""Secrets never reach the logs, at any level: FTP passwords (good and bad), mapped users'
backend passwords, the metrics password."""

from __future__ import annotations

import ftplib
import io
import logging

import pytest

from gateway.core.passwords import hash_password
from tests.helpers.gateway_env import base_config


def test_no_secret_in_any_log_record_even_at_debug(
    gateway_factory, sshd, user, user2, tmp_path, caplog, monkeypatch
):
    monkeypatch.setenv("GW_SECRET_METRICS", "metrics-pw-0815")
    (tmp_path / "backend.pw").write_text(user2.password + "\n")
    doc = base_config(sshd)
    doc["metrics"]["basic_auth"] = {"username": "prom", "password_env": "GW_SECRET_METRICS"}
    mapped = {"password_hash": hash_password("mapped-ftp-pw"), "backend_user": user2.name}
    doc["users"] = {"mapped-one": {**mapped, "backend_password_file": str(tmp_path / "backend.pw")}}
    doc["routes"].insert(0, {"match": {"user": "mapped-*"}, "backend": "main", "auth": "mapped"})
    caplog.set_level(logging.DEBUG)  # every logger, asyncssh and pyftpdlib included
    gw = gateway_factory(doc)
    bad = gw.connect()
    with pytest.raises(ftplib.error_perm):
        bad.login(user.name, "Wrong-guess-4711")
    bad.close()
    for name, password in ((user.name, user.password), ("mapped-one", "mapped-ftp-pw")):
        ftp = gw.connect()
        ftp.login(name, password)
        ftp.storbinary("STOR x.bin", io.BytesIO(b"x"))
        ftp.quit()
    text = "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)
    assert "login ok" in text  # the capture worked
    for secret in (user.password, user2.password, "Wrong-guess-4711", "mapped-ftp-pw", "metrics-pw-0815"):
        assert secret not in text
