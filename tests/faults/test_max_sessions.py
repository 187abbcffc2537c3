"""The backend's MaxSessions exhausted: a login that no connection can take (every one at the
backend's MaxSessions, and no new connection accepted) gets 421 quickly, not a hang and not a
530; the sessions already in go on untouched, and a slot freed by a logout serves the next
login on the same SSH connection.
"""

from __future__ import annotations

import time

from tests.faults.conftest import assert_alive, attempt, command, fault_config, login, retr, stor
from tests.helpers.gateway_env import seed, wait_for
from tests.helpers.relay import Relay


def test_max_sessions_exhausted_login_is_421_the_others_go_on_and_a_freed_slot_is_reused(
    gateway_factory, sshd_factory, user
):
    server = sshd_factory("max1", max_sessions=1)
    relay = Relay(("127.0.0.1", server.port))
    try:
        seed(user, "a.txt", b"alpha")
        # The gateway's pool.max_sessions (8) is above the backend's (1): it learns the limit.
        gw = gateway_factory(fault_config(server, relay, pool={"max_sessions": 8}))
        first = login(gw, user)
        assert retr(first, "a.txt") == b"alpha"
        relay.refuse()  # and no new SSH connection either (MaxStartups, a firewall's limit)
        late = gw.connect(timeout=30)
        assert command(late, f"USER {user.name}").startswith("331")
        started = time.monotonic()
        reply = command(late, f"PASS {user.password}")
        seconds = time.monotonic() - started
        print(f"login with the backend's sessions exhausted: {reply!r} after {seconds:.2f} s")
        assert reply.startswith("421"), reply
        assert seconds < 10  # connect_timeout is 3 s
        # The session that holds the slot is not disturbed.
        assert command(first, "NOOP").startswith("200")
        assert stor(first, "b.txt", b"beta").startswith("226")
        assert sorted(attempt(first.nlst)) == ["a.txt", "b.txt"]
        assert command(first, "QUIT").startswith("221")
        # Its channel closed on the backend, the slot takes the next login (no new connection).
        pool = gw.gateway.logins.backends["main"].pool
        assert wait_for(lambda: [c.channels for c in pool.connections(user.name)] == [0]), [
            (c.channels, c.max_channels, c.stale) for c in pool.connections(user.name)
        ]
        assert_alive(gw, user, expect=["a.txt", "b.txt"])
        assert relay.accepted == 1
    finally:
        relay.close()
