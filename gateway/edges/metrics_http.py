"""The metrics listener: ``/metrics`` (Prometheus text), ``/healthz`` (the process answers),
``/readyz`` (every backend reachable with its known host key, from a cached background
check) and the loopback-only ``/admin/`` (the guard's bans), over ``gateway.edges.httpd``.
"""

from __future__ import annotations

import base64
import gzip
import hmac
import ipaddress
import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from gateway.config import TLS12_CIPHERS, BasicAuth, TLSFiles
from gateway.edges.httpd import HTTPListener, Request, Response, server_context


@dataclass(frozen=True)
class Admin:
    """What /admin/ offers: the guard's bans and their lifting."""

    bans: Callable[[], list[tuple[str, str, float]]]
    unban: Callable[[str], int]


def admin_response(admin: Admin, request: Request) -> Response:
    """GET /admin/bans, POST /admin/unban?address=A; loopback clients only.

    Lifting a ban is a way around the brute-force guard: only a client on the gateway's own
    host (the operator's ``ftp-sftp-gateway unban``) may, with the metrics credentials when
    they are set, even on a listener bound to all addresses.
    """
    try:
        loopback = ipaddress.ip_address(request.peer).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return Response(403, b"admin endpoints answer clients on this host only\n")
    if request.path == "/admin/bans" and request.method in ("GET", "HEAD"):
        bans = [{"source": s, "user": u, "seconds_left": round(left)} for s, u, left in admin.bans()]
        return Response(200, json.dumps({"bans": bans}).encode() + b"\n", "application/json")
    if request.path == "/admin/unban" and request.method == "POST":
        address = urllib.parse.parse_qs(request.query).get("address", [""])[0]
        try:
            ipaddress.ip_address(address)
        except ValueError:
            return Response(400, b"unban needs ?address=IP\n")
        body = {"address": address, "lifted": admin.unban(address)}
        return Response(200, json.dumps(body).encode() + b"\n", "application/json")
    return Response(404, b"not found: GET /admin/bans, POST /admin/unban?address=IP\n")


class MetricsListener:
    """The HTTP(S) listener of one gateway process."""

    def __init__(
        self,
        registry: CollectorRegistry,
        address: str,
        port: int,
        readiness: Callable[[], list[str]],
        auth: BasicAuth | None = None,
        tls: TLSFiles | None = None,
        admin: Admin | None = None,
    ) -> None:
        """Start the HTTP(S) listener (gateway.edges.httpd) in a daemon thread (``port``: where).

        ``readiness`` returns the reasons the gateway is not ready (empty when it is).
        ``auth`` protects /metrics and /admin/: probes of /healthz and /readyz carry none.
        ``admin``: the guard's ban list and unban (``ftp-sftp-gateway bans``/``unban``).
        """
        self.registry = registry
        expected = base64.b64encode(f"{auth.username}:{auth.password}".encode()) if auth else b""

        def handle(request: Request) -> Response | Callable[[], Response]:
            if request.path == "/healthz":
                return Response(200, b"ok\n")
            if request.path == "/readyz":
                problems = readiness()
                body = "".join(f"{p}\n" for p in problems or ["ready"]).encode()
                return Response(503 if problems else 200, body)
            if request.path != "/metrics" and not (admin and request.path.startswith("/admin/")):
                return Response(404, b"not found: /metrics, /healthz, /readyz\n")
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            given = token.strip().encode("latin-1", "replace")
            # The scheme name is case-insensitive (RFC 7235 2.1); the comparison takes the
            # same time whatever the credentials (hmac.compare_digest).
            if auth and not (scheme.lower() == "basic" and hmac.compare_digest(given, expected)):
                challenge = (("WWW-Authenticate", 'Basic realm="ftp-sftp-gateway"'),)
                return Response(401, b"unauthorized\n", headers=challenge)
            if admin is not None and request.path.startswith("/admin/"):
                return admin_response(admin, request)
            return lambda: self._exposition(request.headers)

        context = server_context(tls.certfile, tls.keyfile, TLS12_CIPHERS) if tls is not None else None
        self._server = HTTPListener(address, port, handle, context)
        self.port = self._server.port

    def _exposition(self, headers: dict[str, str]) -> Response:
        """/metrics in the format the scraper asked for (gzip if it takes it)."""
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        body = encoder(self.registry)
        if gzip_accepted(headers.get("accept-encoding", "")):
            return Response(200, gzip.compress(body), content_type, (("Content-Encoding", "gzip"),))
        return Response(200, body, content_type)

    def stop(self) -> None:
        """Stop the listener."""
        self._server.stop()
