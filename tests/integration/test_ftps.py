"""FTPS end to end with real clients: ftplib.FTP_TLS, curl, lftp; explicit and implicit."""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import subprocess

import pytest

from tests.helpers.gateway_env import seed, tls_config


@pytest.fixture
def ftps(gateway_factory, sshd, tls_files):
    return gateway_factory(tls_config(sshd, tls_files))


def ftp_tls(gw, tls_files) -> ftplib.FTP_TLS:
    ftp = ftplib.FTP_TLS(context=tls_files.context(), timeout=20)
    ftp.connect(gw.host, gw.port)
    return ftp


def test_ftplib_ftp_tls_logs_in_and_transfers_over_protected_data(ftps, tls_files, user):
    payload = os.urandom(3 * 2**20)
    ftp = ftp_tls(ftps, tls_files)
    ftp.login(user.name, user.password)  # AUTH TLS first
    ftp.prot_p()
    ftp.storbinary("STOR secret.bin", io.BytesIO(payload))
    got = io.BytesIO()
    ftp.retrbinary("RETR secret.bin", got.write)
    assert got.getvalue() == payload
    assert "secret.bin" in ftp.nlst()
    ftp.quit()
    m = ftps.gateway.metrics.registry
    assert m.get_sample_value("ftpgw_logins_total", {"result": "ok", "route": "route0", "tls": "yes"}) == 1
    assert m.get_sample_value("ftpgw_tls_sessions_total", {"kind": "control"}) == 1
    assert m.get_sample_value("ftpgw_tls_sessions_total", {"kind": "data"}) == 3


def test_curl_ssl_reqd_explicit_and_implicit_ftps(ftps, tls_files, user, tmp_path):
    seed(user, "report.csv", b"a,b\n" * 10_000)
    auth = ["--cacert", str(tls_files.cert), "-u", f"{user.name}:{user.password}", "-sS"]
    explicit = subprocess.run(
        ["curl", *auth, "--ssl-reqd", f"ftp://127.0.0.1:{ftps.port}/report.csv"],
        capture_output=True,
        timeout=30,
    )
    assert explicit.stdout == b"a,b\n" * 10_000, explicit.stderr
    host, port = ftps.gateway.implicit_address
    upload = tmp_path / "up.txt"
    upload.write_bytes(b"over implicit FTPS\n")
    implicit = subprocess.run(
        ["curl", *auth, "-T", str(upload), f"ftps://{host}:{port}/"], capture_output=True, timeout=30
    )
    assert implicit.returncode == 0, implicit.stderr
    assert (user.home / "up.txt").read_bytes() == b"over implicit FTPS\n"


def test_lftp_with_ssl_force_mirrors_both_ways(ftps, tls_files, user, tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    for i in range(5):
        (local / f"f{i}.bin").write_bytes(os.urandom(50_000 + i))
    script = (
        f"set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:ca-file {tls_files.cert}; "
        f"open -u {user.name},{user.password} ftp://127.0.0.1:{ftps.port}; "
        f"mirror -R {local} up; mirror up {tmp_path / 'back'}; bye"
    )
    result = subprocess.run(["lftp", "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr

    def digest(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}

    assert digest(tmp_path / "back") == digest(local) == digest(user.home / "up")


def test_optional_mode_still_serves_plain_ftp(gateway_factory, sshd, tls_files, user):
    gw = gateway_factory(tls_config(sshd, tls_files, mode="optional"))
    plain = gw.login(user)
    assert plain.sendcmd("PWD").startswith("257")
    plain.quit()
    secure = ftp_tls(gw, tls_files)
    secure.login(user.name, user.password)
    secure.quit()
    m = gw.gateway.metrics.registry
    assert m.get_sample_value("ftpgw_logins_total", {"result": "ok", "route": "route0", "tls": "no"}) == 1
    assert m.get_sample_value("ftpgw_logins_total", {"result": "ok", "route": "route0", "tls": "yes"}) == 1
