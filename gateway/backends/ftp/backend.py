"""A legacy FTP server as a backend: login (plain, explicit or implicit FTPS) and probe."""

from __future__ import annotations

import asyncio
import codecs
import ftplib
import logging
import socket
import ssl
import time
from typing import Any

from gateway.backends.ftp.storage import FTPStorage
from gateway.config import BackendConfig
from gateway.core import errors
from gateway.core.listing import printable
from gateway.features.metrics import Metrics

log = logging.getLogger("gateway.ftp_backend")

#: The codec the legacy FTP connection speaks: UTF-8, with bytes that are not UTF-8 carried as
#: they are (surrogateescape), as the gateway's own control channel does. A legacy server
#: full of Latin-1 names (vsftpd is byte-transparent) then gets back the very bytes it listed.
#: ftplib takes only an encoding name and applies it with strict errors (its socket files,
#: putline): this codec makes surrogateescape its default.
NAMES_CODEC = "utf-8-names"


class _NamesDecoder(codecs.BufferedIncrementalDecoder):
    def _buffer_decode(self, data: Any, errors: str, final: bool) -> tuple[str, int]:
        return codecs.utf_8_decode(data, "surrogateescape", final)


class _NamesEncoder(codecs.IncrementalEncoder):
    def encode(self, text: str, final: bool = False) -> bytes:
        return codecs.utf_8_encode(text, "surrogateescape")[0]


def _find_codec(name: str) -> codecs.CodecInfo | None:
    if name != NAMES_CODEC.replace("-", "_"):
        return None
    return codecs.CodecInfo(
        name=NAMES_CODEC,
        encode=lambda text, errors="strict": codecs.utf_8_encode(text, "surrogateescape"),
        decode=lambda data, errors="strict": codecs.utf_8_decode(data, "surrogateescape", True),
        incrementalencoder=_NamesEncoder,
        incrementaldecoder=_NamesDecoder,
    )


codecs.register(_find_codec)


class _FTPTLS(ftplib.FTP_TLS):
    """FTPS whose data connections resume the control connection's TLS session (vsftpd's
    require_ssl_reuse and ProFTPD refuse data connections that do not)."""

    _prot_p: bool  # ftplib: PROT P was sent

    def ntransfercmd(self, cmd: str, rest: Any = None) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            session = self.sock.session if isinstance(self.sock, ssl.SSLSocket) else None
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
        return conn, size


class _ImplicitFTPTLS(_FTPTLS):
    """FTPS from the first byte (port 990 style): the control socket is wrapped at connect."""

    def connect(
        self, host: str = "", port: int = 0, timeout: float = -999, source_address: Any = None
    ) -> str:
        self.host, self.port = host, port
        if timeout != -999:
            self.timeout = timeout
        raw = socket.create_connection((host, port), self.timeout, source_address=source_address)
        self.sock = self.context.wrap_socket(raw, server_hostname=host)
        self.af = self.sock.family
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


class FTPBackend:
    """One configured legacy FTP server; ``login`` opens one connection per FTP session."""

    def __init__(self, cfg: BackendConfig, metrics: Metrics) -> None:
        self.cfg, self.metrics = cfg, metrics

    def _client(self) -> ftplib.FTP:
        timeout = self.cfg.operation_timeout
        if self.cfg.tls is None:
            return ftplib.FTP(timeout=timeout, encoding=NAMES_CODEC)
        context = ssl.create_default_context(cafile=self.cfg.ca_file)
        cls = _ImplicitFTPTLS if self.cfg.tls == "implicit" else _FTPTLS
        return cls(context=context, timeout=timeout, encoding=NAMES_CODEC)

    def login(
        self, username: str, password: str | None = None, key_file: str | None = None, owner: str = ""
    ) -> FTPStorage:
        """Log in as ``username`` (FTP has no keys; ``owner`` does not matter: the legacy
        server keeps cut uploads under their final name); LoginRefused or BackendUnavailable."""
        if key_file is not None or password is None:
            log.error("backend %s: a legacy FTP server takes passwords only", self.cfg.name)
            raise errors.BackendUnavailable()
        started = time.perf_counter()
        ftp = self._client()
        try:
            ftp.connect(self.cfg.host, self.cfg.port, timeout=self.cfg.connect_timeout)
            ftp.timeout = self.cfg.operation_timeout  # for its data connections
            if ftp.sock is not None:
                ftp.sock.settimeout(self.cfg.operation_timeout)
            if isinstance(ftp, ftplib.FTP_TLS) and not isinstance(ftp, _ImplicitFTPTLS):
                ftp.auth()
            ftp.login(username, password)
            if isinstance(ftp, ftplib.FTP_TLS):
                ftp.prot_p()
            storage = FTPStorage(ftp)
        except (OSError, EOFError, ftplib.Error, errors.GatewayError) as exc:
            ftp.close()
            refused = isinstance(exc, ftplib.error_perm) and str(exc).startswith("530")
            err = errors.LoginRefused() if refused else errors.BackendUnavailable()
            self._count(err, started)
            if not refused:
                log.error(
                    "legacy backend %s (%s:%d) unavailable: %s",
                    self.cfg.name,
                    self.cfg.host,
                    self.cfg.port,
                    exc,
                )
            raise err from exc
        self._count(None, started)
        return storage

    def _count(self, err: errors.GatewayError | None, started: float) -> None:
        """One login attempt in the metrics: its connect result and its duration."""
        result = "ok" if err is None else "auth_failed" if isinstance(err, errors.LoginRefused) else "error"
        self.metrics.backend_connects.labels(self.cfg.name, result).inc()
        self.metrics.backend_op(self.cfg.name, "login", time.perf_counter() - started, err)

    async def probe(self) -> str | None:
        """None if the server greets with 220 (no login: no failed attempt on it), else why not."""

        def greet() -> str | None:
            try:
                with socket.create_connection(
                    (self.cfg.host, self.cfg.port), self.cfg.connect_timeout
                ) as sock:
                    if self.cfg.tls == "implicit":
                        return None  # the handshake would need the certificate check: connect suffices
                    sock.settimeout(self.cfg.connect_timeout)
                    greeting = sock.makefile("rb").readline()
            except OSError as exc:
                return f"unreachable ({exc.__class__.__name__})"
            if greeting.startswith(b"220"):
                return None
            return f"unexpected greeting {printable(greeting.decode('utf-8', 'replace').strip())!r}"

        return await asyncio.to_thread(greet)

    def connection_states(self) -> list[str]:
        """No pooled connections (one per FTP session)."""
        return []

    def close(self) -> None:
        """Nothing held between sessions."""
