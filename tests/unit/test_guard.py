"""The brute-force guard's scoring, bans and escalation (a fake clock, no sleeping)."""

from __future__ import annotations

from gateway.config import GuardConfig
from gateway.guard import Guard


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**cfg):
    clock = Clock()
    return Guard(GuardConfig(**{"max_failures": 3, "window": 60, "ban_time": 100, **cfg}), clock), clock


def test_ban_after_max_failures_within_the_window_only():
    guard, clock = make()
    assert guard.failure("a") == guard.failure("a") == 0
    clock.now += 61  # the first two have left the window
    assert guard.failure("a") == 0 and guard.ban_remaining("a") == 0
    assert guard.failure("a") == 0
    assert guard.failure("a") == 100
    assert guard.ban_remaining("a") == 100
    assert guard.ban_remaining("b") == 0  # other addresses are unaffected
    clock.now += 100
    assert guard.ban_remaining("a") == 0


def test_repeat_offenders_get_longer_bans_up_to_the_cap():
    guard, clock = make(max_ban_time=350)
    lengths = []
    for _ in range(4):
        for _ in range(3):
            length = guard.failure("a")
        lengths.append(length)
        clock.now += length
    assert lengths == [100, 200, 350, 350]


def test_old_bans_are_forgotten():
    guard, clock = make(forget_after=500)
    for _ in range(3):
        guard.failure("a")
    clock.now += 1000
    for _ in range(3):
        length = guard.failure("a")
    assert length == 100


def test_disabled_guard_never_bans():
    guard, _ = make(enabled=False)
    assert all(guard.failure("a") == 0 for _ in range(10))
    assert guard.ban_remaining("a") == 0


def test_unauthenticated_cap():
    guard, _ = make(max_unauthenticated=2)
    assert guard.enter_unauthenticated() and guard.enter_unauthenticated()
    assert not guard.enter_unauthenticated()
    guard.leave_unauthenticated()
    assert guard.enter_unauthenticated()
