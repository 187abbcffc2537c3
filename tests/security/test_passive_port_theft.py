"""Passive port theft: a data connection from any address but the client's is refused."""

from __future__ import annotations

import socket

from tests.conftest import seed


def test_data_connection_from_another_address_is_refused_and_the_client_still_gets_its_file(ftp, user):
    payload = b"only for the client\n" * 1000
    seed(user, "private.txt", payload)
    port = int(ftp.sendcmd("EPSV").split("|")[3])
    thief = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0), timeout=5)
    assert ftp.getline().startswith("425")  # told on the control channel
    thief.settimeout(5)
    assert thief.recv(1024) == b""  # closed, no data
    thief.close()
    ftp.voidcmd("TYPE I")
    ftp.sock.sendall(b"RETR private.txt\r\n")  # the listener is still there for the client
    data = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert ftp.getline()[:3] in ("125", "150")
    got = b""
    while chunk := data.recv(65536):
        got += chunk
    data.close()
    assert ftp.getline().startswith("226")
    assert got == payload
