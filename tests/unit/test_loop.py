"""The background event loop's blocking helpers."""

import asyncio

import pytest

from gateway.backends.sftp.loop import BackgroundLoop
from gateway.core.errors import BackendTimeout


@pytest.fixture
def loop():
    bg = BackgroundLoop().start()
    yield bg
    bg.stop()


async def answer() -> int:
    return 42


def test_run_returns_the_result(loop):
    assert loop.run(answer(), 5) == 42


def test_run_times_out_with_backend_timeout(loop):
    with pytest.raises(BackendTimeout):
        loop.run(asyncio.sleep(10), 0.1)


def test_the_loop_refuses_to_wait_on_itself(loop):
    async def waits_on_its_own_loop() -> str:
        try:
            loop.run(answer(), 1)
        except RuntimeError as err:
            return str(err)
        return "no error"

    # Without the guard this would block the loop thread until the timeout.
    assert "deadlock" in asyncio.run_coroutine_threadsafe(waits_on_its_own_loop(), loop.loop).result(5)


def test_the_executor_threads_are_all_started_with_the_loop_and_never_more(loop):
    import threading
    import time

    from gateway.backends.sftp.loop import EXECUTOR_THREADS

    def workers() -> int:
        return sum(t.name.startswith("sftp-loop-worker") for t in threading.enumerate())

    # Loops of gateways that earlier tests in this process stopped may still be ending
    # their threads: wait (bounded) until only this loop's remain.
    deadline = time.monotonic() + 10
    while workers() > EXECUTOR_THREADS and time.monotonic() < deadline:
        time.sleep(0.1)
    assert workers() == EXECUTOR_THREADS  # at start, not on demand

    async def busy() -> None:
        # Many blocking helpers at once (as asyncssh does for concurrent connects).
        running = asyncio.get_running_loop()
        await asyncio.gather(*(running.run_in_executor(None, time.sleep, 0.05) for _ in range(20)))

    loop.run(busy(), 10)
    assert workers() == EXECUTOR_THREADS
