"""gateway.ftp.wakeup: calls from other threads run on the session's IOLoop thread, in order."""

from __future__ import annotations

import threading

from pyftpdlib.ioloop import IOLoop

from gateway.ftp.wakeup import Wakeup


def test_calls_from_another_thread_run_on_the_loop_thread_in_order() -> None:
    with IOLoop() as ioloop:
        wakeup = Wakeup(ioloop)
        ran: list[tuple[int, threading.Thread]] = []
        callers = threading.Thread(
            target=lambda: [
                wakeup.call(lambda i=i: ran.append((i, threading.current_thread()))) for i in range(3)
            ]
        )
        callers.start()
        callers.join()
        ioloop.poll(5)  # woken at once: the calls are already due
        assert [i for i, _ in ran] == [0, 1, 2]
        assert {thread for _, thread in ran} == {threading.current_thread()}
        wakeup.close()


def test_a_closed_wakeup_leaves_the_loop_and_drops_late_calls() -> None:
    with IOLoop() as ioloop:
        wakeup = Wakeup(ioloop)
        assert ioloop.socket_map  # a session thread runs while anything is registered
        wakeup.call(lambda: None)
        wakeup.close()
        assert not ioloop.socket_map
        ran: list[int] = []
        wakeup.call(lambda: ran.append(1))  # a sender finishing after the session closed
        wakeup.close()
        assert ran == []
