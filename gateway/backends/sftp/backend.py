"""Logging in to one configured SFTP backend: SSH connect, host-key check, SFTP start.

Host keys are always verified against the backend's known_hosts file; asyncssh then aborts
before user authentication, so no password is ever sent to an unverified server. The
gateway's own SSH configuration, keys and agent are never used (config=None,
client_keys=None, agent_path=None): only the credentials of the FTP login go to the backend.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncssh

from gateway.backends.sftp.files import Budget
from gateway.backends.sftp.loop import BackgroundLoop
from gateway.backends.sftp.pool import Credential, Lease, SFTPPool
from gateway.backends.sftp.storage import SFTPStorage
from gateway.backends.sftp.uploads import FailedReplacements
from gateway.config import BackendConfig
from gateway.core import errors
from gateway.features.metrics import Metrics

log = logging.getLogger("gateway.sftp")

# AES-GCM first: about 2x faster than asyncssh's default chacha20-poly1305 on this kind of
# machine (docs/performance.md, "Performance"); the rest keep older servers reachable.
ENCRYPTION_ALGS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)
SSH_WINDOW = 16 * 1024 * 1024


_NO_HOSTS = asyncssh.import_known_hosts("")


@dataclass
class _ConnState:
    lost: bool = False
    untrusted_key: str = ""  # fingerprint of a host key known_hosts did not trust


class _Client(asyncssh.SSHClient):
    """Records when the connection goes away (sessions then fail fast instead of hanging)
    and the fingerprint of an untrusted host key (for the log)."""

    def __init__(self, state: _ConnState, pinned: tuple[str, ...]) -> None:
        self._state, self._pinned = state, pinned

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        """Called only for a key known_hosts does not trust: accept it if pinned, else refuse.

        asyncssh then still checks that the server holds the matching private key.
        """
        fingerprint = key.get_fingerprint()
        if fingerprint in self._pinned:
            return True
        self._state.untrusted_key = fingerprint
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._state.lost = True


def trusted_keys(known: asyncssh.SSHKnownHosts, host: str, port: int) -> tuple[list[Any], list[Any]]:
    """(host keys, CA keys) that a connection to ``host``:``port`` would accept.

    Looked up exactly as asyncssh's connect does: by name and by each address the name
    resolves to, with the port only when it is not 22 (so a ``[host]:22`` line, which
    OpenSSH itself never writes, matches nothing).
    """
    addrs = {""}
    with contextlib.suppress(OSError):
        addrs = {str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    host_keys: list[Any] = []
    ca_keys: list[Any] = []
    for addr in sorted(addrs):
        found = known.match(host, addr, None if port == 22 else port)
        host_keys += found[0]
        ca_keys += found[1]
    return host_keys, ca_keys


@functools.lru_cache(maxsize=256)
def load_key(path: str) -> asyncssh.SSHKey:
    """A private key file (OpenSSH or PEM, unencrypted), read once."""
    return asyncssh.read_private_key(path)


def key_problem(path: str) -> str | None:
    """Why the private key file at ``path`` cannot be used, or None."""
    try:
        load_key(path)
    except (OSError, asyncssh.KeyImportError, ValueError) as err:
        return f"cannot use the private key {path}: {err} (an unencrypted OpenSSH or PEM key)"
    return None


def known_hosts_problem(cfg: BackendConfig) -> str | None:
    """Why the backend's known_hosts file cannot verify it, or None if it can."""
    if cfg.host_key_fingerprints and not cfg.known_hosts:
        return None
    try:
        known = asyncssh.read_known_hosts(cfg.known_hosts)
    except (OSError, ValueError) as err:
        return f"cannot read {cfg.known_hosts}: {err}"
    if any(trusted_keys(known, cfg.host, cfg.port)):
        return None
    where = cfg.host if cfg.port == 22 else f"[{cfg.host}]:{cfg.port}"
    return (
        f"no host key for {where} in {cfg.known_hosts} "
        f"(add it with `ssh-keyscan -p {cfg.port} {cfg.host} >> {cfg.known_hosts}` and check the fingerprint)"
    )


class SFTPBackend:
    """One configured SFTP server; ``login`` leases a session for an FTP user from the pool."""

    def __init__(
        self,
        loop: BackgroundLoop,
        cfg: BackendConfig,
        budget: Budget,
        metrics: Metrics,
        partial_ttl: float = 86400.0,
    ) -> None:
        self.loop, self.cfg, self.budget, self.metrics = loop, cfg, budget, metrics
        self.partial_ttl = partial_ttl  # uploads.partial_ttl
        # An empty known_hosts (not None, which would turn checking off) when only pinned
        # fingerprints are configured: every key then goes through validate_host_public_key.
        self._known_hosts = asyncssh.read_known_hosts(cfg.known_hosts) if cfg.known_hosts else _NO_HOSTS
        # A pooled connection that cannot open a channel within connect_timeout is replaced.
        self.pool = SFTPPool(cfg.pool, self._connect, cfg.connect_timeout)
        # Shared by this backend's sessions; remembered as long as a partial could be kept.
        self.failed_replacements = FailedReplacements(ttl=max(3600.0, partial_ttl))

    async def _connect(
        self, username: str, credential: Credential
    ) -> tuple[asyncssh.SSHClientConnection, Callable[[], bool]]:
        state = _ConnState()
        try:
            conn = await self._open(state, username, credential)
        except asyncssh.PermissionDenied:
            self.metrics.backend_connects.labels(self.cfg.name, "auth_failed").inc()
            raise
        except asyncssh.HostKeyNotVerifiable:
            self.metrics.backend_connects.labels(self.cfg.name, "host_key_mismatch").inc()
            log.error(
                "backend %s (%s:%d) showed host key %s, which %s does not trust: login refused, "
                "no credential sent",
                self.cfg.name,
                self.cfg.host,
                self.cfg.port,
                state.untrusted_key or "(unknown)",
                self.cfg.known_hosts,
            )
            raise
        except BaseException:
            self.metrics.backend_connects.labels(self.cfg.name, "error").inc()
            raise
        self.metrics.backend_connects.labels(self.cfg.name, "ok").inc()
        return conn, lambda: state.lost

    async def _open(
        self, state: _ConnState, username: str, credential: Credential
    ) -> asyncssh.SSHClientConnection:
        # Exactly the one credential: never the gateway's own keys, agent or ssh config.
        return await asyncssh.connect(
            self.cfg.host,
            self.cfg.port,
            client_factory=lambda: _Client(state, self.cfg.host_key_fingerprints),
            username=username,
            password=credential.password,
            known_hosts=self._known_hosts,
            client_keys=[credential.key] if credential.key is not None else None,
            agent_path=None,
            config=None,
            preferred_auth="publickey" if credential.key is not None else "password",
            encryption_algs=ENCRYPTION_ALGS,
            compression_algs=None,
            connect_timeout=self.cfg.connect_timeout,
            login_timeout=self.cfg.connect_timeout,
            keepalive_interval=self.cfg.keepalive_interval,
            keepalive_count_max=3,
            window=SSH_WINDOW,
        )

    def login(
        self, username: str, password: str | None = None, key_file: str | None = None, owner: str = ""
    ) -> SFTPStorage:
        """Open an SFTP session as ``username`` with a password or a private key file.

        ``owner``: the FTP login the session serves (whose kept partial uploads it resumes).
        LoginRefused or BackendUnavailable on failure.
        """
        try:
            credential = Credential(password, load_key(key_file) if key_file else None)
        except (OSError, asyncssh.KeyImportError, ValueError) as err:
            log.error("backend %s: cannot use private key %s: %s", self.cfg.name, key_file, err)
            raise errors.BackendUnavailable() from err
        verifier = self.pool.verifier(credential)  # scrypt here, in the session thread, not on the loop
        lease = self._lease(username, credential, verifier, "login")
        return SFTPStorage(
            self.loop,
            lease,
            self.cfg.operation_timeout,
            self.pool.release,
            self.budget,
            self.report,
            # The session keeps the credential to reconnect (the FTP session holds the
            # password anyway); the pool still only keeps its verifier.
            relogin=functools.partial(self._lease, username, credential, verifier, "reconnect"),
            atomic_uploads=self.cfg.atomic_uploads,
            failed=self.failed_replacements,
            owner=owner,
            partial_ttl=self.partial_ttl,
        )

    def _lease(self, username: str, credential: Credential, verifier: bytes, op: str) -> Lease:
        """A lease from the pool, waited for in the calling (session) thread."""
        # connect_timeout bounds TCP + key exchange, and again the authentication.
        limit = 2 * self.cfg.connect_timeout + self.cfg.operation_timeout

        async def guarded() -> Lease:
            try:
                # The time limit acts inside the pool, which gives back what it took when
                # cancelled; the session thread never cancels a lease half-way.
                async with asyncio.timeout(limit):
                    return await self.pool.lease(username, credential, verifier)
            except asyncssh.PermissionDenied as exc:
                raise errors.LoginRefused() from exc
            except asyncssh.HostKeyNotVerifiable as exc:
                raise errors.HostKeyMismatch() from exc
            except errors.GatewayError:
                raise
            except Exception as exc:
                log.error(
                    "backend %s (%s:%d) unavailable: %s: %s",
                    self.cfg.name,
                    self.cfg.host,
                    self.cfg.port,
                    exc.__class__.__name__,
                    exc,
                )
                raise errors.BackendUnavailable() from exc

        started = time.perf_counter()
        future = self.loop.submit(guarded())
        try:
            lease = future.result(limit + 5)
        except concurrent.futures.TimeoutError:
            # Only if the loop itself is stuck: a lease that still arrives goes straight back.
            future.add_done_callback(self._release_late)
            raise errors.BackendUnavailable() from None
        except errors.GatewayError as err:
            self.report(op, time.perf_counter() - started, err)
            raise
        self.report(op, time.perf_counter() - started, None)
        return lease

    def report(self, op: str, seconds: float | None, err: errors.GatewayError | None) -> None:
        """Count one operation on this backend (its duration; its error, if it failed)."""
        self.metrics.backend_op(self.cfg.name, op, seconds, err)

    def _release_late(self, future: concurrent.futures.Future[Lease]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.loop.loop.call_soon_threadsafe(self.pool.release, future.result())

    async def probe(self) -> str | None:
        """None if the backend answers and shows a host key its known_hosts trusts, else why not.

        Only the key exchange runs (no authentication, so no failed login on the backend).
        """
        # getaddrinfo blocks: never on the loop every session's SFTP traffic runs on.
        trusted = (await asyncio.to_thread(trusted_keys, self._known_hosts, self.cfg.host, self.cfg.port))[0]
        # Pinned fingerprints do not say which algorithm: then the server's choice is taken.
        algs = [] if self.cfg.host_key_fingerprints else sorted({key.get_algorithm() for key in trusted})
        try:
            key = await asyncio.wait_for(
                asyncssh.get_server_host_key(
                    self.cfg.host, self.cfg.port, server_host_key_algs=algs or (), config=None
                ),
                self.cfg.connect_timeout,
            )
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            return f"unreachable ({exc.__class__.__name__})"
        pinned = key is not None and key.get_fingerprint() in self.cfg.host_key_fingerprints
        if key is None or (not pinned and all(key.public_data != known.public_data for known in trusted)):
            seen = key.get_fingerprint() if key is not None else "none"
            return f"host key {seen} is not in known_hosts nor pinned"
        return None

    def connection_states(self) -> list[str]:
        """ "active" or "idle" for each pooled connection (call on the loop)."""
        return ["active" if c.active else "idle" for c in self.pool.connections()]

    def close(self) -> None:
        """Close every pooled connection (at shutdown; thread-safe)."""
        self.loop.loop.call_soon_threadsafe(self.pool.close_all)
