"""PROXY protocol v1 and v2 headers (HAProxy's proxy-protocol.txt): parsing, and who may send one.

A load balancer in TCP mode hides the client's address; with the PROXY protocol it opens
every connection with a header naming the client. Anyone who can reach the gateway could
send such a header too, so it is believed only from configured trusted networks (the
balancers); from anywhere else the bytes are just a (bad) FTP command.

Pure functions over bytes: the caller reads from the socket exactly as many bytes as
``missing`` asks for, so nothing that follows the header (an FTP command, a TLS hello) is
ever consumed with it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

#: The 12 bytes every v2 header starts with.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
#: proxy-protocol.txt 2.1: a v1 line is at most 107 bytes, CRLF included.
V1_MAX = 107
#: The shortest v1 line ("PROXY UNKNOWN\r\n"): this much can always be read first.
_FIRST_READ = 15
#: v2 addresses plus TLVs; HAProxy sends a few hundred bytes at most (SSL and unique-id TLVs).
V2_MAX_PAYLOAD = 2048
_V2_HEAD = 16
_LOCAL, _PROXY = 0x0, 0x1
_AF_INET, _AF_INET6 = 0x1, 0x2
_STREAM = 0x1

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyHeaderError(ValueError):
    """The connection did not start with a valid PROXY header."""


@dataclass(frozen=True)
class ProxyHeader:
    """What a header says: the client's (address, port), or None to keep the peer's own.

    None comes from v2 LOCAL (the balancer's own health check) and v1 UNKNOWN.
    """

    source: tuple[str, int] | None
    version: int


def missing(data: bytes) -> int:
    """How many more bytes the header needs at least (0: complete); raises if it cannot be one.

    Never more than the header still has, so reading exactly that much cannot overshoot.
    """
    if len(data) < _FIRST_READ:
        if not (V2_SIGNATURE.startswith(data[: len(V2_SIGNATURE)]) or _V1_PREFIX.startswith(data[:6])):
            raise ProxyHeaderError("not a PROXY protocol header")
        return _FIRST_READ - len(data)
    if data.startswith(V2_SIGNATURE):
        if len(data) < _V2_HEAD:
            return _V2_HEAD - len(data)
        length = int.from_bytes(data[14:16], "big")
        if length > V2_MAX_PAYLOAD:
            raise ProxyHeaderError(f"v2 header of {length} bytes (at most {V2_MAX_PAYLOAD})")
        return _V2_HEAD + length - len(data)
    if not data.startswith(_V1_PREFIX):
        raise ProxyHeaderError("not a PROXY protocol header")
    end = data.find(b"\r\n")
    if end != -1:
        if end != len(data) - 2:  # a line shorter than the shortest valid one
            raise ProxyHeaderError("v1 line too short")
        return 0
    if len(data) >= V1_MAX or b"\n" in data or b"\r" in data[:-1]:
        raise ProxyHeaderError("v1 line too long or not ended by CRLF")
    return 1  # a byte at a time: the line's length is unknown until its CRLF


def parse(data: bytes) -> ProxyHeader:
    """The header in ``data`` (complete according to ``missing``)."""
    if missing(data) != 0:
        raise ProxyHeaderError("incomplete header")
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    return _parse_v1(data)


def _parse_v1(data: bytes) -> ProxyHeader:
    # "PROXY TCP4 192.0.2.1 192.0.2.2 56324 21\r\n": single spaces, decimal ports.
    try:
        fields = data[:-2].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("v1 line is not ASCII") from None
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyHeader(None, 1)
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("v1 line is not 'PROXY TCP4|TCP6 src dst sport dport'")
    version = 4 if fields[1] == "TCP4" else 6
    source, _dest = (_address(text, version) for text in fields[2:4])
    sport, _dport = (_port(text) for text in fields[4:6])
    return ProxyHeader((source, sport), 1)


def _address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError("v1 address is not an IP address") from None
    if address.version != version:
        raise ProxyHeaderError("v1 address does not match its protocol")
    return str(address)


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ProxyHeaderError("v1 port is not a decimal number up to 65535")
    return int(text)


def _parse_v2(data: bytes) -> ProxyHeader:
    version, command = data[12] >> 4, data[12] & 0x0F
    family, transport = data[13] >> 4, data[13] & 0x0F
    if version != 2 or command not in (_LOCAL, _PROXY):
        raise ProxyHeaderError("v2 header with an unknown version or command")
    body = data[_V2_HEAD:]
    if command == _LOCAL:
        return ProxyHeader(None, 2)
    if transport != _STREAM or family not in (_AF_INET, _AF_INET6):
        # proxy-protocol.txt 2.2: unsupported protocols are accepted and the real
        # connection endpoints are used.
        return ProxyHeader(None, 2)
    size = 4 if family == _AF_INET else 16
    if len(body) < 2 * size + 4:
        raise ProxyHeaderError("v2 address block too short")
    source = ipaddress.ip_address(body[:size])
    sport = int.from_bytes(body[2 * size : 2 * size + 2], "big")
    return ProxyHeader((str(source), sport), 2)


def trusted(address: str, nets: tuple[Network, ...]) -> bool:
    """Whether a peer at ``address`` may send a PROXY header."""
    if not nets:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d
    return any(ip in net for net in nets)
