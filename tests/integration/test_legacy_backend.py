"""Phase ``legacy``: users not migrated yet keep working, through the gateway, on the
organisation's existing FTP server."""

from __future__ import annotations

import ftplib
import io
import os
import subprocess

import pytest

from tests.helpers.gateway_env import legacy_config


@pytest.fixture
def via_gateway(gateway_factory, sshd, legacy_ftp):
    gw = gateway_factory(legacy_config(sshd, legacy_ftp))
    ftp = gw.connect()
    ftp.login(legacy_ftp.user, legacy_ftp.password)
    yield gw, ftp
    ftp.close()


def test_every_common_command_reaches_the_legacy_server(via_gateway, legacy_ftp):
    _, ftp = via_gateway
    payload = os.urandom(600_000)
    (legacy_ftp.home / "existing.txt").write_text("from the old server\n")
    assert ftp.pwd() == "/"
    assert sorted(ftp.nlst()) == ["existing.txt"]
    ftp.storbinary("STOR up.bin", io.BytesIO(payload))
    assert (legacy_ftp.home / "up.bin").read_bytes() == payload
    got = io.BytesIO()
    ftp.retrbinary("RETR up.bin", got.write)
    assert got.getvalue() == payload
    ftp.storbinary("APPE up.bin", io.BytesIO(b"tail"))
    assert (legacy_ftp.home / "up.bin").read_bytes() == payload + b"tail"
    assert ftp.size("up.bin") == len(payload) + 4
    ftp.mkd("reports")
    ftp.rename("existing.txt", "reports/moved.txt")
    assert (legacy_ftp.home / "reports" / "moved.txt").read_text() == "from the old server\n"
    lines: list[str] = []
    ftp.retrlines("LIST reports", lines.append)
    assert len(lines) == 1 and lines[0].endswith(" moved.txt")
    assert [name for name, _ in ftp.mlsd("reports")] == ["moved.txt"]
    ftp.delete("reports/moved.txt")
    ftp.rmd("reports")
    assert sorted(os.listdir(legacy_ftp.home)) == ["up.bin"]
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        ftp.retrbinary("RETR missing.txt", lambda _: None)
    got = io.BytesIO()
    ftp.retrbinary("RETR up.bin", got.write, rest=len(payload))  # REST
    assert got.getvalue() == b"tail"


def test_a_wrong_password_is_refused_by_the_legacy_server(gateway_factory, sshd, legacy_ftp):
    gw = gateway_factory(legacy_config(sshd, legacy_ftp))
    ftp = gw.connect()
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.login(legacy_ftp.user, "wrong")


def test_curl_through_the_gateway_to_the_legacy_server(gateway_factory, sshd, legacy_ftp, tmp_path):
    gw = gateway_factory(legacy_config(sshd, legacy_ftp))
    (legacy_ftp.home / "a.csv").write_text("1,2\n")
    auth = ["-sS", "-u", f"{legacy_ftp.user}:{legacy_ftp.password}"]
    listing = subprocess.run(["curl", *auth, f"{gw.url}/"], capture_output=True, text=True, timeout=30)
    assert "a.csv" in listing.stdout, listing.stderr
    upload = tmp_path / "b.csv"
    upload.write_text("3,4\n")
    subprocess.run(["curl", *auth, "-T", str(upload), f"{gw.url}/"], check=True, timeout=30)
    assert (legacy_ftp.home / "b.csv").read_text() == "3,4\n"


def test_the_sftp_users_are_not_affected(gateway_factory, sshd, legacy_ftp, user):
    gw = gateway_factory(legacy_config(sshd, legacy_ftp))
    ftp = gw.login(user)  # gwtest1 matches the catch-all SFTP route
    ftp.storbinary("STOR s.txt", io.BytesIO(b"sftp"))
    assert (user.home / "s.txt").read_bytes() == b"sftp"
    assert not (legacy_ftp.home / "s.txt").exists()
    ftp.quit()


@pytest.mark.parametrize("legacy_ftp", ["ftps"], indirect=True)
def test_a_legacy_server_that_requires_explicit_ftps(gateway_factory, sshd, legacy_ftp, tls_files):
    doc = legacy_config(sshd, legacy_ftp, tls="explicit", ca_file=str(tls_files.cert))
    gw = gateway_factory(doc)
    ftp = gw.connect()
    ftp.login(legacy_ftp.user, legacy_ftp.password)
    ftp.storbinary("STOR over-tls.txt", io.BytesIO(b"protected both ways\n"))
    assert (legacy_ftp.home / "over-tls.txt").read_bytes() == b"protected both ways\n"
    assert ftp.nlst() == ["over-tls.txt"]
    ftp.quit()


@pytest.mark.parametrize("legacy_ftp", ["ftps"], indirect=True)
def test_an_untrusted_legacy_certificate_is_refused(gateway_factory, sshd, legacy_ftp):
    gw = gateway_factory(legacy_config(sshd, legacy_ftp, tls="explicit"))  # no ca_file: not trusted
    ftp = gw.connect()
    ftp.sendcmd(f"USER {legacy_ftp.user}")
    with pytest.raises(ftplib.error_temp, match=r"^421"):
        ftp.sendcmd(f"PASS {legacy_ftp.password}")


def test_a_download_the_legacy_server_cuts_off_is_not_reported_complete(gateway_factory, sshd, legacy_ftp):
    (legacy_ftp.home / "big.bin").write_bytes(os.urandom(64 * 2**20))
    gw = gateway_factory(legacy_config(sshd, legacy_ftp))
    ftp = gw.connect()
    ftp.login(legacy_ftp.user, legacy_ftp.password)
    ftp.voidcmd("TYPE I")
    data = ftp.transfercmd("RETR big.bin")
    data.recv(65536)
    legacy_ftp.stop()  # the old server dies half-way
    while data.recv(65536):
        pass
    data.close()
    reply = ftp.getline()
    assert reply[:3] in ("426", "451"), reply  # never 226 for a truncated file


def test_a_legacy_server_gone_while_idle_ends_the_session_with_one_421(gateway_factory, sshd, legacy_ftp):
    # Unlike SFTP (which reconnects with the login's credentials), the legacy FTP session
    # cannot be carried over to a new connection: its login and working directory are gone.
    gw = gateway_factory(legacy_config(sshd, legacy_ftp))
    ftp = gw.connect()
    ftp.login(legacy_ftp.user, legacy_ftp.password)
    assert ftp.nlst() == []
    legacy_ftp.stop()
    with pytest.raises(ftplib.error_temp, match=r"^421"):
        ftp.sendcmd("MKD x")
    with pytest.raises((EOFError, OSError)):
        ftp.sendcmd("NOOP")
