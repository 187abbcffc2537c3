"""PROXY protocol on the control and passive data listeners: believed from trusted balancers only,
and the client address it carries is the one logs, limits, the guard and the data check use.

The client here plays the balancer itself (as HAProxy with send-proxy does): it opens every
connection with a header. tests/integration/test_haproxy.py runs the real HAProxy.
"""

from __future__ import annotations

import ftplib
import io
import socket
import struct
import time

import pytest

from gateway.core.proxy_protocol import V2_SIGNATURE
from tests.helpers.gateway_env import base_config, seed, tls_config

BALANCER = "127.0.0.1/32"  # the tests connect from 127.0.0.1: that is the "balancer"


def proxy_header(version: int, client: str, sock: socket.socket) -> bytes:
    """The header a balancer would send for ``client`` on the connection ``sock``."""
    dst, dport = sock.getpeername()[:2]
    sport = 40000 + sum(map(int, client.split("."))) % 20000
    if version == 1:
        return f"PROXY TCP4 {client} {dst} {sport} {dport}\r\n".encode()
    body = socket.inet_aton(client) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body)) + body


class ProxiedFTP(ftplib.FTP):
    """ftplib behind a make-believe balancer: control and passive data connections start with
    a PROXY header naming ``client`` (``data_client`` for data connections, if given)."""

    def __init__(self, client: str, version: int = 2, data_client: str | None = None) -> None:
        super().__init__(timeout=20)
        self.client, self.version, self.data_client = client, version, data_client or client

    def connect(self, host: str = "", port: int = 0, timeout: float = 20, source_address=None) -> str:
        self.host, self.port, self.timeout = host, port, timeout
        self.sock = socket.create_connection((host, port), timeout)
        self.sock.sendall(proxy_header(self.version, self.client, self.sock))
        self.af = self.sock.family
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[socket.socket, int | None]:
        host, port = self.makepasv()
        conn = socket.create_connection((host, port), self.timeout)
        conn.sendall(proxy_header(self.version, self.data_client, conn))
        if rest is not None:
            self.sendcmd(f"REST {rest}")
        resp = self.sendcmd(cmd)
        if resp[0] == "2":
            resp = self.getresp()
        if resp[0] != "1":
            conn.close()
            raise ftplib.error_reply(resp)
        return conn, None


def proxied_config(sshd, trusted: str = BALANCER, **limits):
    """``base_config`` with PROXY protocol from ``trusted``."""
    doc = base_config(sshd)
    doc["listen"]["proxy_protocol"] = {"trusted": [trusted], "header_timeout": 2}
    doc["limits"].update(limits)
    return doc


def proxied(gw, client: str, version: int = 2, data_client: str | None = None) -> ProxiedFTP:
    """A session through the make-believe balancer, connected (not logged in)."""
    ftp = ProxiedFTP(client, version, data_client)
    ftp.connect(gw.host, gw.port)
    return ftp


@pytest.mark.parametrize("version", [1, 2])
def test_the_carried_address_is_the_client_in_logs_and_data_checks(
    gateway_factory, sshd, user, caplog, version
):
    caplog.set_level("INFO")
    gw = gateway_factory(proxied_config(sshd))
    seed(user, "in.txt", b"through the balancer")
    ftp = proxied(gw, "198.51.100.7", version)
    ftp.login(user.name, user.password)
    buf = io.BytesIO()
    ftp.retrbinary("RETR in.txt", buf.write)  # EPSV/PASV data connection with its own header
    assert buf.getvalue() == b"through the balancer"
    assert ftp.storbinary("STOR out.txt", io.BytesIO(b"up")).startswith("226")
    assert (user.home / "out.txt").read_bytes() == b"up"
    ftp.quit()
    lines = [r.getMessage() for r in caplog.records if "sess=" in r.getMessage()]
    assert any(line.startswith("198.51.100.7:") and "RETR" in line for line in lines), lines
    assert not any(line.startswith("127.0.0.1:") and "USER" in line for line in lines), lines


def test_a_data_connection_for_another_client_is_rejected(gateway_factory, sshd, user):
    gw = gateway_factory(proxied_config(sshd))
    seed(user, "secret.txt", b"mine")
    # The balancer says the data connection comes from someone else: the FTP bounce / data
    # theft check compares carried addresses and refuses it.
    ftp = proxied(gw, "198.51.100.7", data_client="203.0.113.66")
    ftp.login(user.name, user.password)
    ftp.sendcmd("TYPE I")
    with pytest.raises((ftplib.error_temp, ftplib.error_reply, OSError)):
        ftp.retrbinary("RETR secret.txt", lambda data: pytest.fail("data reached the wrong client"))


def test_an_untrusted_peer_cannot_spoof_its_address(gateway_factory, sshd, user, caplog):
    caplog.set_level("INFO")
    gw = gateway_factory(proxied_config(sshd, trusted="127.0.0.9/32"))
    with socket.create_connection((gw.host, gw.port), 10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")  # a direct client: greeted at once
        sock.sendall(b"PROXY TCP4 10.9.9.9 127.0.0.1 1234 21\r\n")
        assert reader.readline().startswith(b"500")  # just an unknown command
        sock.sendall(f"USER {user.name}\r\nPASS {user.password}\r\n".encode())
        assert reader.readline().startswith(b"331")
        assert reader.readline().startswith(b"230")
    assert "10.9.9.9" not in "\n".join(r.getMessage() for r in caplog.records if "sess=" in r.getMessage())


def test_a_trusted_peer_must_send_a_valid_header(gateway_factory, sshd):
    gw = gateway_factory(proxied_config(sshd))
    for opening in (b"", b"USER alice\r\n", b"PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\n"):
        with socket.create_connection((gw.host, gw.port), 10) as sock:
            sock.sendall(opening)
            started = time.monotonic()
            assert sock.recv(100) == b""  # closed without a greeting
            assert time.monotonic() - started < 8  # header_timeout is 2 s
    # A v2 LOCAL header (the balancer's own health check) is served as the balancer.
    with socket.create_connection((gw.host, gw.port), 10) as sock:
        sock.sendall(V2_SIGNATURE + b"\x20\x00\x00\x00")
        assert sock.makefile("rb").readline().startswith(b"220")


def test_per_address_limits_and_the_guard_see_the_client(gateway_factory, sshd, user):
    doc = proxied_config(sshd, max_connections_per_ip=2)
    doc["guard"] = {"max_failures": 2, "max_failures_per_address": 2}  # an address ban
    gw = gateway_factory(doc)
    # Five clients, one balancer: a per-address limit of 2 must not count the balancer.
    sessions = [proxied(gw, f"198.51.100.{n}") for n in range(1, 6)]
    for ftp in sessions:
        ftp.login(user.name, user.password)
    second = proxied(gw, "198.51.100.1")
    with pytest.raises(ftplib.error_temp, match=r"^421"):
        proxied(gw, "198.51.100.1")  # the client's third: over its limit
    second.close()
    # Brute force from one client bans that client only, not everyone behind the balancer.
    for _ in range(2):
        bad = proxied(gw, "203.0.113.9")
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            bad.login(user.name, "wrong password")
        bad.close()
    with pytest.raises(ftplib.error_temp, match=r"^421"):
        proxied(gw, "203.0.113.9")
    other = proxied(gw, "203.0.113.10")
    assert other.login(user.name, user.password).startswith("230")
    for ftp in [*sessions, other]:
        ftp.quit()


def test_implicit_ftps_behind_the_balancer_reads_the_header_before_the_handshake(
    gateway_factory, sshd, user, tls_files, caplog
):
    # HAProxy's send-proxy-v2 on port 990: the PROXY header comes first, in the clear, then
    # the TLS handshake of implicit FTPS (deploy/haproxy/haproxy.cfg, ftps_implicit).
    caplog.set_level("INFO")
    doc = tls_config(sshd, tls_files)
    doc["listen"]["proxy_protocol"] = {"trusted": [BALANCER], "header_timeout": 2}
    gw = gateway_factory(doc)
    host, port = gw.gateway.implicit_address
    raw = socket.create_connection((host, port), timeout=20)
    raw.sendall(proxy_header(2, "198.51.100.9", raw))
    tls = tls_files.context().wrap_socket(raw, server_hostname="127.0.0.1")
    control = tls.makefile("rwb")
    assert control.readline().startswith(b"220 ")
    for line, code in ((f"USER {user.name}", b"331"), (f"PASS {user.password}", b"230"), ("PWD", b"257")):
        control.write(line.encode() + b"\r\n")
        control.flush()
        assert control.readline().startswith(code)
    tls.close()
    lines = [r.getMessage() for r in caplog.records if "sess=" in r.getMessage()]
    assert any(line.startswith("198.51.100.9:") and "logged in" in line for line in lines), lines
