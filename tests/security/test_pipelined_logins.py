"""Attack: many USER/PASS pairs in one packet, to skip the failed-login delay and attempt limit.

Before the fix, ten pairs sent at once gave five backend password checks in one session
despite ``max_login_attempts: 3``, without delay and without a 530 for each. Now each
attempt waits for the previous one's 530, and the third failure ends the session.
"""

from __future__ import annotations

import socket
import time

from tests.helpers.gateway_env import base_config


def failed_passwords(sshd, name: str) -> int:
    return sshd.log.read_text(errors="replace").count(f"Failed password for {name}")


def test_each_pipelined_attempt_gets_its_delay_its_530_and_counts(gateway_factory, sshd, user):
    delay = 0.5
    gw = gateway_factory(base_config(sshd, limits={"failed_login_delay": delay, "max_login_attempts": 3}))
    before = failed_passwords(sshd, user.name)
    sock = socket.create_connection((gw.host, gw.port), timeout=20)
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"220")
    started = time.monotonic()
    sock.sendall(b"".join(f"USER {user.name}\r\nPASS guess-{n}\r\n".encode() for n in range(10)))
    replies = [line.decode().strip() for line in iter(reader.readline, b"")]  # until the gateway closes
    elapsed = time.monotonic() - started
    sock.close()
    codes = [reply[:3] for reply in replies]
    assert codes == ["331", "530", "331", "530", "331", "530"], replies
    assert replies[-1].endswith("Disconnecting.")
    assert elapsed >= 3 * delay  # each attempt waited for its own delay
    assert failed_passwords(sshd, user.name) - before == 3  # the backend saw three, not more
