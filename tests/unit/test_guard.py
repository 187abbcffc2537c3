"""The brute-force guard's scoring, bans and escalation (a fake clock, no sleeping)."""

from __future__ import annotations

import ipaddress
import time

from gateway.config import GuardConfig
from gateway.features.guard import Guard


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail(guard, address, user="u"):
    """One login attempt of ``user`` from ``address`` that fails; the ban it caused."""
    assert guard.begin_attempt(address, user, wait=0)
    return guard.end_attempt(address, user, failed=True)


def make(**cfg):
    clock = Clock()
    settings = {"max_failures": 3, "max_failures_per_address": 3, "window": 60, "ban_time": 100, **cfg}
    return Guard(GuardConfig(**settings), clock), clock


def test_ban_after_max_failures_within_the_window_only():
    guard, clock = make()
    assert fail(guard, "a") == fail(guard, "a") == 0
    clock.now += 61  # the first two have left the window
    assert fail(guard, "a") == 0 and guard.ban_remaining("a") == 0
    assert fail(guard, "a") == 0
    assert fail(guard, "a") == 100
    assert guard.ban_remaining("a") == 100
    assert guard.ban_remaining("b") == 0  # other addresses are unaffected
    clock.now += 100
    assert guard.ban_remaining("a") == 0


def test_repeat_offenders_get_longer_bans_up_to_the_cap():
    guard, clock = make(max_ban_time=350)
    lengths = []
    for _ in range(4):
        for _ in range(3):
            length = fail(guard, "a")
        lengths.append(length)
        clock.now += length
    assert lengths == [100, 200, 350, 350]


def test_old_bans_are_forgotten():
    guard, clock = make(forget_after=500)
    for _ in range(3):
        fail(guard, "a")
    clock.now += 1000
    for _ in range(3):
        length = fail(guard, "a")
    assert length == 100


def test_disabled_guard_never_bans():
    guard, _ = make(enabled=False)
    assert all(fail(guard, "a") == 0 for _ in range(10))
    assert guard.ban_remaining("a") == 0


def test_unauthenticated_caps_in_total_and_per_source():
    guard, _ = make(max_unauthenticated=3, max_unauthenticated_per_ip=2)
    assert guard.enter_unauthenticated("a") and guard.enter_unauthenticated("a")
    assert not guard.enter_unauthenticated("a")  # per source
    assert guard.enter_unauthenticated("b")
    assert not guard.enter_unauthenticated("c")  # in total
    guard.leave_unauthenticated("a")
    assert guard.enter_unauthenticated("c")


def test_attempts_in_flight_count_like_failures():
    """Parallel sessions cannot try more passwords than max_failures before results are in."""
    guard, _ = make()
    assert all(guard.begin_attempt("a", "u", wait=0) for _ in range(3))
    assert not guard.begin_attempt("a", "u", wait=0)  # would wait for a result
    assert guard.begin_attempt("b", "u", wait=0)  # others are unaffected
    assert guard.end_attempt("a", "u", failed=False) == 0  # one succeeded
    assert guard.begin_attempt("a", "u", wait=0)
    assert [guard.end_attempt("a", "u", failed=True) for _ in range(3)] == [0, 0, 100]


def test_an_ipv6_64_is_one_source():
    guard, _ = make()
    for host in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"):
        fail(guard, host)
    assert guard.ban_remaining("2001:db8:1:2::99") == 100
    assert guard.ban_remaining("2001:db8:1:3::1") == 0
    assert guard.ban_remaining("::ffff:192.0.2.1") == 0 and fail(guard, "::ffff:192.0.2.1") == 0


def test_one_users_failures_ban_that_user_from_the_address_not_its_neighbours():
    """Partners behind one NAT address: one job with a wrong password locks out itself."""
    guard, clock = make(max_failures_per_address=10)
    assert [fail(guard, "a", "job1") for _ in range(3)] == [0, 0, 100]
    assert not guard.begin_attempt("a", "job1", wait=0)
    assert (
        guard.ban_remaining("a", "job1") == 100 and guard.ban_remaining("a") == 0
    )  # connections still welcome
    assert guard.begin_attempt("a", "job2", wait=0)  # another partner behind the same address
    assert guard.end_attempt("a", "job2", failed=False) == 0
    clock.now += 100
    assert guard.begin_attempt("a", "job1", wait=0)


def test_guessing_across_user_names_bans_the_address_at_its_own_ceiling():
    guard, _ = make(max_failures_per_address=5)
    assert [fail(guard, "a", f"user{n}") for n in range(5)] == [0, 0, 0, 0, 100]
    assert guard.ban_remaining("a") == 100
    assert not guard.begin_attempt("a", "someone-else", wait=0)


def test_allowed_networks_are_never_scored_or_banned():
    guard, _ = make(allow=(ipaddress.ip_network("192.0.2.0/24"),))
    assert all(fail(guard, "192.0.2.7") == 0 for _ in range(10))
    assert guard.ban_remaining("192.0.2.7", "u") == 0 and guard.ban_remaining("::ffff:192.0.2.7") == 0
    assert [fail(guard, "198.51.100.1") for _ in range(3)] == [0, 0, 100]  # others still are


def test_workers_guards_share_failures_and_unbans():
    """Two workers' guards, wired as gateway.edges.workers.GuardBus wires them (without the sockets)."""
    clock = Clock()
    cfg = GuardConfig(max_failures=3, max_failures_per_address=10, window=60, ban_time=100)
    peers: list[Guard] = []
    one = Guard(cfg, clock, publish=lambda event: peers[1].apply(event))
    two = Guard(cfg, clock, publish=lambda event: peers[0].apply(event))
    peers += [one, two]
    assert fail(one, "192.0.2.1") == 0 and fail(two, "192.0.2.1") == 0
    assert fail(one, "192.0.2.1") == 100  # the third failure in all
    assert two.ban_remaining("192.0.2.1", "u") == 100  # the other worker banned it as well
    assert not two.begin_attempt("192.0.2.1", "u", wait=0)
    assert two.unban("192.0.2.1") == 1
    assert one.ban_remaining("192.0.2.1", "u") == 0 and one.begin_attempt("192.0.2.1", "u", wait=0)
    for junk in ({}, {"op": "fail"}, {"op": "fail", "source": "192.0.2.9"}, {"op": "x", "source": "1"}):
        one.apply(junk)  # a malformed event changes nothing
    assert one.bans() == []


def test_the_guard_bus_carries_events_between_processes_sockets(tmp_path):
    from gateway.edges.workers import GuardBus, Siblings

    a, b = str(tmp_path / "a.sock"), str(tmp_path / "b.sock")
    got: list[dict[str, str]] = []
    sender = GuardBus(Siblings(a, (b, str(tmp_path / "restarting.sock")), "i"), lambda event: None)
    GuardBus(Siblings(b, (a,), "i"), got.append)
    sender.publish({"op": "fail", "source": "192.0.2.1", "user": "u"})  # the missing sibling is skipped
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [{"op": "fail", "source": "192.0.2.1", "user": "u"}]
