"""Reading a PROXY protocol header off an accepted socket (the parsing is gateway.core.proxy_protocol)."""

from __future__ import annotations

import socket
import time

from gateway.core import proxy_protocol
from gateway.core.proxy_protocol import ProxyHeader, ProxyHeaderError


class NoHeader(ProxyHeaderError):
    """The peer closed the connection before sending anything (a TCP health check)."""


def read_header(sock: socket.socket, timeout: float) -> ProxyHeader:
    """Read exactly one PROXY header from ``sock``, waiting ``timeout`` seconds at most in all.

    Blocks the calling thread: call it on the session's own thread, never the acceptor's.
    """
    deadline = time.monotonic() + timeout
    previous = sock.gettimeout()
    data = b""
    try:
        while need := proxy_protocol.missing(data):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            chunk = sock.recv(need)
            if not chunk:
                raise NoHeader("closed before a PROXY header") if not data else ProxyHeaderError("cut short")
            data += chunk
    except TimeoutError:
        raise ProxyHeaderError(f"no PROXY header within {timeout:g} s") from None
    finally:
        sock.settimeout(previous)
    return proxy_protocol.parse(data)
