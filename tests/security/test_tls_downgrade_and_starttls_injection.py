"""FTPS policy: plaintext refused when TLS is required, TLS < 1.2 refused, no CCC, and
plaintext pipelined behind AUTH TLS never executed inside the TLS session (STARTTLS
injection, the CVE-2011-0411 class)."""

from __future__ import annotations

import ftplib
import socket
import subprocess

import pytest

from tests.helpers.gateway_env import base_config, tls_config


@pytest.fixture
def ftps(gateway_factory, sshd, tls_files):
    return gateway_factory(tls_config(sshd, tls_files))


def logins(gw, tls: str) -> float:
    labels = {"result": "ok", "route": "route0", "tls": tls}
    return gw.gateway.metrics.registry.get_sample_value("ftpgw_logins_total", labels) or 0


def test_plaintext_login_is_refused_before_the_password_is_read(ftps, user):
    ftp = ftps.connect()
    with pytest.raises(ftplib.error_perm, match=r"^534 Policy requires TLS"):
        ftp.sendcmd(f"USER {user.name}")
    with pytest.raises(ftplib.error_perm, match=r"^534"):
        ftp.sendcmd(f"PASS {user.password}")
    assert logins(ftps, "no") == 0


def test_unprotected_data_connections_are_refused(ftps, tls_files, user):
    ftp = ftplib.FTP_TLS(context=tls_files.context(), timeout=20)
    ftp.connect(ftps.host, ftps.port)
    ftp.login(user.name, user.password)
    for command in ("PASV", "EPSV", "PORT 127,0,0,1,200,10"):
        with pytest.raises(ftplib.error_perm, match=r"^521"):
            ftp.sendcmd(command)
    ftp.prot_p()
    assert ftp.sendcmd("PASV").startswith("227")
    with pytest.raises(ftplib.error_perm, match=r"^534"):
        ftp.sendcmd("PROT C")  # the open passive port would take a clear connection
    with pytest.raises(ftplib.error_perm, match=r"^50[02]"):
        ftp.sendcmd("CCC")  # never back to a plaintext control channel


def test_pipelined_plaintext_after_auth_tls_is_discarded(ftps, tls_files, user):
    raw = socket.create_connection((ftps.host, ftps.port), timeout=10)
    reader = raw.makefile("rb")
    assert reader.readline().startswith(b"220")
    # What an attacker on the plaintext path appends to the client's AUTH TLS.
    raw.sendall(f"AUTH TLS\r\nUSER {user.name}\r\nPASS {user.password}\r\n".encode())
    assert reader.readline().startswith(b"234")
    tls = tls_files.context().wrap_socket(raw, server_hostname="127.0.0.1")
    tls.settimeout(1.5)
    with pytest.raises(TimeoutError):
        tls.recv(1024)  # no 331/230 for the injected commands
    tls.settimeout(10)
    tls.sendall(b"NOOP\r\n")
    assert tls.recv(1024).startswith(b"200")
    tls.sendall(b"PWD\r\n")
    assert tls.recv(1024).startswith(b"530")  # not logged in: the injected login never ran
    tls.close()
    assert logins(ftps, "yes") == logins(ftps, "no") == 0


def s_client(port: int, version: str) -> subprocess.CompletedProcess[str]:
    # SECLEVEL=0 lets this OpenSSL client offer old versions at all: a refusal must come
    # from the gateway, not from the client's own policy.
    return subprocess.run(
        ["openssl", "s_client", "-starttls", "ftp", "-connect", f"127.0.0.1:{port}", version,
         "-cipher", "DEFAULT@SECLEVEL=0"],
        input="", capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
def test_tls_below_1_2_is_refused(ftps, version):
    assert s_client(ftps.port, "-tls1_2").returncode == 0  # the control: the probe itself works
    result = s_client(ftps.port, version)
    assert result.returncode != 0
    assert "Cipher is (NONE)" in result.stdout  # no session was established


def test_implicit_ftps_has_no_plaintext_greeting(ftps):
    host, port = ftps.gateway.implicit_address
    with socket.create_connection((host, port), timeout=5) as raw:
        raw.settimeout(1.5)
        with pytest.raises(TimeoutError):
            raw.recv(100)  # waits for a ClientHello; says nothing in clear


def test_required_session_reuse_refuses_a_fresh_tls_session_on_data(gateway_factory, sshd, tls_files, user):
    """The defence against a data-port thief behind the client's own (NAT) address."""
    gw = gateway_factory(tls_config(sshd, tls_files, require_session_reuse=True))
    # Python's ftplib starts a new TLS session on every data connection: refused.
    ftp = ftplib.FTP_TLS(context=tls_files.context(), timeout=20)
    ftp.connect(gw.host, gw.port)
    ftp.login(user.name, user.password)
    ftp.prot_p()
    with pytest.raises(ftplib.error_perm, match=r"^522"):
        ftp.nlst()
    # curl resumes the control connection's session, so it works.
    (user.home / "f.txt").write_text("resumed\n")
    out = subprocess.run(
        ["curl", "-sS", "--ssl-reqd", "--cacert", str(tls_files.cert), "-u", f"{user.name}:{user.password}",
         f"ftp://127.0.0.1:{gw.port}/f.txt"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.stdout == "resumed\n", out.stderr


def test_a_stranger_cannot_resume_its_own_session_on_the_clients_data_port(
    gateway_factory, sshd, tls_files, user
):
    """Session reuse is checked against the client's own control session, not any session."""
    gw = gateway_factory(tls_config(sshd, tls_files, require_session_reuse=True))
    context = tls_files.context()
    # The stranger: its own control connection (no login needed) gives it a session.
    raw = socket.create_connection((gw.host, gw.port), timeout=10)
    raw.makefile("rb").readline()
    raw.sendall(b"AUTH TLS\r\n")
    raw.recv(1024)
    stranger = context.wrap_socket(raw, server_hostname="127.0.0.1")
    stranger.sendall(b"NOOP\r\n")
    stranger.recv(1024)  # after a round trip the session ticket has arrived
    own_session = stranger.session
    # The client opens a passive port under PROT P...
    victim = ftplib.FTP_TLS(context=context, timeout=20)
    victim.connect(gw.host, gw.port)
    victim.login(user.name, user.password)
    victim.prot_p()
    port = int(victim.sendcmd("EPSV").split("|")[3])
    victim.sock.sendall(b"NLST\r\n")
    # ...and the stranger (same address: behind the client's NAT) races for it.
    thief = context.wrap_socket(
        socket.create_connection((gw.host, port), timeout=10),
        server_hostname="127.0.0.1",
        session=own_session,
    )
    assert victim.getline()[:3] in ("125", "150")
    assert victim.getline().startswith("522")  # not the client's session: refused
    thief.close()
    stranger.close()


@pytest.fixture
def rsa_ftps(gateway_factory, sshd, tmp_path):
    """FTPS with an RSA certificate (static RSA key exchange is possible only with one)."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", str(tmp_path / "rsa.key"), "-out", str(tmp_path / "rsa.crt"), "-days", "1"],
        check=True, capture_output=True,
    )  # fmt: skip
    tls = {"certfile": str(tmp_path / "rsa.crt"), "keyfile": str(tmp_path / "rsa.key"), "implicit_port": 0}
    return gateway_factory(base_config(sshd, tls=tls))


@pytest.mark.parametrize(
    "cipher", ["AES128-SHA", "AES256-SHA256", "AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA"]
)
def test_tls_1_2_without_forward_secrecy_or_with_cbc_is_refused(rsa_ftps, cipher):
    """TLS 1.2 takes ECDHE with AEAD only (Mozilla "intermediate"), on both FTPS ports."""
    ftps = rsa_ftps
    good = s_client(ftps.port, "-tls1_2")
    assert good.returncode == 0 and "ECDHE-RSA-AES" in good.stdout  # the control
    for port in (ftps.port, ftps.gateway.implicit_address[1]):
        starttls = ["-starttls", "ftp"] if port == ftps.port else []
        result = subprocess.run(
            ["openssl", "s_client", *starttls, "-connect", f"127.0.0.1:{port}", "-tls1_2",
             "-cipher", f"{cipher}@SECLEVEL=0"],
            input="", capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode != 0 and "Cipher is (NONE)" in result.stdout, (port, cipher)


def test_ftps_commands_are_named_in_the_metrics(ftps, tls_files, user):
    ftp = ftplib.FTP_TLS(context=tls_files.context(), timeout=20)
    ftp.connect(ftps.host, ftps.port)
    ftp.login(user.name, user.password)  # AUTH TLS, PBSZ (by prot_p below), USER, PASS
    ftp.prot_p()
    with pytest.raises(ftplib.error_perm):
        ftp.sendcmd("CCC")
    ftp.quit()
    registry = ftps.gateway.metrics.registry

    def count(command: str, code_class: str) -> float:
        labels = {"command": command, "code_class": code_class}
        return registry.get_sample_value("ftpgw_commands_total", labels) or 0

    assert count("AUTH", "2xx") == count("PBSZ", "2xx") == count("PROT", "2xx") == 1
    assert count("CCC", "5xx") == 1  # refused, and seen
    assert count("OTHER", "5xx") == 0
