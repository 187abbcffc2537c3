"""PROXY protocol v1/v2 parsing and the trusted-network check (gateway.core.proxy_protocol)."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.proxy_protocol import (
    V1_MAX,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    missing,
    parse,
    trusted,
)


def v2(command: int = 1, family: int = 0x11, body: bytes = b"") -> bytes:
    """A v2 header: version 2, ``command``, family/transport byte, then ``body``."""
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def v2_inet(src: str, sport: int, dst: str = "192.0.2.99", dport: int = 21, tlvs: bytes = b"") -> bytes:
    """A v2 PROXY header for a TCP over IPv4 connection."""
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport) + tlvs
    return v2(1, 0x11, body)


def read(stream: bytes) -> tuple[ProxyHeader, bytes]:
    """Feed ``stream`` the way the gateway reads a socket: exactly what ``missing`` asks for."""
    data = b""
    while need := missing(data):
        chunk = stream[len(data) : len(data) + need]
        assert chunk, "asked for more than the stream has"
        data += chunk
    return parse(data), stream[len(data) :]


@pytest.mark.parametrize(
    ("line", "source"),
    [
        (b"PROXY TCP4 198.51.100.7 192.0.2.1 56324 21\r\n", ("198.51.100.7", 56324)),
        (b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 21\r\n", ("2001:db8::7", 4000)),
        (b"PROXY UNKNOWN\r\n", None),
        (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None),
    ],
)
def test_v1_lines(line, source):
    header, rest = read(line + b"USER alice\r\n")
    assert header == ProxyHeader(source, 1)
    assert rest == b"USER alice\r\n"  # nothing after the header is consumed


def test_v2_proxy_local_and_ipv6():
    header, rest = read(v2_inet("203.0.113.5", 40000, tlvs=b"\x05\x00\x02id") + b"\x16\x03\x01")
    assert header == ProxyHeader(("203.0.113.5", 40000), 2)
    assert rest == b"\x16\x03\x01"  # a TLS hello after the header stays for TLS
    assert read(v2(command=0, family=0))[0] == ProxyHeader(None, 2)  # LOCAL: a health check
    six = ipaddress.ip_address("2001:db8::5").packed + ipaddress.ip_address("2001:db8::1").packed
    assert read(v2(1, 0x21, six + struct.pack("!HH", 1234, 21)))[0].source == ("2001:db8::5", 1234)
    assert read(v2(1, 0x31, b"\0" * 216))[0] == ProxyHeader(None, 2)  # AF_UNIX: keep the peer


@pytest.mark.parametrize("most", range(1, 17))
def test_short_reads_anywhere_in_the_header_still_parse(most):
    """A socket read may return fewer bytes than asked (TCP segments): any split is fine."""
    for header, expected in (
        (v2_inet("203.0.113.5", 40000), ProxyHeader(("203.0.113.5", 40000), 2)),
        (b"PROXY TCP4 198.51.100.7 192.0.2.1 56324 21\r\n", ProxyHeader(("198.51.100.7", 56324), 1)),
    ):
        data = b""
        while need := missing(data):
            data += header[len(data) : len(data) + min(need, most)]
        assert parse(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"USER alice\r\n",  # a direct client, not a balancer
        b"PROXY TCP4 198.51.100.7 192.0.2.1 56324\r\n",
        b"PROXY TCP4 2001:db8::7 192.0.2.1 1 2\r\n",
        b"PROXY TCP4 198.51.100.7 192.0.2.1 056324 21\r\n",
        b"PROXY TCP4 198.51.100.7 192.0.2.1 70000 21\r\n",
        b"PROXY TCP4 198.51.100.7  192.0.2.1 1 21\r\n",
        b"PROXY TCP4 198.51.100.7\n192.0.2.1 1 21\r\n",
        b"PROXY X\r\n",
        b"PROXY TCP4 " + b"1" * V1_MAX + b"\r\n",
        v2_inet("203.0.113.5", 1)[:12] + b"\x30\x11\x00\x0c" + b"\0" * 12,  # version 3
        v2(command=2, body=b"\0" * 12),
        v2(1, 0x11, b"\0" * 4),  # address block cut short
        V2_SIGNATURE + b"\x21\x11\xff\xff",  # 64 KiB announced
    ],
)
def test_bad_headers_are_refused(data):
    with pytest.raises(ProxyHeaderError):
        read(data + b"\0" * 70000)


@given(st.binary(max_size=300))
def test_any_bytes_either_parse_or_raise_the_one_error(stream):
    with contextlib.suppress(ProxyHeaderError):
        read(stream + b"\0" * 3000)


def test_trusted_networks():
    nets = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))
    assert trusted("10.1.2.3", nets)
    assert trusted("::ffff:10.1.2.3", nets)  # an IPv4 peer on a dual-stack listener
    assert trusted("2001:db8::1", nets)
    assert not trusted("192.0.2.1", nets)
    assert not trusted("10.1.2.3", ())  # off unless configured
    assert not trusted("", nets)
