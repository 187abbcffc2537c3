"""FTPS: the gateway's control and data handlers with TLS (explicit AUTH TLS and implicit).

Built on pyftpdlib's pyOpenSSL handlers (RFC 4217), with what they lack for an
internet-facing gateway: TLS 1.2 at least, a policy that refuses plaintext logins and
unprotected data connections in ``required`` mode, plaintext pipelined behind
``AUTH TLS`` discarded, and implicit FTPS (TLS from the first byte, usually port 990).
"""

from __future__ import annotations

import os
from typing import Any

from OpenSSL import SSL
from pyftpdlib.handlers import TLS_DTPHandler, TLS_FTPHandler
from pyftpdlib.log import logger as ftplog

from gateway.config import TLS12_CIPHERS
from gateway.ftp import compat
from gateway.ftp.data import GatewayDTPHandler
from gateway.ftp.handler import GatewayHandler


def session_reused(conn: SSL.Connection) -> bool:
    """Whether the TLS handshake of ``conn`` resumed an earlier session."""
    # pyOpenSSL has no wrapper for SSL_session_reused; its cffi binding exports the call.
    return bool(compat.openssl_lib.SSL_session_reused(getattr(conn, compat.OPENSSL_CONNECTION_ATTRIBUTE)))


def session_reuse_supported() -> bool:
    """True if this pyOpenSSL can tell resumed sessions (tls.require_session_reuse)."""
    return hasattr(compat.openssl_lib, "SSL_session_reused")


def ssl_context(certfile: str, keyfile: str, ciphers: str = TLS12_CIPHERS) -> SSL.Context:
    """A server context: TLS 1.2 or newer (1.2 with ``ciphers`` only), no compression or renegotiation."""
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_cipher_list(ciphers.encode("ascii"))  # TLS 1.3 suites stay OpenSSL's (all AEAD)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    context.use_certificate_chain_file(certfile)
    context.use_privatekey_file(keyfile)
    context.check_privatekey()
    # A session cache, so clients can resume the control connection's session on their
    # data connections (curl, lftp and FileZilla do; it saves a full handshake per file).
    context.set_session_id(os.urandom(16))
    context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    return context


class GatewayTLSDTPHandler(GatewayDTPHandler, TLS_DTPHandler):  # type: ignore[misc]
    """Data channel, TLS-protected after PROT P."""

    def __init__(self, sock: Any, cmd_channel: Any) -> None:
        super().__init__(sock, cmd_channel)
        if cmd_channel.tls_required and not cmd_channel._prot and not self._closed:
            # Protection was dropped after the data command was accepted (REIN, a new USER):
            # in required mode no data travels in clear.
            cmd_channel.respond("521 Policy requires protected data connections: send PBSZ 0 and PROT P.")
            self.close()

    _ssl_want_read: bool
    _ssl_want_write: bool

    def recv(self, buffer_size: int) -> bytes:
        # GatewayDTPHandler.recv reads the socket itself (it must tell a clean end of an
        # upload from a broken one), so pyOpenSSL's conditions are handled here.
        try:
            data: bytes = super().recv(buffer_size)
        except SSL.WantReadError as err:
            self._ssl_want_read = True
            raise compat.RetryError from err
        except SSL.WantWriteError as err:
            self._ssl_want_write = True
            raise compat.RetryError from err
        except (SSL.ZeroReturnError, SSL.SysCallError) as err:
            reset = isinstance(err, SSL.SysCallError) and err.args[1] != "Unexpected EOF"
            if reset and err.args[0] not in compat.ERRNOS_DISCONNECTED:
                raise
            # close_notify, or (like vsftpd's default strict_ssl_read_eof=NO) a TCP FIN
            # without it, which many clients send, ends an upload; a reset does not.
            self._clean_eof = not reset
            self.handle_close()
            return b""
        return data

    def handle_ssl_established(self) -> None:
        metrics = self.cmd_channel.metrics
        if metrics is not None:
            metrics.tls_sessions.labels("data").inc()
        if self.cmd_channel.require_session_reuse and not session_reused(self.socket):
            # Only the client that holds the control connection's TLS session can resume it:
            # a stranger who raced for the passive port (e.g. behind the same NAT address)
            # cannot (vsftpd require_ssl_reuse, RFC 4217 10.2).
            self.cmd_channel.respond("522 Data connection must reuse the control connection's TLS session.")
            self.close()


class GatewayTLSHandler(GatewayHandler, TLS_FTPHandler):  # type: ignore[misc]
    """Control channel with explicit FTPS (AUTH TLS); the server factory subclasses it."""

    dtp_handler = GatewayTLSDTPHandler
    proto_cmds = {**GatewayHandler.proto_cmds, **TLS_FTPHandler.proto_cmds}
    #: ``tls.mode: required``: no login before AUTH TLS, no data connection before PROT P.
    tls_required = True
    #: ``tls.require_session_reuse``: protected data connections must resume the control session.
    require_session_reuse = False
    context_args: tuple[str, str, str] = ("", "", "")  # ssl_context(certfile, keyfile, ciphers)
    # pyftpdlib's own checks answer 550; the policy below answers with the RFC codes.
    tls_control_required = False
    tls_data_required = False
    _ssl_established: bool
    _ssl_requested: bool
    _prot: bool
    ac_in_buffer: bytes
    _in_buffer_len: int

    @property
    def secure(self) -> bool:
        """True once the control channel is TLS-protected."""
        return bool(self._ssl_established)

    def process_command(self, cmd: str, *args: Any, **kwargs: Any) -> None:
        if self.tls_required and cmd in ("USER", "PASS") and not self._ssl_established:
            # RFC 2228 534: request denied for policy reasons. Refused before the password
            # is even read, so a plaintext PASS never reaches the backend.
            self._refuse(cmd, 534, "Policy requires TLS: use AUTH TLS first (explicit FTPS).")
            return
        if self.tls_required and cmd in ("PASV", "EPSV", "PORT", "EPRT") and not self._prot:
            # RFC 4217 9: 521 when the data connection cannot be opened at this PROT level.
            self._refuse(cmd, 521, "Policy requires protected data connections: send PBSZ 0 and PROT P.")
            return
        super().process_command(cmd, *args, **kwargs)

    def _refuse(self, cmd: str, code: int, text: str) -> None:
        self.respond(f"{code} {text}")
        self.log_cmd(cmd, "", code, text)

    def ftp_PROT(self, line: str) -> None:
        """PROT P (and C only where clear data is allowed)."""
        if self.tls_required and line.strip().upper() == "C":
            # A passive listener opened under PROT P would otherwise take a clear connection.
            self.respond("534 Policy requires protected data connections (PROT P).")
            return
        super().ftp_PROT(line)

    def ftp_AUTH(self, line: str) -> None:
        """AUTH TLS; plaintext the client sent behind it is dropped, never run under TLS."""
        super().ftp_AUTH(line)
        if not self._ssl_requested:
            return
        # STARTTLS command injection (the CVE-2011-0411 class): commands pipelined in the
        # same packet as AUTH TLS were written by whoever controlled the plaintext channel
        # and must not execute inside the TLS session. Legitimate clients wait for 234.
        pending = len(self.ac_in_buffer) + self._in_buffer_len
        if pending:
            self.ac_in_buffer = b""
            self._in_buffer, self._in_buffer_len = [], 0
            self.log(f"discarded {pending} plaintext bytes sent after AUTH TLS", logfun=ftplog.warning)

    def handle_ssl_established(self) -> None:
        if self.metrics is not None:
            self.metrics.tls_sessions.labels("control").inc()

    def __init__(self, conn: Any, server: Any, ioloop: Any = None) -> None:
        super().__init__(conn, server, ioloop)
        if self.require_session_reuse and self.connected:
            # Its own context (own session cache and ticket keys) per control connection:
            # with one shared context, a stranger could resume a session of their own
            # control connection on this client's data port.
            self.ssl_context = ssl_context(*self.context_args)


class GatewayImplicitTLSHandler(GatewayTLSHandler):
    """Implicit FTPS: the TLS handshake comes first, the 220 greeting after it (over TLS)."""

    _greeted = False

    def handle(self) -> None:
        self.on_connect()
        if not self._closed:
            self.secure_connection(self.ssl_context)

    def handle_ssl_established(self) -> None:
        super().handle_ssl_established()
        if not self._greeted:
            self._greeted = True
            self.respond(f"220 {self.banner}")

    def ftp_AUTH(self, line: str) -> None:
        """Already TLS."""
        self.respond("503 Already using TLS.")
