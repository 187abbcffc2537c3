"""Attack: one IPv6 end site opens sessions from many addresses of its /64.

An end site gets a whole /64 and picks any address in it: counted by exact address, twenty
sessions from one /64 passed ``max_connections_per_ip: 3``. The per-address limit now counts a
/64 as one address, as the guard does. The clients' IPv6 addresses arrive in PROXY headers
from a trusted balancer (this machine has only IPv4 loopback addresses to test with).
"""

from __future__ import annotations

import socket
import time

from tests.helpers.gateway_env import base_config


def greeting(gw, client: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection((gw.host, gw.port), timeout=10)
    sock.sendall(f"PROXY TCP6 {client} 2001:db8:ffff::21 40000 21\r\n".encode())
    return sock, sock.makefile("rb").readline()


def test_a_slash_64_counts_as_one_address(gateway_factory, sshd):
    doc = base_config(sshd, limits={"max_connections_per_ip": 3})
    doc["listen"]["proxy_protocol"] = {"trusted": ["127.0.0.1/32"]}
    gw = gateway_factory(doc)
    held = []
    for n in range(1, 4):
        sock, line = greeting(gw, f"2001:db8:0:1::{n}")
        assert line.startswith(b"220")
        held.append(sock)
    for n in range(4, 20):  # more of the same /64: refused, whatever the address
        sock, line = greeting(gw, f"2001:db8:0:1:{n:x}::{n}")
        assert line.startswith(b"421 Too many connections from the same IP address")
        sock.close()
    other, line = greeting(gw, "2001:db8:0:2::1")  # the next /64 is another site
    assert line.startswith(b"220")
    held.pop().close()  # a place comes free for the first site
    again, line = _retry_greeting(gw, "2001:db8:0:1::99")
    assert line.startswith(b"220")
    for sock in [*held, other, again]:
        sock.close()


def _retry_greeting(gw, client: str) -> tuple[socket.socket, bytes]:
    """The greeting once the gateway has seen the freed session close (a moment later)."""
    deadline = time.monotonic() + 10
    while True:
        sock, line = greeting(gw, client)
        if line.startswith(b"220") or time.monotonic() > deadline:
            return sock, line
        sock.close()
        time.sleep(0.1)
