"""The SSH connection pool's rules (gateway.backends.sftp.pool) on a fake clock and fake
connections: reuse only with the same credential, reverify_after, idle reaping, the
per-account cap. The real sshd behaviour (MaxSessions, password changes) is in
tests/integration/test_pool.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncssh
import pytest

from gateway.backends.sftp.pool import SPARE_CHANNELS, Credential, SFTPPool
from gateway.config import PoolConfig
from gateway.core import errors


@dataclass
class FakeSFTP:
    """What the pool asks of an SFTP client."""

    closed: bool = False

    async def realpath(self, path: str) -> str:
        return "/home/alice"

    def exit(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        while not self.closed:
            await asyncio.sleep(0)


@dataclass
class FakeConnection:
    """What the pool asks of an SSH connection; refuses channels past ``max_channels``."""

    max_channels: int = 10
    open_channels: list[FakeSFTP] = field(default_factory=list)
    closed: bool = False

    async def start_sftp_client(self, path_errors: str = "strict") -> FakeSFTP:
        self.open_channels = [c for c in self.open_channels if not c.closed]
        if len(self.open_channels) >= self.max_channels:
            raise asyncssh.ChannelOpenError(2, "open failed")
        sftp = FakeSFTP()
        self.open_channels.append(sftp)
        return sftp

    def close(self) -> None:
        self.closed = True


class Backend:
    """Counts the SSH logins the pool makes (each one a password check on a real backend)."""

    def __init__(self) -> None:
        self.logins: list[tuple[str, Credential]] = []
        self.connections: list[FakeConnection] = []

    async def connect(self, user: str, credential: Credential) -> tuple[FakeConnection, object]:
        self.logins.append((user, credential))
        conn = FakeConnection()
        self.connections.append(conn)
        return conn, lambda: conn.closed


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coro_factory):
    """Run the test body on a fresh event loop (the pool lives on one loop)."""
    return asyncio.run(coro_factory())


def make_pool(backend: Backend, clock: Clock, **settings: float) -> SFTPPool:
    return SFTPPool(PoolConfig(**settings), backend.connect, channel_timeout=0.2, clock=clock)  # type: ignore[arg-type]


ALICE = Credential(password="alice-pw")


def test_a_second_login_with_the_same_password_reuses_the_connection():
    async def body():
        backend, clock = Backend(), Clock()
        pool = make_pool(backend, clock)
        verifier = pool.verifier(ALICE)
        first = await pool.lease("alice", ALICE, verifier)
        second = await pool.lease("alice", ALICE, verifier)
        assert first.owner is second.owner and len(backend.logins) == 1
        assert first.home == "/home/alice"
        pool.close_all()

    run(body)


def test_another_password_is_checked_by_the_backend_and_retires_the_old_connection():
    async def body():
        backend, clock = Backend(), Clock()
        pool = make_pool(backend, clock)
        old = await pool.lease("alice", ALICE, pool.verifier(ALICE))
        changed = Credential(password="new-pw")
        new = await pool.lease("alice", changed, pool.verifier(changed))
        assert new.owner is not old.owner and len(backend.logins) == 2
        assert old.owner.stale  # takes no new leases; closes once its session ends
        pool.release(old)
        await asyncio.sleep(0.01)
        assert backend.connections[0].closed and not backend.connections[1].closed
        pool.close_all()

    run(body)


def test_a_verifier_is_trusted_for_reverify_after_seconds_only():
    async def body():
        backend, clock = Backend(), Clock()
        pool = make_pool(backend, clock, reverify_after=300)
        verifier = pool.verifier(ALICE)
        await pool.lease("alice", ALICE, verifier)
        clock.now += 299
        await pool.lease("alice", ALICE, verifier)
        assert len(backend.logins) == 1
        clock.now += 2  # 301 s after the backend checked the password
        await pool.lease("alice", ALICE, verifier)
        assert len(backend.logins) == 2
        pool.close_all()

    run(body)


def test_an_idle_connection_is_closed_after_idle_timeout():
    async def body():
        backend, clock = Backend(), Clock()
        pool = make_pool(backend, clock, idle_timeout=60)
        lease = await pool.lease("alice", ALICE, pool.verifier(ALICE))
        pool.release(lease)
        await asyncio.sleep(0.01)
        clock.now += 59
        pool.reap()
        assert pool.connections("alice") and not backend.connections[0].closed
        clock.now += 2
        pool.reap()
        assert pool.connections("alice") == [] and backend.connections[0].closed

    run(body)


def test_channels_fill_a_connection_up_to_max_sessions_then_a_new_one_opens():
    async def body():
        backend, clock = Backend(), Clock()
        pool = make_pool(backend, clock, max_sessions=2)
        verifier = pool.verifier(ALICE)
        leases = [await pool.lease("alice", ALICE, verifier) for _ in range(3)]
        assert [lease.owner for lease in leases].count(leases[0].owner) == 2
        assert len(backend.logins) == 2
        pool.close_all()

    run(body)


def test_past_max_connections_per_user_a_login_waits_then_gets_too_many_sessions():
    async def body():
        backend, clock = Backend(), Clock()
        pool = make_pool(backend, clock, max_sessions=1, max_connections_per_user=2)
        verifier = pool.verifier(ALICE)
        held = [await pool.lease("alice", ALICE, verifier) for _ in range(2)]
        waiting = asyncio.ensure_future(pool.lease("alice", ALICE, verifier))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        pool.release(held[0])  # room comes free: the waiting login gets that channel
        lease = await asyncio.wait_for(waiting, 5)
        assert lease.owner is held[0].owner and len(backend.logins) == 2
        # The next one waits its channel timeout (0.2 s) by the pool's clock, then gives up.
        asyncio.get_running_loop().call_later(0.05, lambda: setattr(clock, "now", clock.now + 1))
        with pytest.raises(errors.TooManySessions):
            await asyncio.wait_for(pool.lease("alice", ALICE, verifier), 5)
        pool.close_all()

    run(body)


def test_a_released_channel_is_kept_for_the_next_login_of_the_same_credential():
    # OpenSSH starts an sftp-server per channel: the next login takes the released one.
    async def body():
        backend, clock = Backend(), Clock()
        pool = make_pool(backend, clock)
        verifier = pool.verifier(ALICE)
        leases = [await pool.lease("alice", ALICE, verifier) for _ in range(SPARE_CHANNELS + 1)]
        for lease in leases:
            pool.release(lease)
        await asyncio.sleep(0.01)
        conn = backend.connections[0]
        assert len(conn.open_channels) == SPARE_CHANNELS + 1
        still_open = [c for c in conn.open_channels if not c.closed]
        assert len(still_open) == SPARE_CHANNELS  # one spare too many: closed
        again = await pool.lease("alice", ALICE, verifier)
        assert again.sftp in [lease.sftp for lease in leases] and not again.sftp.closed
        assert len(conn.open_channels) == SPARE_CHANNELS + 1  # no new channel opened
        pool.close_all()

    run(body)


def test_a_spare_channel_is_not_reused_once_the_backend_closed_it_or_the_password_must_be_checked_again():
    async def body():
        backend, clock = Backend(), Clock()
        pool = make_pool(backend, clock, reverify_after=300)
        verifier = pool.verifier(ALICE)
        first = await pool.lease("alice", ALICE, verifier)
        pool.release(first)
        first.sftp.exit()  # the backend's sftp-server ended
        await asyncio.sleep(0.01)
        second = await pool.lease("alice", ALICE, verifier)
        assert second.sftp is not first.sftp and not second.sftp.closed
        pool.release(second)
        clock.now += 301  # the verifier is too old: the backend must see the password again
        third = await pool.lease("alice", ALICE, verifier)
        assert third.owner is not second.owner and len(backend.logins) == 2
        pool.close_all()

    run(body)
