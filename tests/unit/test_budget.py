"""Read-ahead / write-behind windows and the process-wide budget (no sockets)."""

import concurrent.futures

from gateway.backends.sftp.files import Budget, _Window


def test_first_request_is_free_and_the_rest_are_paid():
    budget = Budget(limit=300)
    window = _Window(budget, depth=8)
    charges = []
    while (charge := window.admit(100)) is not None:
        window.push(0, concurrent.futures.Future(), charge)
        charges.append(charge)
    assert charges == [0, 100, 100, 100]  # one free, then the 300-byte budget
    assert budget.used == 300
    window.pop()
    assert budget.used == 300  # the free one gave nothing back
    window.pop()
    assert budget.used == 200
    window.drain()
    assert budget.used == 0 and len(window) == 0


def test_depth_bounds_a_window_even_with_budget_left():
    budget = Budget(limit=10**9)
    window = _Window(budget, depth=4)
    while (charge := window.admit(100)) is not None:
        window.push(0, concurrent.futures.Future(), charge)
    assert len(window) == 4


def test_an_exhausted_budget_still_lets_every_transfer_move():
    budget = Budget(limit=0)
    windows = [_Window(budget, depth=16) for _ in range(1000)]
    for window in windows:
        charge = window.admit(262144)
        assert charge == 0
        window.push(0, concurrent.futures.Future(), charge)
        assert window.admit(262144) is None
    assert budget.used == 0


def test_drain_cancels_pending_requests():
    window = _Window(Budget(10**6), depth=4)
    futures = [concurrent.futures.Future() for _ in range(3)]
    for future in futures:
        window.push(0, future, window.admit(10))
    window.drain()
    assert all(f.cancelled() for f in futures)
