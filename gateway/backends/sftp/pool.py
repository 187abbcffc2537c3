"""SSH connection pool: connections per (backend, user), reused across FTP logins.

Runs entirely on the background loop. A login leases an SFTP channel on a pooled connection
of the same backend user, or opens a new connection when none can take it (none yet, all
at the backend's MaxSessions, stale, or dead); releasing the lease keeps the connection for
the next login until it has been idle for ``idle_timeout``, and its channel open as a spare
(``SPARE_CHANNELS`` per connection at most) that the next login of the same credential
takes over: OpenSSH starts an sftp-server process per channel, the larger part of a short
session's cost. A channel holds no state of its session (paths are absolute, every handle
is closed by its owner), so reusing it shows the next login nothing of the last.

Password passthrough and reuse (a security decision, see docs/security.md, "Connection reuse"): an SSH
connection authenticates once, so reusing it for a later FTP login would skip the backend's
password check. A connection is therefore only leased to a login whose password matches the
one that authenticated it, compared through a salted scrypt verifier (the password itself is
not kept). Any mismatch opens a new connection, so the backend checks the password (one SSH
attempt per FTP login). A verifier is trusted for ``reverify_after`` seconds at most: after
that the next login is checked by the backend again, so a password changed or an account
locked on the backend takes effect within that bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncssh

from gateway.config import PoolConfig
from gateway.core import errors

log = logging.getLogger("gateway.sftp.pool")


@dataclass(frozen=True, repr=False)
class Credential:
    """What a backend login presents: a password or a private key (never in a repr)."""

    password: str | None = None
    key: asyncssh.SSHKey | None = None

    def secret(self) -> bytes:
        """Bytes that identify the credential (for the pool's reuse verifier)."""
        if self.key is not None:
            return b"key:" + self.key.public_data
        return b"password:" + (self.password or "").encode("utf-8", "surrogateescape")


#: Opens an authenticated SSH connection: (user, credential) -> (connection, is_lost()).
Connect = Callable[[str, Credential], Awaitable[tuple[asyncssh.SSHClientConnection, Callable[[], bool]]]]

# scrypt with n=2**11: about 4 ms per login here, memory-hard; enough for a verifier that
# only ever lives in this process's memory next to the passwords passing through it.
_SCRYPT = {"n": 2**11, "r": 8, "p": 1}
_REAP_EVERY = 5.0
#: Seconds after a release during which a refused channel is asked for once more.
_RELEASE_SETTLE = 1.0
#: Released channels kept open per connection for the next login (each holds one of the
#: backend's MaxSessions and one sftp-server process until the connection goes).
SPARE_CHANNELS = 2


@dataclass(eq=False)
class PooledConnection:
    """One SSH connection of one backend user."""

    user: str
    conn: asyncssh.SSHClientConnection
    is_lost: Callable[[], bool]
    verifier: bytes
    verified_at: float
    max_channels: int
    home: str = ""
    channels: int = 0
    idle_since: float = 0.0
    released_at: float = float("-inf")  # when a lease last gave its channel back
    stale: bool = False  # no new leases (credentials superseded or too old); closes when idle
    #: Released channels still open (counted in ``channels``), with their closed futures.
    spare: list[tuple[asyncssh.SFTPClient, asyncio.Future[None]]] = field(default_factory=list)

    @property
    def active(self) -> int:
        """Channels leased to sessions now (the spares not counted)."""
        return self.channels - len(self.spare)

    def close(self) -> None:
        """Close the SSH connection."""
        self.conn.close()


@dataclass
class _User:
    conns: list[PooledConnection] = field(default_factory=list)


@dataclass(eq=False)
class Lease:
    """One FTP session's use of a pooled connection: an SFTP client on its own channel."""

    owner: PooledConnection
    sftp: asyncssh.SFTPClient
    closed: asyncio.Future[None]  # done once the channel has closed (sftp-server gone)

    @property
    def home(self) -> str:
        """The backend login directory of the connection's user."""
        return self.owner.home

    def is_lost(self) -> bool:
        """True once the connection or just this channel is gone (thread-safe)."""
        return self.owner.is_lost() or self.closed.done()


async def _channel_closed(sftp: asyncssh.SFTPClient) -> None:
    """Wait until the SFTP channel has closed, whatever closed it."""
    with contextlib.suppress(Exception):
        await sftp.wait_closed()


class SFTPPool:
    """Pooled SSH connections to one backend."""

    def __init__(
        self,
        cfg: PoolConfig,
        connect: Connect,
        channel_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg, self._connect, self._timeout, self._clock = cfg, connect, channel_timeout, clock
        self._salt = os.urandom(16)
        self._users: dict[str, _User] = {}
        self._startups = asyncio.Semaphore(cfg.max_startups)
        self._opening: dict[str, int] = {}  # connections being opened, per user
        self._changed = asyncio.Event()  # set (and replaced) whenever room may have come free
        self._reaper: asyncio.Task[None] | None = None

    def connections(self, user: str | None = None) -> list[PooledConnection]:
        """The live pooled connections (of ``user``, or all)."""
        if user is None:
            return [c for entry in self._users.values() for c in entry.conns]
        return list(self._users[user].conns) if user in self._users else []

    def verifier(self, credential: Credential) -> bytes:
        """The salted scrypt verifier of ``credential`` (thread-safe: call it off the loop)."""
        return hashlib.scrypt(credential.secret(), salt=self._salt, **_SCRYPT)

    async def lease(self, user: str, credential: Credential, verifier: bytes) -> Lease:
        """An SFTP channel for ``user``, on a reused connection when the credential matches.

        A user holds at most ``max_connections_per_user`` connections (those being opened
        included): beyond, a login waits for a channel or a connection to come free, up to
        the channel timeout, then gets TooManySessions. Without the cap, logins of one
        account that cannot share a connection (wrong or changing passwords, or a pool that
        is off) would each start an sshd process on the backend, without bound.
        """
        deadline = self._clock() + self._timeout
        while True:
            now = self._clock()
            entry = self._users.get(user, _User())
            for pooled in list(entry.conns):
                if self._reusable(pooled, now) and hmac.compare_digest(pooled.verifier, verifier):
                    lease = await self._open_channel(pooled)
                    if lease is not None:
                        return lease
            if len(entry.conns) + self._opening.get(user, 0) < self.cfg.max_connections_per_user:
                return await self._lease_new(user, credential, verifier)
            idle = [c for c in entry.conns if c.active == 0]
            if idle:  # another credential's, or stale: it makes room
                self._drop(idle[0])
                continue
            if now >= deadline:
                raise errors.TooManySessions()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), deadline - now)

    def _notify(self) -> None:
        """Wake the logins waiting for room (a channel or a connection came free)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _reusable(self, pooled: PooledConnection, now: float) -> bool:
        if pooled.is_lost() or pooled.stale or not self.cfg.enabled:
            return False
        if now - pooled.verified_at > self.cfg.reverify_after:
            pooled.stale = True
            return False
        return bool(pooled.spare) or pooled.channels < pooled.max_channels

    async def _open_channel(self, pooled: PooledConnection) -> Lease | None:
        """A spare or new SFTP channel on ``pooled``, or None if it cannot take one (full or dead)."""
        while pooled.spare:
            sftp, closed = pooled.spare.pop()
            if not closed.done():
                return await self._check_spare(pooled, sftp, closed)
            pooled.channels -= 1  # the backend ended it meanwhile
        if pooled.channels >= pooled.max_channels:
            return None
        pooled.channels += 1  # reserve the slot while the channel opens
        try:
            try:
                sftp = await self._start_sftp(pooled)
            except asyncssh.ChannelOpenError:
                if self._clock() - pooled.released_at >= _RELEASE_SETTLE:
                    raise
                # OpenSSH frees a session only once it has reaped the session's sftp-server,
                # which may be after the channel close the release waited for: a refusal
                # right after a release is most likely that slot. Ask once more.
                await asyncio.sleep(_RELEASE_SETTLE / 4)
                sftp = await self._start_sftp(pooled)
        except asyncssh.ChannelOpenError as exc:
            pooled.channels -= 1
            if pooled.channels > 0:
                # Refused beside channels that are open: the backend's MaxSessions is below
                # our max_sessions; remember its limit. (OpenSSH refuses with
                # OPEN_CONNECT_FAILED "open failed", not ADMINISTRATIVELY_PROHIBITED.)
                pooled.max_channels = pooled.channels
                log.info(
                    "backend refused channel %d (%s): %d per connection now",
                    pooled.channels + 1,
                    exc.reason,
                    pooled.max_channels,
                )
            else:
                pooled.stale = True
                self._close_if_idle(pooled)
            return None
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            # A connection that cannot open a channel in time is dead (the watchdog check).
            pooled.channels -= 1
            pooled.stale = True
            log.info("pooled connection failed its channel check (%s): closing it", exc.__class__.__name__)
            self._close_if_idle(pooled)
            return None
        except BaseException:
            # Cancelled: give the slot back; a channel asyncssh may have left half-open on
            # the backend goes away with the connection, which takes no new logins now.
            pooled.channels -= 1
            pooled.stale = True
            self._close_if_idle(pooled)
            raise
        # The backend may end the channel alone (its sftp-server killed, out of memory) while
        # the SSH connection lives on: the session must see that too, not only a lost connection.
        return Lease(pooled, sftp, asyncio.ensure_future(_channel_closed(sftp)))

    async def _check_spare(
        self, pooled: PooledConnection, sftp: asyncssh.SFTPClient, closed: asyncio.Future[None]
    ) -> Lease | None:
        """A spare channel if it answers in time: the watchdog check that opening a new
        channel is on a connection that stopped answering."""
        try:
            await asyncio.wait_for(sftp.realpath("."), self._timeout)
        except BaseException as exc:
            pooled.channels -= 1
            pooled.stale = True
            sftp.exit()
            self._close_if_idle(pooled)
            if not isinstance(exc, TimeoutError | OSError | asyncssh.Error):
                raise  # cancelled
            log.info("pooled connection failed its channel check (%s): closing it", exc.__class__.__name__)
            return None
        return Lease(pooled, sftp, closed)

    async def _start_sftp(self, pooled: PooledConnection) -> asyncssh.SFTPClient:
        return await asyncio.wait_for(
            pooled.conn.start_sftp_client(path_errors="surrogateescape"), self._timeout
        )

    async def _lease_new(self, user: str, credential: Credential, verifier: bytes) -> Lease:
        self._opening[user] = self._opening.get(user, 0) + 1
        try:
            return await self._open_new(user, credential, verifier)
        finally:
            if self._opening[user] == 1:
                del self._opening[user]
            else:
                self._opening[user] -= 1
            self._notify()

    async def _open_new(self, user: str, credential: Credential, verifier: bytes) -> Lease:
        async with self._startups:  # stay below the backend's MaxStartups
            conn, is_lost = await self._connect(user, credential)
        now = self._clock()
        pooled = PooledConnection(
            user, conn, is_lost, verifier, verified_at=now, max_channels=self.cfg.max_sessions, idle_since=now
        )
        try:
            lease = await self._open_channel(pooled)
            if lease is None:
                raise errors.BackendUnavailable()
            pooled.home = str(await lease.sftp.realpath("."))
        except BaseException:
            pooled.close()
            raise
        # Only now, with its home known, may other logins share the connection.
        entry = self._users.setdefault(user, _User())
        self._start_reaper()
        # The backend just accepted this password: connections verified with another one
        # (changed password) take no new leases.
        for older in entry.conns:
            if not hmac.compare_digest(older.verifier, verifier):
                older.stale = True
                self._close_if_idle(older)
        entry.conns.append(pooled)
        return lease

    def release(self, lease: Lease) -> None:
        """End a lease: keep its channel as a spare or close it; the connection stays for the
        next login (on the loop)."""
        pooled = lease.owner
        if (
            len(pooled.spare) < SPARE_CHANNELS
            and not lease.closed.done()
            and self._reusable(pooled, self._clock())
        ):
            pooled.spare.append((lease.sftp, lease.closed))
            self._released(pooled)
            return
        asyncio.get_running_loop().create_task(self._release(lease))

    def _released(self, pooled: PooledConnection) -> None:
        pooled.released_at = self._clock()
        if pooled.active == 0:
            pooled.idle_since = pooled.released_at
        self._close_if_idle(pooled)
        self._notify()

    async def _release(self, lease: Lease) -> None:
        pooled = lease.owner
        lease.sftp.exit()
        # The slot is free once the backend has closed the channel: until then sshd still
        # counts the session against its MaxSessions.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(lease.sftp.wait_closed(), self._timeout)
        pooled.channels -= 1
        self._released(pooled)

    def _close_if_idle(self, pooled: PooledConnection) -> None:
        if pooled.active == 0 and (pooled.stale or pooled.is_lost() or not self.cfg.enabled):
            self._drop(pooled)

    def _drop(self, pooled: PooledConnection) -> None:
        entry = self._users.get(pooled.user)
        if entry is not None and pooled in entry.conns:
            entry.conns.remove(pooled)
            if not entry.conns:
                del self._users[pooled.user]
        pooled.close()
        self._notify()

    def reap(self) -> None:
        """Close connections that are dead, or idle for longer than ``idle_timeout``."""
        now = self._clock()
        for pooled in self.connections():
            idle_too_long = pooled.active == 0 and now - pooled.idle_since > self.cfg.idle_timeout
            if pooled.is_lost() or idle_too_long:
                self._drop(pooled)

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def _reap_forever(self) -> None:
        while self._users:
            await asyncio.sleep(min(_REAP_EVERY, self.cfg.idle_timeout))
            self.reap()

    def close_all(self) -> None:
        """Close every pooled connection (at shutdown)."""
        for pooled in self.connections():
            self._drop(pooled)
