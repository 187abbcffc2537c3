"""A stalled backend stalls only its own session: that session gets 451 after the backend's
operation_timeout (never a hang) and goes on once traffic flows again; sessions on other
backend connections keep their usual latency meanwhile.

Latencies are measured and printed but only bounded loosely (2 s): the machine is shared.
"""

from __future__ import annotations

import ftplib
import os
import threading
import time

import pytest

from tests.faults.conftest import (
    CLIENT_TIMEOUT,
    assert_alive,
    attempt,
    command,
    cut_download,
    cut_upload,
    login,
    retr,
    split_config,
    stor,
)
from tests.helpers.gateway_env import seed, wait_for


def test_stalled_session_451_after_operation_timeout_others_unaffected_then_it_goes_on(
    gateway_factory, sshd, relay, user, user2
):
    seed(user, "a.txt", b"fast path")
    seed(user2, "b.txt", b"slow path")
    gw = gateway_factory(split_config(sshd, relay, operation_timeout=2))
    slow = login(gw, user2)  # through the relay
    fast = [login(gw, user) for _ in range(3)]  # on another backend connection
    relay.stall()
    outcome: dict[str, object] = {}

    def stalled_listing() -> None:
        started = time.monotonic()
        outcome["reply"] = attempt(slow.nlst)
        outcome["seconds"] = time.monotonic() - started

    stuck = threading.Thread(target=stalled_listing)
    stuck.start()
    latencies: list[float] = []
    while stuck.is_alive() and len(latencies) < 2000:
        for ftp in fast:
            started = time.monotonic()
            assert command(ftp, "NOOP").startswith("200")
            assert attempt(ftp.nlst) == ["a.txt"]
            latencies.append(time.monotonic() - started)
    stuck.join(CLIENT_TIMEOUT)
    latencies.sort()
    print(
        f"stalled NLST: {outcome.get('reply')!r} after {outcome.get('seconds', 0):.2f} s; "
        f"{len(latencies)} NOOP+NLST round trips on other sessions meanwhile, "
        f"median {latencies[len(latencies) // 2]:.3f} s, max {latencies[-1]:.3f} s"
    )
    reply = outcome["reply"]
    assert isinstance(reply, str) and reply.startswith("451"), reply
    assert 1.8 <= outcome["seconds"] < 15  # after operation_timeout (2 s), not before, not a hang
    assert latencies and latencies[-1] < 2
    relay.resume()
    assert attempt(slow.nlst) == ["b.txt"]
    assert retr(slow, "b.txt") == b"slow path"
    for ftp in fast:
        assert command(ftp, "NOOP").startswith("200")
    assert_alive(gw, user2, expect=["b.txt"])


def test_stalled_backend_does_not_stall_other_sessions(gateway_factory, sshd, relay, user, user2):
    """A stall shorter than operation_timeout: the waiting command completes normally afterwards."""
    gw = gateway_factory(split_config(sshd, relay, operation_timeout=10))
    seed(user, "a.txt", b"fast path")
    seed(user2, "b.txt", b"slow path")
    slow = login(gw, user2)
    fast = login(gw, user)
    relay.stall()
    result: dict[str, object] = {}

    def slow_listing() -> None:
        try:
            result["names"] = slow.nlst()
        except ftplib.all_errors as err:
            result["error"] = err

    stuck = threading.Thread(target=slow_listing)
    stuck.start()
    assert wait_for(lambda: relay.held > 0)  # its listing request waits in the stalled relay
    # While the other session waits on its stalled backend, this one is served normally.
    for _ in range(5):
        assert fast.sendcmd("NOOP").startswith("200")
        assert fast.nlst() == ["a.txt"]
        assert retr(fast, "a.txt") == b"fast path"
    assert stuck.is_alive(), "the stalled session should still be waiting on its backend"
    relay.resume()
    stuck.join(20)
    assert result == {"names": ["b.txt"]}
    assert slow.sendcmd("NOOP").startswith("200")


@pytest.mark.parametrize("fault", ["stall", "blackhole"])
def test_operation_timeout_gives_451_not_a_hang(gateway_factory, sshd, relay, user2, fault):
    """stall: nothing moves; blackhole: the requests are swallowed. Either way 451, counted."""
    gw = gateway_factory(split_config(sshd, relay, operation_timeout=1.5))
    ftp = login(gw, user2)
    relay.stall() if fault == "stall" else relay.blackhole()
    started = time.monotonic()
    reply = command(ftp, "MKD slow")
    assert reply.startswith("451"), reply
    assert time.monotonic() - started < 15
    assert command(ftp, "NOOP").startswith("200")
    relay.resume()
    # Counted for the operator (the request was cancelled on the loop, so the calling
    # thread reports it).
    registry = gw.gateway.metrics.registry
    labels = {"backend": "relayed", "kind": "backend_timeout"}
    assert registry.get_sample_value("ftpgw_backend_errors_total", labels) == 1
    # The session goes on once the backend answers again.
    assert command(ftp, "MKD later").startswith("257")
    assert (user2.home / "later").is_dir()
    assert_alive(gw, user2)


def test_an_upload_into_a_stalled_backend_fails_after_one_operation_timeout(
    gateway_factory, sshd, relay, user2
):
    """The write that times out ends the upload: closing the handle and removing the temporary
    file are not waited for on a connection that just stopped answering (each would cost
    another operation_timeout before the client hears anything)."""
    gw = gateway_factory(split_config(sshd, relay, operation_timeout=3))
    ftp = login(gw, user2)
    reply, seconds = cut_upload(ftp, "up.bin", relay.stall)
    print(f"upload into a stalled backend: {reply!r} after {seconds:.2f} s")
    assert reply.startswith("451"), reply
    assert seconds < 7  # one operation_timeout (3 s) and slack, not three
    assert command(ftp, "NOOP").startswith("200")
    relay.resume()
    assert stor(ftp, "up.bin", b"after the stall").startswith("226")
    assert (user2.home / "up.bin").read_bytes() == b"after the stall"


def test_a_download_from_a_stalled_backend_fails_after_one_operation_timeout(
    gateway_factory, sshd, relay, user2
):
    """The read that times out ends the download with 451 (the loop sends downloads itself:
    its timer, not the session thread's wait, must catch the stall) and the session goes on."""
    content = os.urandom(64 * 2**20)
    seed(user2, "big.bin", content)
    gw = gateway_factory(split_config(sshd, relay, operation_timeout=3))
    ftp = login(gw, user2)
    received, reply, seconds = cut_download(ftp, "big.bin", relay.stall)
    print(f"download from a stalled backend: {reply!r} after {seconds:.2f} s, {received} bytes received")
    assert reply.startswith("451"), reply
    assert seconds < 10  # one operation_timeout (3 s) and slack, never a hang
    assert received < len(content)
    assert command(ftp, "NOOP").startswith("200")
    relay.resume()
    assert retr(ftp, "big.bin") == content
    assert_alive(gw, user2, expect=["big.bin"])
